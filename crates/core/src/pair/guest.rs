//! A guest that boots its own disk through firmware (Windows) instead of the base's kernel,
//! as data: its machine, CPU model, devices and clock. The profile decides it once
//! ([`crate::profile`]); it is recorded in the base ([`super::PairConfig::guest`]) and every
//! VM of it — the install, the first boot, each revive — is written from it by
//! [`FirmwareGuest::spec`], so a snapshot always meets the machine it was taken on.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{End, PairSockets};
use crate::machine::spec::{
    Accel, Boot, Confinement, DiskFormat, Drive, DriveInterface, Global, Memory, Nic, NicModel,
    Pflash, Platform, Rtc, Tpm, VmSpec,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareGuest {
    /// Machine type with its options (`pc-q35-7.2,hpet=off,smm=on`); versioned in a base.
    pub machine: String,
    pub cpu: String,
    /// How the system disk is attached.
    pub disk: DriveInterface,
    pub nic: NicModel,
    /// The NIC's MAC (`52:54:00:...`): the guest's network settings name it.
    pub mac: String,
    pub rtc: Rtc,
    /// UEFI firmware; None: BIOS.
    pub uefi: Option<Uefi>,
    /// A TPM 2.0 from swtpm.
    pub tpm: bool,
    pub globals: Vec<Global>,
    pub vga: bool,
    /// A VM Generation ID device, new at every revive (Windows 8 and later reseed from it;
    /// XP does not know the device).
    pub generation_id: bool,
}

/// OVMF: the code (a host file, never written) and whether it is the Secure Boot build. The
/// variable store is each instance's own ([`GuestFiles::vars`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uefi {
    pub code: PathBuf,
    pub secure_boot: bool,
}

/// What one instance of the guest writes: its disk, its UEFI variable store, its TPM state.
#[derive(Debug, Clone)]
pub struct GuestFiles {
    pub disk: PathBuf,
    /// Used if the guest has UEFI.
    pub vars: PathBuf,
    /// swtpm's state directory; used if the guest has a TPM.
    pub tpm_state: PathBuf,
}

impl FirmwareGuest {
    /// The VM of one instance: `memory` and `incoming` as the pair's RAM mode says, its NIC
    /// on the pair's link, sockets and logs in `sockets` (the console named `console`).
    #[allow(clippy::too_many_arguments)]
    pub fn spec(
        &self,
        accel: Accel,
        memory_mib: u64,
        cpus: u32,
        files: &GuestFiles,
        memory: Memory,
        incoming: bool,
        sockets: &PairSockets,
        console: &str,
    ) -> VmSpec {
        VmSpec {
            name: "guest".into(),
            accel,
            machine: self.machine.clone(),
            cpu: self.cpu.clone(),
            cpus,
            memory_mib,
            memory,
            boot: Boot::Firmware { order: "c".into() },
            drives: vec![Drive {
                path: files.disk.clone(),
                format: DiskFormat::Qcow2,
                interface: self.disk,
                readonly: false,
            }],
            nics: vec![Nic {
                model: self.nic,
                mac: self.mac.clone(),
                // The pair's socket pair when guestbox starts it, the paths in scripts.
                link: sockets.link(End::Guest),
            }],
            ports: vec![],
            shares: vec![],
            console_log: sockets.console(console),
            qmp_socket: sockets.qmp("guest"),
            rtc: self.rtc.clone(),
            generation_id: None,
            incoming,
            platform: Platform {
                firmware: self.uefi.as_ref().map(|u| Pflash {
                    code: u.code.clone(),
                    vars: files.vars.clone(),
                    secure_boot: u.secure_boot,
                }),
                globals: self.globals.clone(),
                vga: self.vga,
                tpm: self.tpm.then(|| Tpm {
                    state_dir: files.tpm_state.clone(),
                    socket: sockets.socket(TPM_SOCKET),
                    log: sockets.dir.join("swtpm.log"),
                }),
                allow_reboot: false,
            },
            inherit: sockets.inherit(),
            cwd: None,
            // The full sandbox; as root, bootstrap and run say whom QEMU becomes.
            confinement: Confinement::default(),
        }
    }

    /// Every machine type the guest names, for the host check before a revive.
    pub fn machine_type(&self) -> &str {
        self.machine.split(',').next().unwrap_or_default()
    }
}

/// swtpm's socket in a pair's directory.
pub const TPM_SOCKET: &str = "swtpm.sock";

/// The NIC model's QEMU device name (for `-global <driver>.romfile=`).
pub fn nic_driver(model: NicModel) -> &'static str {
    match model {
        NicModel::VirtioNet => "virtio-net-pci",
        NicModel::E1000 => "e1000",
        NicModel::E1000e => "e1000e",
        NicModel::Rtl8139 => "rtl8139",
    }
}
