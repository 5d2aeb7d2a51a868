//! The two VMs of the original design on their private link: the guest (192.168.0.1) and
//! the controller (192.168.0.2). This module only describes them; bootstrap, revive and
//! cold boot decide how their memory and disks are backed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::short_dir::ShortDir;
use crate::vm::{
    Boot, DiskFormat, Drive, DriveInterface, Link, Memory, Nic, NicModel, Rtc, SerialPort, Share9p,
    VmSpec,
};
use crate::Result;

/// How the pair is built: everything that must be identical between a snapshot and its
/// revive. Recorded in the base manifest.
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
}

/// Where a pair's files are: the base's for bootstrap, a run's overlays for revive.
#[derive(Debug, Clone)]
pub struct PairFiles {
    pub kernel: PathBuf,
    pub guest_initrd: PathBuf,
    pub controller_initrd: PathBuf,
    pub guest_disk: PathBuf,
    pub controller_disk: PathBuf,
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

/// A host directory given to the controller over 9p under `tag`.
#[derive(Debug, Clone)]
pub struct ControllerShare {
    pub tag: String,
    pub path: PathBuf,
    pub readonly: bool,
}

pub const GUEST_MAC: &str = "52:54:00:00:00:01";
pub const CONTROLLER_MAC: &str = "52:54:00:00:00:02";

/// Sockets and logs of one pair, in one directory.
#[derive(Debug, Clone)]
pub struct PairSockets {
    /// Where the files are: logs are named by this path.
    pub dir: PathBuf,
    /// Sockets are named through this short handle (see [`ShortDir`]); None: relative to
    /// `dir`, for scripts that run in its parent.
    short: Option<ShortDir>,
}

impl PairSockets {
    /// The pair in `dir`, which must exist and outlive the VMs.
    pub fn new(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            short: Some(ShortDir::open(dir)?),
        })
    }
    /// Sockets named `dir/NAME` as they are, for emitted scripts where `dir` is relative.
    pub fn relative(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            short: None,
        }
    }
    /// What each QEMU of the pair must inherit for the socket paths to work.
    pub fn inherit(&self) -> Option<ShortDir> {
        self.short.clone()
    }
    pub fn socket(&self, name: &str) -> PathBuf {
        match &self.short {
            Some(short) => short.join(name),
            None => self.dir.join(name),
        }
    }
    pub fn guest_link(&self) -> PathBuf {
        self.socket("link-guest.sock")
    }
    pub fn controller_link(&self) -> PathBuf {
        self.socket("link-ctl.sock")
    }
    pub fn control(&self) -> PathBuf {
        self.socket("control.sock")
    }
    pub fn qmp(&self, vm: &str) -> PathBuf {
        self.socket(&format!("qmp-{vm}.sock"))
    }
    pub fn console(&self, vm: &str) -> PathBuf {
        self.dir.join(format!("{vm}.console.log"))
    }
}

impl PairConfig {
    pub fn guest_spec(&self, files: &PairFiles, ram: &RamMode, sockets: &PairSockets) -> VmSpec {
        let (memory, incoming) = ram.backing(Vm::Guest);
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
                mac: GUEST_MAC.into(),
                link: Link::UnixDgram {
                    local: sockets.guest_link(),
                    remote: sockets.controller_link(),
                },
            }],
            ports: vec![],
            shares: vec![],
            console_log: sockets.console("guest"),
            qmp_socket: sockets.qmp("guest"),
            rtc: Rtc {
                base: self.rtc_base.clone(),
                vm_clock: true,
            },
            incoming,
            inherit: sockets.inherit(),
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
                mac: CONTROLLER_MAC.into(),
                link: Link::UnixDgram {
                    local: sockets.controller_link(),
                    remote: sockets.guest_link(),
                },
            }],
            ports: vec![SerialPort {
                name: agent::CONTROL_PORT.into(),
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
            incoming,
            inherit: sockets.inherit(),
        }
    }
}

/// All 9p tags the controller has, in device order: the exchange dir, then the volumes.
pub fn share_tags() -> Vec<String> {
    std::iter::once(agent::XCHG_TAG.to_string())
        .chain((0..agent::VOLUME_SLOTS).map(agent::volume_tag))
        .collect()
}
