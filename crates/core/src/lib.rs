//! guestbox's engine. Data flows one way:
//! profile → bootstrap → base → run → result.
//!
//! - [`hostcheck`], [`paths`], [`accel`]: what the host offers.
//! - [`vm`], [`process`], [`boot`]: a typed QEMU machine, its supervised process, booting it.
//! - [`images`]: kernel, initramfs and root disks built from Debian packages, cached.

pub mod accel;
pub mod bench;
pub mod boot;
pub mod boot_image;
pub mod bootstrap;
pub mod control;
pub mod error;
pub mod gc;
pub mod hostcheck;
pub mod images;
pub mod pair;
pub mod paths;
pub mod process;
pub mod profile;
pub mod progress;
pub mod qemu_info;
pub mod run;
pub mod short_dir;
pub mod snapshot;
pub mod store;
pub mod vm;
pub mod windows;
pub mod windows_install;

/// The controller's agent, a static executable built by build.rs.
pub const AGENT: &[u8] = include_bytes!(env!("GUESTBOX_AGENT_PATH"));

pub use error::{Error, IoContext, Result};
