//! The pair: the two VMs of the original design on their private link ([`link::net`]),
//! the guest and the controller.
//!
//! - this module: what the pair is ([`PairConfig`] → each VM's [`VmSpec`]), and how its
//!   memory is backed ([`RamMode`]: cold, bootstrap, revive);
//! - [`guest`]: a guest with its own firmware-booted machine (Windows), as data;
//! - [`rundir`]: the directory of one live pair: sockets, consoles, overlays, lock;
//! - [`control`]: the host's end of the agent's control channel;
//! - [`lifecycle`]: boot both to ready, set the controller up, freeze both, revive both.
//!
//! Bootstrap and run both use the pair; neither uses the other.

pub mod control;
pub mod guest;
pub mod lifecycle;
pub mod rundir;

use std::path::PathBuf;

use link::{net, proto};
use serde::{Deserialize, Serialize};

use crate::machine::spec::{
    Accel, Boot, Confinement, DiskFormat, Drive, DriveInterface, GenerationId, Memory, Nic,
    NicModel, Rtc, SerialPort, Share9p, VmSpec,
};
pub use guest::{FirmwareGuest, GuestFiles};
pub use rundir::{End, PairSockets, RunDir, CONTROL_SOCKET};

/// How the pair is built: everything that must be identical between a snapshot and its
/// revive. Recorded in the base manifest.
///
/// `machine`, `cpu`, the kernel command lines and `rtc_base` describe the controller and
/// the Debian guest, which boot the base's kernel; a guest that boots its own disk
/// through firmware (Windows) is described by `guest` instead. Memory and CPUs are the
/// guest's, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairConfig {
    pub accel: Accel,
    pub machine: String,
    pub cpu: String,
    pub guest_memory_mib: u64,
    pub guest_cpus: u32,
    pub controller_memory_mib: u64,
    /// Kernel command lines (they name each VM's init).
    pub guest_append: String,
    pub controller_append: String,
    /// The guest's clock starts here at every cold boot (`-rtc base=`), as in the original.
    pub rtc_base: String,
    /// A firmware-booted guest's own machine; None: the Debian guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<FirmwareGuest>,
}

/// The VM Generation ID a base's pair is frozen with: derived from the base's id, so a
/// base stays content-addressed, and so `fresh = false` (replaying the snapshot exactly,
/// randomness included) gives the generation it was frozen in. `fresh` gives each revive a
/// new one: the guests' kernels then reseed their random generators.
pub fn generation(base_id: &str, fresh: bool) -> GenerationId {
    if fresh {
        return GenerationId::Fresh;
    }
    let h = blake3::hash(format!("vmgenid {base_id}").as_bytes());
    let b = h.as_bytes();
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    GenerationId::Fixed {
        guid: format!(
            "{}-{}-{}-{}-{}",
            hex(0..4),
            hex(4..6),
            hex(6..8),
            hex(8..10),
            hex(10..16)
        ),
    }
}

/// Where a pair's files are: the base's for bootstrap, a run's overlays for revive.
#[derive(Debug, Clone)]
pub struct PairFiles {
    pub kernel: PathBuf,
    pub guest_initrd: PathBuf,
    pub controller_initrd: PathBuf,
    pub guest_disk: PathBuf,
    pub controller_disk: PathBuf,
    /// A firmware guest's UEFI variable store and TPM state directory (unused otherwise).
    pub guest_vars: PathBuf,
    pub guest_tpm: PathBuf,
}

/// How guest RAM is backed.
#[derive(Debug, Clone)]
pub enum RamMode {
    /// Anonymous RAM (cold boot).
    Anonymous,
    /// RAM in these files, written through (bootstrap: the files become the snapshot).
    Shared { guest: PathBuf, controller: PathBuf },
    /// The base's RAM files mapped copy-on-write; QEMU waits for the device state.
    Revive {
        guest: PathBuf,
        controller: PathBuf,
        readonly: bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum Vm {
    Guest,
    Controller,
}

impl RamMode {
    /// How `vm`'s RAM is backed, and whether it waits for a saved state (`-incoming`).
    fn backing(&self, vm: Vm) -> (Memory, bool) {
        let pick = |guest: &PathBuf, controller: &PathBuf| match vm {
            Vm::Guest => guest.clone(),
            Vm::Controller => controller.clone(),
        };
        match self {
            RamMode::Anonymous => (Memory::Anonymous, false),
            RamMode::Shared { guest, controller } => (
                Memory::File {
                    path: pick(guest, controller),
                    shared: true,
                    readonly: false,
                },
                false,
            ),
            RamMode::Revive {
                guest,
                controller,
                readonly,
            } => (
                Memory::File {
                    path: pick(guest, controller),
                    shared: false,
                    readonly: *readonly,
                },
                true,
            ),
        }
    }
}

impl PairConfig {
    /// Whether the guest gets a VM Generation ID (every guest but XP).
    pub fn guest_has_generation_id(&self) -> bool {
        self.guest.as_ref().is_none_or(|g| g.generation_id)
    }

    /// The machine types the pair needs of the host's QEMU.
    pub fn machine_types(&self) -> Vec<&str> {
        let mut m = vec![self.machine.as_str()];
        if let Some(g) = &self.guest {
            m.push(g.machine_type());
        }
        m
    }
}

/// A host directory given to the controller over 9p under `tag`.
#[derive(Debug, Clone)]
pub struct ControllerShare {
    pub tag: String,
    pub path: PathBuf,
    pub readonly: bool,
}

impl PairConfig {
    pub fn guest_spec(&self, files: &PairFiles, ram: &RamMode, sockets: &PairSockets) -> VmSpec {
        let (memory, incoming) = ram.backing(Vm::Guest);
        if let Some(g) = &self.guest {
            return g.spec(
                self.accel,
                self.guest_memory_mib,
                self.guest_cpus,
                &GuestFiles {
                    disk: files.guest_disk.clone(),
                    vars: files.guest_vars.clone(),
                    tpm_state: files.guest_tpm.clone(),
                },
                memory,
                incoming,
                sockets,
                "guest",
            );
        }
        VmSpec {
            name: "guest".into(),
            accel: self.accel,
            machine: self.machine.clone(),
            cpu: self.cpu.clone(),
            cpus: self.guest_cpus,
            memory_mib: self.guest_memory_mib,
            memory,
            boot: Boot::Kernel {
                kernel: files.kernel.clone(),
                initrd: files.guest_initrd.clone(),
                append: self.guest_append.clone(),
            },
            drives: vec![Drive {
                path: files.guest_disk.clone(),
                format: DiskFormat::Qcow2,
                interface: DriveInterface::VirtioBlk,
                readonly: false,
            }],
            nics: vec![Nic {
                model: NicModel::VirtioNet,
                mac: net::mac_string(net::GUEST_MAC, ':'),
                link: sockets.link(End::Guest),
            }],
            ports: vec![],
            shares: vec![],
            console_log: sockets.console("guest"),
            qmp_socket: sockets.qmp("guest"),
            rtc: Rtc {
                base: self.rtc_base.clone(),
                vm_clock: true,
            },
            generation_id: None,
            incoming,
            platform: Default::default(),
            inherit: sockets.inherit(),
            cwd: None,
            // The full sandbox; as root, bootstrap and run say whom QEMU becomes.
            confinement: Confinement::default(),
        }
    }

    /// `shares` must list every 9p tag, in the same order, at bootstrap and at revive:
    /// the devices are part of the snapshot; only the host paths behind them change.
    pub fn controller_spec(
        &self,
        files: &PairFiles,
        ram: &RamMode,
        sockets: &PairSockets,
        shares: &[ControllerShare],
    ) -> VmSpec {
        let (memory, incoming) = ram.backing(Vm::Controller);
        VmSpec {
            name: "controller".into(),
            accel: self.accel,
            machine: self.machine.clone(),
            cpu: self.cpu.clone(),
            cpus: 1,
            memory_mib: self.controller_memory_mib,
            memory,
            boot: Boot::Kernel {
                kernel: files.kernel.clone(),
                initrd: files.controller_initrd.clone(),
                append: self.controller_append.clone(),
            },
            drives: vec![Drive {
                path: files.controller_disk.clone(),
                format: DiskFormat::Qcow2,
                interface: DriveInterface::VirtioBlk,
                readonly: false,
            }],
            nics: vec![Nic {
                model: NicModel::VirtioNet,
                mac: net::mac_string(net::CONTROLLER_MAC, ':'),
                link: sockets.link(End::Controller),
            }],
            ports: vec![SerialPort {
                name: proto::CONTROL_PORT.into(),
                socket: sockets.control(),
            }],
            shares: shares
                .iter()
                .map(|s| Share9p {
                    tag: s.tag.clone(),
                    path: s.path.clone(),
                    readonly: s.readonly,
                })
                .collect(),
            console_log: sockets.console("controller"),
            qmp_socket: sockets.qmp("controller"),
            rtc: Rtc {
                base: self.rtc_base.clone(),
                vm_clock: true,
            },
            generation_id: None,
            incoming,
            platform: Default::default(),
            inherit: sockets.inherit(),
            cwd: None,
            // The full sandbox; as root, bootstrap and run say whom QEMU becomes.
            confinement: Confinement::default(),
        }
    }
}
