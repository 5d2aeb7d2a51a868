//! What guestbox needs of the host, in one home (as crosvm's `base`): where things live,
//! which programs exist, supervised processes, who guestbox runs as ([`users`]), user
//! namespaces for building images without root ([`userns`]) and for serving root's
//! directories from a QEMU that is not root ([`idmap`]), and the file-system helpers that
//! must be right once (locks, build directories, sealed trees).

pub mod dirs;
pub mod fs;
pub mod idmap;
pub mod process;
pub mod programs;
pub mod short_dir;
pub mod userns;
pub mod users;

pub use dirs::Dirs;
pub use short_dir::ShortDir;
