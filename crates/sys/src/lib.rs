//! One home for the OS wrappers that guestbox's host side and the controller's agent both
//! need (as crosvm's `base`): the unsafe code lives here, once, with its tests.
//!
//! - [`fdpass`]: sending and receiving a file descriptor over a unix socket (SCM_RIGHTS),
//!   used by the QMP client (`getfd`) and the agent's OpenSSH mux client.
//! - [`mountinfo`]: the mount points of `/proc/self/mountinfo`, unescaped.

pub mod fdpass;
pub mod mountinfo;
