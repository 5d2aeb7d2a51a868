//! What guestbox needs of the host, in one home (as crosvm's `base`): where things live,
//! which programs exist, supervised processes, and the file-system helpers that must be
//! right once (locks, build directories, sealed trees).

pub mod dirs;
pub mod fs;
pub mod process;
pub mod programs;
pub mod short_dir;

pub use dirs::Dirs;
pub use short_dir::ShortDir;
