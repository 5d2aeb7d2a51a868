//! The machine a Windows guest gets (see the module documentation of [`super`] for the
//! choices): its [`Hardware`] as given, and the [`FirmwareGuest`] every VM of it is written
//! from — install, first boot, revive.

use std::path::Path;

use media::windows::{
    Firmware, Profile as WinProfile, Win11Requirements, WindowsArch, WindowsGeneration,
    WindowsSettings,
};
use serde::{Deserialize, Serialize};

use crate::host::programs::Program;
use crate::machine::spec::{Accel, DriveInterface, Global, NicModel, Rtc};
use crate::pair::guest::{nic_driver, FirmwareGuest, Uefi};
use crate::{Error, Result};

/// CPU model under TCG (see the module documentation).
pub const TCG_CPU: &str = "Nehalem-v1";
/// CPU model under KVM: the host's, without what blocks migration.
pub const KVM_CPU: &str = "host,migratable=on";
/// Hyper-V enlightenments given to Vista and later under KVM; each one migrates.
pub const HYPERV_FLAGS: &[&str] = &[
    "hv-relaxed",
    "hv-vapic",
    "hv-spinlocks=0x1fff",
    "hv-vpindex",
    "hv-runtime",
    "hv-synic",
    "hv-stimer",
    "hv-time",
];

/// Firmware files of Debian's `ovmf` package.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The Secure Boot build: refuses to run without SMM.
pub const OVMF_CODE_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Microsoft's keys enrolled, Secure Boot on.
pub const OVMF_VARS_MS_KEYS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

pub const OVMF: Program = Program {
    name: "OVMF (UEFI firmware in /usr/share/OVMF)",
    package: "ovmf",
    why: "Windows guests with UEFI firmware boot from it",
};
pub use crate::machine::tpm::SWTPM;

/// The machine a Windows guest gets: everything that must be the same at bootstrap and at
/// every revive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    pub accel: Accel,
    /// `q35` or `pc`; a base records the versioned type (`pc-q35-7.2`) it resolves to.
    pub machine: String,
    /// `-cpu` value; [`Hardware::new`] picks it (see the module documentation).
    pub cpu: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Size of the system disk created for the install.
    pub disk_gib: u64,
}

impl Hardware {
    /// Defaults for the profile: Windows 4 GiB, 2 CPUs, 64 GiB disk (what Windows 11
    /// checks for); XP 512 MiB, 1 CPU, 16 GiB.
    pub fn new(settings: &WindowsSettings, accel: Accel) -> Self {
        let (machine, cpus, memory_mib, disk_gib) = match settings.profile {
            WinProfile::Windows => ("q35", 2, 4096, 64),
            WinProfile::WindowsXp => ("pc", 1, 512, 16),
        };
        Hardware {
            accel,
            machine: machine.into(),
            cpu: cpu_model(settings, accel),
            cpus,
            memory_mib,
            disk_gib,
        }
    }

    /// Checks the hardware against the profile and the settings' requirements.
    pub fn check(&self, settings: &WindowsSettings) -> Result<()> {
        crate::bootstrap::check_resources(self.memory_mib, self.cpus)?;
        if enables_invtsc(&self.cpu) {
            return Err(Error::Usage(format!(
                "CPU model {:?} enables invtsc, which blocks the migration snapshots are made \
                 with; leave it out",
                self.cpu
            )));
        }
        if settings.arch == WindowsArch::Arm64 {
            return Err(Error::Usage(
                "ARM64 Windows needs an ARM64 machine; guestbox runs x86 guests (use an x64 \
                 or x86 ISO)"
                    .into(),
            ));
        }
        let q35 = self.machine.contains("q35");
        match settings.profile {
            WinProfile::Windows if !q35 => {
                return Err(Error::Usage(format!(
                    "machine {:?}: the windows profile needs a q35 machine (AHCI, PCIe)",
                    self.machine
                )))
            }
            WinProfile::WindowsXp if q35 || !self.machine.starts_with("pc") => {
                return Err(Error::Usage(format!(
                    "machine {:?}: the windows-xp profile needs the pc (i440FX) machine",
                    self.machine
                )))
            }
            _ => {}
        }
        let (min_mib, min_gib, what) = match (settings.profile, settings.arch) {
            (WinProfile::WindowsXp, _) => (128, 2, "Windows XP"),
            (WinProfile::Windows, WindowsArch::X86) => (1024, 32, "32-bit Windows"),
            (WinProfile::Windows, _) => (2048, 32, "64-bit Windows"),
        };
        if self.memory_mib < min_mib {
            return Err(Error::Usage(format!(
                "--memory {} MiB is too little: {what} needs at least {min_mib} MiB",
                self.memory_mib
            )));
        }
        if self.disk_gib < min_gib {
            return Err(Error::Usage(format!(
                "a {} GiB disk is too small: {what} needs at least {min_gib} GiB",
                self.disk_gib
            )));
        }
        if settings.profile == WinProfile::Windows
            && settings.win11 == Win11Requirements::RealTpmUefi
            && (self.memory_mib < 4096 || self.cpus < 2 || self.disk_gib < 64)
        {
            return Err(Error::Usage(format!(
                "Windows 11 without the bypass keys checks for 4096 MiB, 2 CPUs and a 64 GiB \
                 disk; this machine has {} MiB, {} CPUs and {} GiB (raise them, or use the \
                 bypass keys)",
                self.memory_mib, self.cpus, self.disk_gib
            )));
        }
        Ok(())
    }
}

/// True if a `-cpu` value turns `invtsc` on.
fn enables_invtsc(cpu: &str) -> bool {
    cpu.split(',').skip(1).any(|f| {
        matches!(
            f.trim(),
            "invtsc" | "+invtsc" | "invtsc=on" | "invtsc=true" | "invtsc=yes"
        )
    })
}

/// The `-cpu` value for a profile (see the module documentation).
pub fn cpu_model(settings: &WindowsSettings, accel: Accel) -> String {
    match accel {
        Accel::Tcg => TCG_CPU.into(),
        Accel::Kvm => {
            let mut cpu = KVM_CPU.to_string();
            // XP predates the Hyper-V interfaces and would only see a foreign signature.
            if settings.profile == WinProfile::Windows {
                for f in HYPERV_FLAGS {
                    cpu.push(',');
                    cpu.push_str(f);
                }
            }
            cpu
        }
    }
}

/// Windows keeps the RTC in the local time of its zone: UTC when that zone is UTC,
/// otherwise the host's local time (see the module documentation).
pub fn rtc(settings: &WindowsSettings) -> Rtc {
    // "Greenwich Standard Time" is GMT without daylight saving (XP's index 90, which
    // XP is also given for "UTC").
    let tz = settings.timezone.trim();
    let utc = tz.eq_ignore_ascii_case("UTC") || tz.eq_ignore_ascii_case("Greenwich Standard Time");
    Rtc {
        base: if utc { "utc" } else { "localtime" }.into(),
        vm_clock: true,
    }
}

/// The NIC model the profile's Windows has a driver for.
pub fn nic_model(settings: &WindowsSettings) -> NicModel {
    match (settings.profile, settings.generation) {
        (WinProfile::WindowsXp, _) => NicModel::Rtl8139,
        (WinProfile::Windows, WindowsGeneration::Legacy) => NicModel::E1000,
        (WinProfile::Windows, WindowsGeneration::Modern) => NicModel::E1000e,
    }
}

/// Which OVMF build the settings want, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OvmfBuild {
    pub code: &'static str,
    /// Copied once per base: the guest writes its boot entries there.
    pub vars_template: &'static str,
    /// Secure Boot: SMM on, the flash only writable from SMM.
    pub secure_boot: bool,
}

pub fn ovmf_build(settings: &WindowsSettings) -> Option<OvmfBuild> {
    match (settings.firmware, settings.win11) {
        (Firmware::Bios, _) => None,
        (Firmware::Uefi, Win11Requirements::RealTpmUefi) => Some(OvmfBuild {
            code: OVMF_CODE_SECURE_BOOT,
            vars_template: OVMF_VARS_MS_KEYS,
            secure_boot: true,
        }),
        (Firmware::Uefi, Win11Requirements::Bypass) => Some(OvmfBuild {
            code: OVMF_CODE,
            vars_template: OVMF_VARS,
            secure_boot: false,
        }),
    }
}

/// Whether the guest gets a TPM 2.0.
pub fn wants_tpm(settings: &WindowsSettings) -> bool {
    settings.profile == WinProfile::Windows && settings.win11 == Win11Requirements::RealTpmUefi
}

/// The guest's machine as data: `hw.machine` (an alias in emitted scripts, the versioned
/// type in a base) with HPET off and, for Secure Boot, SMM on; the profile's disk
/// controller and NIC; its clock; OVMF and swtpm if the settings want them; S3/S4 off;
/// the RTC's lost ticks slewed (and the PIT's delayed under KVM); no NIC option ROM.
pub fn firmware_guest(settings: &WindowsSettings, hw: &Hardware) -> FirmwareGuest {
    let q35 = settings.profile == WinProfile::Windows;
    let ovmf = ovmf_build(settings);
    let mut machine = hw.machine.clone();
    machine.push_str(",hpet=off");
    if ovmf.is_some_and(|o| o.secure_boot) {
        machine.push_str(",smm=on");
    }
    let nic = nic_model(settings);
    let pm = if q35 { "ICH9-LPC" } else { "PIIX4_PM" };
    let mut globals = vec![
        Global::new(pm, "disable_s3", "1"),
        Global::new(pm, "disable_s4", "1"),
        Global::new("mc146818rtc", "lost_tick_policy", "slew"),
        Global::new(nic_driver(nic), "romfile", ""),
    ];
    if hw.accel == Accel::Kvm {
        globals.push(Global::new("kvm-pit", "lost_tick_policy", "delay"));
    }
    FirmwareGuest {
        machine,
        cpu: hw.cpu.clone(),
        disk: if q35 {
            DriveInterface::Ahci
        } else {
            DriveInterface::Ide
        },
        nic,
        mac: settings.network.mac_colons(),
        rtc: rtc(settings),
        uefi: ovmf.map(|o| Uefi {
            code: o.code.into(),
            secure_boot: o.secure_boot,
        }),
        tpm: wants_tpm(settings),
        globals,
        vga: true,
        // Windows 8 and later read the VM Generation ID; XP would only meet an unknown
        // device.
        generation_id: settings.profile == WinProfile::Windows
            && settings.generation == WindowsGeneration::Modern,
    }
}

pub(crate) fn require_file(path: &str, program: Program) -> Result<()> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(Error::MissingProgram {
            program: program.name,
            package: program.package,
            why: program.why,
        })
    }
}

/// Checks that the host has what the settings' stages start: the OVMF files for UEFI,
/// swtpm for a TPM (QEMU itself is checked with [`crate::host::programs::VM`]).
pub fn check_host(settings: &WindowsSettings) -> Result<()> {
    if let Some(o) = ovmf_build(settings) {
        require_file(o.code, OVMF)?;
        require_file(o.vars_template, OVMF)?;
    }
    if wants_tpm(settings) {
        crate::host::programs::path_of(SWTPM)?;
    }
    Ok(())
}
