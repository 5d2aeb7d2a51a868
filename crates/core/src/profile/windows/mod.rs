//! Windows guests on QEMU, the `windows` and `windows-xp` profiles: what the profile records
//! ([`WindowsProfile`]), the machine ([`machine`]), the bootstrap stages ([`stages`]), the
//! install run from guestbox ([`install`]) and cached ([`bootstrap`]), `bootstrap --emit`
//! ([`mod@emit`]), and the scripts over SSH: the share's mapping at bootstrap and one run
//! ([`run`]).
//!
//! The install media themselves (answer file, floppy, offline Cygwin CD, bootstrap scripts)
//! come from [`media::windows`]; this module decides the machine they are put into and runs
//! it.
//!
//! Two stages make a Windows base:
//! 1. `install`: firmware boots the Windows ISO; Setup reads the answer file from the
//!    floppy, installs, reboots a few times (so reboots are allowed here), logs on once and
//!    runs the bootstrap from the floppy, which installs Cygwin from the second CD, sets up
//!    sshd, writes [`media::windows::BOOTSTRAP_OK`] (or `..._FAILED: step`) to COM1 and
//!    powers off.
//! 2. `first-boot`: the installed disk alone, with the NIC on the private link to the
//!    controller, exactly the devices a revived snapshot has. Ready when SSH answers; then
//!    the controller maps its share ([`run::setup_script`]) and both VMs are frozen
//!    together into the base, as for every profile ([`crate::bootstrap`]).
//!
//! Choices, and why:
//! - **Machine.** `windows`: q35 with the ICH9 AHCI disk (Vista and later ship AHCI
//!   drivers, none for virtio). `windows-xp`: pc (i440FX) with IDE, which XP drives inbox.
//! - **NIC.** Windows 8 and later ship a driver for the e1000e (82574L); Vista/7/2008 for
//!   the e1000 (82540EM); XP for neither, but for the RTL8139. Always the MAC the answer
//!   file names ([`media::windows::GuestNetwork::mac_colons`]), and no option ROM: PXE is
//!   never wanted.
//! - **CPU.** Under KVM `host,migratable=on` (QEMU then leaves out `invtsc` and every
//!   other feature that blocks migration), with the Hyper-V enlightenments in
//!   [`HYPERV_FLAGS`]: all migratable. Not `hv-passthrough` (its set depends on the host),
//!   `hv-reenlightenment`/`hv-frequencies` (tie the guest to the TSC frequency), the nested
//!   ones (`hv-evmcs`, `hv-tlbflush-direct`, `hv-emsr-bitmap`) or
//!   `hv-no-nonarch-coresharing=auto` (blocks migration). The enlightenments are KVM's
//!   (under TCG, QEMU 7.2 even refuses `hv-vpindex`), so TCG gets none, and the model is `Nehalem-v1`: the
//!   oldest named model with everything Windows 11 24H2 checks for (SSE4.2, POPCNT,
//!   CMPXCHG16B, LAHF/SAHF, NX) and nothing TCG cannot emulate, so QEMU prints no warning.
//! - **Clock.** Windows keeps the RTC in *local* time of its own zone. QEMU can start the
//!   RTC at UTC or at the host's local time, so: `base=utc` when the guest's zone is UTC
//!   (the default of both profiles), `base=localtime` otherwise (right when the host's zone
//!   is the guest's). Not the original's fixed `2010-01-01`: today's Windows checks
//!   certificate and evaluation dates against it. Always `clock=vm`: the clock stands still
//!   while the VM is stopped or saved, as in the original; the run sets the time. The RTC's
//!   lost ticks are slewed (what `-rtc driftfix=slew` sets), and under KVM the PIT's are delayed, as
//!   libvirt does for Windows. No HPET: Windows uses the Hyper-V clock (KVM) or the TSC.
//! - **Floppy.** q35 has no floppy controller of its own: an explicit `isa-fdc` with a
//!   `floppy` on its bus. pc has one, used through `if=floppy`.
//! - **Firmware.** BIOS (SeaBIOS) with `-boot order=dc` for the install. UEFI: OVMF with a
//!   per-base copy of the variable store; with [`Win11Requirements::RealTpmUefi`] the
//!   Secure Boot build (needs SMM) and the variable store with Microsoft's keys enrolled and
//!   Secure Boot on, plus a TPM 2.0 from swtpm. Windows' UEFI CD loader waits for a key
//!   press, so the install stage says which key to press for how long.
//! - **Sleep.** S3 and S4 are switched off in the chipset: a guest that suspends or
//!   hibernates cannot be snapshotted usefully.
//! - **Display.** A standard VGA (with `-display none`): Windows' boot loader and Setup
//!   want one, and `screendump` over QMP shows where an unattended install is stuck.

use std::path::PathBuf;
use std::time::Duration;

use media::cygwin::CygwinMirror;
use media::windows::{
    Firmware, ImageSelection, Profile as WinProfile, Secret, Win11Requirements, WindowsGeneration,
    WindowsSettings,
};
use serde::{Deserialize, Serialize};

pub mod bootstrap;
pub mod emit;
pub mod install;
pub mod machine;
pub mod run;
pub mod stages;

pub use emit::{check_inputs, emit, stage_script, stored_password, EmitReport};
pub use machine::{
    check_host, cpu_model, firmware_guest, nic_model, ovmf_build, rtc, wants_tpm, Hardware,
    OvmfBuild, HYPERV_FLAGS, KVM_CPU, OVMF, OVMF_CODE, OVMF_CODE_SECURE_BOOT, OVMF_VARS,
    OVMF_VARS_MS_KEYS, SWTPM, TCG_CPU,
};
pub use run::{run_script, run_spec, GuestPath, SETUP_FAILED_EXIT, SHARE_DRIVE};
pub use stages::{
    command_lines, stage_specs, KeyPresses, Stage, StageEnd, WindowsPaths, STAGE_FIRST_BOOT,
    STAGE_INSTALL,
};

use crate::machine::spec::Accel;
use crate::Error;

/// File names in an `--emit` directory and an install.
pub const DISK_FILE: &str = "disk.qcow2";
/// The administrator password, owner-only: the answer file and the floppy hold it too,
/// and a later emit into the same directory reuses it (see [`stored_password`]).
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";
pub const OVMF_VARS_FILE: &str = "OVMF_VARS.fd";
pub const TPM_DIR: &str = "tpm";
/// Sockets and logs, relative to the emit directory.
pub const RUN_DIR: &str = "run";

/// Windows guests keep Windows semantics on the share (case-insensitive Unicode names, DOS
/// attributes; Cygwin makes its own symlinks): the controller's Samba as it always was.
/// What `Profile::share_semantics` must give for a Windows profile.
pub const SHARE_SEMANTICS: link::shares::Semantics = link::shares::Semantics::Windows;

pub(crate) fn media_error(e: media::windows::Error) -> Error {
    match e {
        media::windows::Error::Io { path, source } => Error::Io {
            context: format!("writing {}", path.display()),
            source,
        },
        other => Error::Usage(other.to_string()),
    }
}

/// What a Windows base is made from, as its manifest records it: the answer file's
/// choices (no secrets), the disk size, and the digests of the install ISO and the Cygwin
/// mirror. Where the media are (and the secrets to install with) is not recorded; the
/// bootstrap takes it from [`WindowsProfile::sources`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowsProfile {
    pub choices: Choices,
    /// Size of the system disk created for the install.
    pub disk_gib: u64,
    /// blake3 of the install ISO (filled in by the bootstrap).
    #[serde(default)]
    pub iso_blake3: String,
    /// blake3 of the mirror's setup.ini (and its signature) and of the setup program: the
    /// closure of packages and every archive's checksum follow from them.
    #[serde(default)]
    pub mirror_blake3: String,
    #[serde(skip)]
    pub sources: Option<Sources>,
}

/// Where a Windows bootstrap gets its media and secrets from: given, never recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub iso: PathBuf,
    pub mirror: CygwinMirror,
    /// The administrator's password; None: generated. Kept in the base's secrets.
    pub admin_password: Option<Secret>,
    /// XXXXX-XXXXX-XXXXX-XXXXX-XXXXX, where the media need one (XP always does).
    pub product_key: Option<String>,
    /// How long the install may take.
    pub install_timeout: Duration,
}

/// The answer file's choices, recorded. See [`WindowsSettings`] for each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choices {
    /// "modern" (Windows 8 and later) or "legacy" (Vista, 7, 2008).
    pub generation: String,
    /// "bios" or "uefi".
    pub firmware: String,
    /// A real TPM 2.0 and Secure Boot instead of Windows 11's bypass keys.
    pub tpm: bool,
    /// `index:N` or `name:NAME` of install.wim.
    pub image: String,
    pub user: String,
    pub full_name: String,
    pub organization: String,
    pub computer_name: String,
    pub locale: String,
    pub keyboard: String,
    pub timezone: String,
    pub cygwin_root: String,
    pub cygwin_packages: Vec<String>,
}

impl WindowsProfile {
    /// The choices of `settings` (its password, key and product key are not kept).
    pub fn new(settings: &WindowsSettings, disk_gib: u64, sources: Option<Sources>) -> Self {
        let s = settings;
        WindowsProfile {
            choices: Choices {
                generation: match s.generation {
                    WindowsGeneration::Modern => "modern",
                    WindowsGeneration::Legacy => "legacy",
                }
                .into(),
                firmware: match s.firmware {
                    Firmware::Bios => "bios",
                    Firmware::Uefi => "uefi",
                }
                .into(),
                tpm: s.win11 == Win11Requirements::RealTpmUefi,
                image: match &s.image {
                    ImageSelection::Index(i) => format!("index:{i}"),
                    ImageSelection::Name(n) => format!("name:{n}"),
                },
                user: s.user.clone(),
                full_name: s.full_name.clone(),
                organization: s.organization.clone(),
                computer_name: s.computer_name.clone(),
                locale: s.locale.clone(),
                keyboard: s.keyboard.clone(),
                timezone: s.timezone.clone(),
                cygwin_root: s.cygwin.root.clone(),
                cygwin_packages: s.cygwin.packages.clone(),
            },
            disk_gib,
            iso_blake3: String::new(),
            mirror_blake3: String::new(),
            sources,
        }
    }

    /// The full settings for `kind`, with the secrets to install with.
    pub fn settings(
        &self,
        kind: WinProfile,
        password: Secret,
        authorized_key: &str,
        product_key: Option<String>,
    ) -> crate::Result<WindowsSettings> {
        let c = &self.choices;
        let mut s = WindowsSettings::new(kind, password, authorized_key);
        let bad = |what: &str, v: &str| {
            Error::Usage(format!(
                "the Windows profile's {what} {v:?} is not one guestbox knows"
            ))
        };
        s.generation = match c.generation.as_str() {
            "modern" => WindowsGeneration::Modern,
            "legacy" => WindowsGeneration::Legacy,
            other => return Err(bad("generation", other)),
        };
        s.firmware = match c.firmware.as_str() {
            "bios" => Firmware::Bios,
            "uefi" => Firmware::Uefi,
            other => return Err(bad("firmware", other)),
        };
        if c.tpm {
            s.win11 = Win11Requirements::RealTpmUefi;
        }
        s.image = match c.image.split_once(':') {
            Some(("index", i)) => {
                ImageSelection::Index(i.parse().map_err(|_| bad("image", &c.image))?)
            }
            Some(("name", n)) => ImageSelection::Name(n.into()),
            _ => return Err(bad("image", &c.image)),
        };
        s.product_key = product_key;
        s.user = c.user.clone();
        s.full_name = c.full_name.clone();
        s.organization = c.organization.clone();
        s.computer_name = c.computer_name.clone();
        s.locale = c.locale.clone();
        s.keyboard = c.keyboard.clone();
        s.timezone = c.timezone.clone();
        s.cygwin.root = c.cygwin_root.clone();
        s.cygwin.packages = c.cygwin_packages.clone();
        Ok(s)
    }

    /// The settings as far as the machine and the scripts need them (no secrets).
    pub fn public_settings(&self, kind: WinProfile) -> crate::Result<WindowsSettings> {
        // A placeholder key: nothing of the machine depends on it.
        self.settings(
            kind,
            Secret::new("unused"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVudXNlZHVudXNlZHVudXNlZHVudXNlZHVudXNl unused",
            None,
        )
    }

    /// The account the controller logs in as.
    pub fn ssh_user(&self, kind: WinProfile) -> String {
        match kind {
            WinProfile::Windows => self.choices.user.clone(),
            WinProfile::WindowsXp => "Administrator".into(),
        }
    }

    /// The hardware for `kind` with the given memory and CPUs, the machine type resolved
    /// (`machine` e.g. `pc-q35-7.2`).
    pub fn hardware(
        &self,
        kind: WinProfile,
        accel: Accel,
        machine: String,
        memory_mib: u64,
        cpus: u32,
    ) -> crate::Result<Hardware> {
        let settings = self.public_settings(kind)?;
        Ok(Hardware {
            accel,
            machine,
            cpu: cpu_model(&settings, accel),
            cpus,
            memory_mib,
            disk_gib: self.disk_gib,
        })
    }
}
