//! One QEMU machine: its spec as data ([`spec`]), the one writer of its command line
//! ([`argv`]), the running process and its QMP connection ([`vm`]), snapshots ([`snapshot`]),
//! copy-on-write disks ([`overlay`]), and the host facts a snapshot depends on: the QEMU
//! release and machine types ([`qemu`]), and whether KVM really works ([`accel`]); how
//! every QEMU is confined ([`confine`]: seccomp, and no root), and what a QEMU that is root
//! of a user namespace is handed instead of paths ([`namespace`]); the swtpm a TPM needs
//! next to QEMU ([`tpm`]).

pub mod accel;
pub mod argv;
pub mod confine;
pub mod namespace;
pub mod overlay;
pub mod qemu;
pub mod snapshot;
pub mod spec;
pub mod tpm;
pub mod vm;

pub use spec::{Accel, VmSpec};
pub use vm::Vm;
