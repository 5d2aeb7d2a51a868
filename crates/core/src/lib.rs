//! guestbox's engine. Data flows one way: profile → bootstrap → base → run → result.
//!
//! From the bottom up (each imports only what is above it in this list):
//! - [`error`], [`progress`]: the error type; progress reported to the front-end.
//! - [`host`]: the host's directories, programs, processes and file-system helpers.
//! - [`machine`]: one QEMU machine — its spec as data, the one argv writer, the running
//!   process, snapshots, overlays, host facts (QEMU release, KVM).
//! - [`images`]: kernel, initramfs and root disks built from Debian packages, cached.
//! - [`pair`]: the guest and the controller on their private link ([`link`]): specs, run
//!   directories, the agent's control channel, boot/setup/freeze/revive.
//! - [`profile`]: guest profiles (Debian, Windows) — the one seam where guests differ.
//! - [`store`]: bases (manifest, verify, gc).
//! - [`bootstrap`]: profile → base. [`run`]: base → session → result.
//! - [`health`]: one image booted to its ready marker (`guestbox boot`).

pub mod bootstrap;
pub mod error;
pub mod health;
pub mod host;
pub mod images;
pub mod machine;
pub mod pair;
pub mod profile;
pub mod progress;
pub mod run;
pub mod store;

/// The controller's agent, a static executable built by build.rs.
pub const AGENT: &[u8] = include_bytes!(env!("GUESTBOX_AGENT_PATH"));
/// The Linux guest's exec helper and login shell (`guestbox-exec`), built likewise.
pub const EXEC_HELPER: &[u8] = include_bytes!(env!("GUESTBOX_EXEC_PATH"));

pub use error::{Error, IoContext, Result};
