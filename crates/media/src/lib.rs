pub mod cpio;
pub mod cygwin;
pub mod floppy;
pub mod iso9660;
pub mod quote;
pub mod windows;
