//! The link and its contract: the one place where guestbox writes down what the host, the
//! controller VM and the guest agree on.
//!
//! ```text
//!   guest 192.168.0.1 ──── private link (two unix datagram sockets) ──── controller 192.168.0.2
//!   sshd, mounts //controller/guestbox                    smbd serves [guestbox] = 9p tags
//!                                                          agent ◀─ virtio-serial ─▶ host
//! ```
//!
//! - [`net`]: addresses, prefix, MACs and MTU of the link.
//! - [`shares`]: the controller's 9p tags (exchange dir and volume slots) and the SMB share.
//! - [`markers`]: lines the VMs print on their consoles at each stage.
//! - [`proto`]: the host ↔ agent protocol (frames and messages) on the control port.
//! - [`job`]: one job as the guest's exec helper receives it over SSH.
//!
//! Images, the agent, guest profiles and the Windows media all take these values from here;
//! scripts that run inside the VMs get them formatted in, never as a second literal.

pub mod job;
pub mod markers;
pub mod net;
pub mod proto;
pub mod shares;
