//! Windows guests on QEMU: the device model, the bootstrap stages and their command lines,
//! `bootstrap --emit`, and the script of one run in the guest.
//!
//! The install media themselves (answer file, floppy, offline Cygwin CD, bootstrap scripts)
//! come from [`media::windows`]; this module only decides the machine they are put into.
//!
//! Two stages make a Windows base:
//! 1. `install`: firmware boots the Windows ISO; Setup reads the answer file from the
//!    floppy, installs, reboots a few times (so reboots are allowed here), logs on once and
//!    runs the bootstrap from the floppy, which installs Cygwin from the second CD, sets up
//!    sshd, writes [`media::windows::BOOTSTRAP_OK`] (or `..._FAILED: step`) to COM1 and
//!    powers off.
//! 2. `first-boot`: the installed disk alone, with the NIC on the private link to the
//!    controller, exactly the devices a revived snapshot has. Ready when SSH answers.
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

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use media::cygwin::CygwinMirror;
use media::windows::run::{RunSpec, ShareMount};
use media::windows::{
    EmittedMedia, Firmware, Profile as WinProfile, Secret, Win11Requirements, WindowsArch,
    WindowsGeneration, WindowsSettings,
};
use serde::{Deserialize, Serialize};

pub mod install;

use crate::host::programs::Program;
use crate::machine::argv::value;
use crate::machine::spec::{
    Accel, Boot, DiskFormat, Drive, DriveInterface, Link, Memory, Nic, NicModel, Rtc, VmSpec,
};
use crate::pair::PairSockets;
use crate::profile::debian::GUEST_SHARE_ROOT;
use crate::profile::GuestJob;
use crate::{Error, IoContext, Result};
use link::{net, shares};

fn sh_quote(word: &str) -> Result<String> {
    Ok(media::quote::bash(word)?)
}

/// The stage that installs Windows and Cygwin and ends with the guest powering off.
pub const STAGE_INSTALL: &str = "install";
/// The stage that boots the installed disk next to the controller.
pub const STAGE_FIRST_BOOT: &str = "first-boot";

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
pub const SWTPM: Program = Program {
    name: "swtpm",
    package: "swtpm",
    why: "it emulates the TPM 2.0 that Windows 11 wants without the bypass keys",
};

/// File names in a Windows base (and in an `--emit` directory).
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
pub const SHARE_SEMANTICS: shares::Semantics = shares::Semantics::Windows;

/// The drive letter the controller's share root is mapped to in a run.
pub const SHARE_DRIVE: char = 'G';
/// Exit status of a run whose setup (mapping, mounting, cd) failed.
pub const SETUP_FAILED_EXIT: i32 = media::windows::run::SETUP_FAILED_EXIT;

/// The machine a Windows guest gets: everything that must be the same at bootstrap and at
/// every revive. Recorded in the base manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    pub accel: Accel,
    /// `q35` or `pc`; resolve it to the versioned type (`pc-q35-7.2`) with
    /// [`crate::qemu_info::resolve_machine`] before making a base.
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

fn nic_driver(model: NicModel) -> &'static str {
    match model {
        NicModel::VirtioNet => "virtio-net-pci",
        NicModel::E1000 => "e1000",
        NicModel::E1000e => "e1000e",
        NicModel::Rtl8139 => "rtl8139",
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

/// Where a Windows guest's files are.
#[derive(Debug, Clone)]
pub struct WindowsPaths {
    /// The system disk (qcow2).
    pub disk: PathBuf,
    /// The answer-file floppy ([`media::windows::FLOPPY_FILE`]).
    pub floppy: PathBuf,
    /// The user's Windows install ISO.
    pub windows_iso: PathBuf,
    /// The offline Cygwin CD ([`media::windows::CYGWIN_ISO_FILE`]).
    pub cygwin_iso: PathBuf,
    /// UEFI: this base's copy of the variable store.
    pub ovmf_vars: PathBuf,
    /// TPM: swtpm's state directory (part of the base, like the disk).
    pub tpm_state: PathBuf,
    /// Sockets and consoles; the guest's link is the pair's.
    pub sockets: PairSockets,
    /// RAM of the `first-boot` stage, written through to become the snapshot's; None:
    /// anonymous memory.
    pub first_boot_ram: Option<PathBuf>,
}

impl WindowsPaths {
    /// The standard layout: disk, media, firmware variables and TPM state in `dir`,
    /// sockets and logs in `run_dir`, named as given (the emitted scripts run in the
    /// base's directory, so relative names stay short enough for unix sockets).
    pub fn new(dir: &Path, run_dir: &Path, windows_iso: &Path) -> Result<Self> {
        Ok(WindowsPaths {
            disk: dir.join(DISK_FILE),
            floppy: dir.join(media::windows::FLOPPY_FILE),
            windows_iso: windows_iso.to_path_buf(),
            cygwin_iso: dir.join(media::windows::CYGWIN_ISO_FILE),
            ovmf_vars: dir.join(OVMF_VARS_FILE),
            tpm_state: dir.join(TPM_DIR),
            sockets: PairSockets::relative(run_dir),
            first_boot_ram: None,
        })
    }

    /// swtpm's control socket, which QEMU connects to.
    pub fn tpm_socket(&self) -> PathBuf {
        self.sockets.socket("swtpm.sock")
    }
}

/// The `-global` defaults of one device class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub driver: String,
    pub property: String,
    pub value: String,
}

impl Global {
    pub fn new(driver: &str, property: &str, value: &str) -> Self {
        Global {
            driver: driver.into(),
            property: property.into(),
            value: value.into(),
        }
    }
}

/// UEFI firmware in two flash chips: the shared code, read-only, and the guest's variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars: PathBuf,
    /// Secure Boot build: only SMM may write the flash.
    pub secure_boot: bool,
}

/// A floppy on an explicit ISA floppy controller (q35 has none of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsaFloppy {
    pub image: PathBuf,
    pub readonly: bool,
}

/// A read-only CD-ROM on a given IDE bus (`ide.N`: an AHCI port on q35, a channel of the
/// PIIX controller on i440FX, which has two units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdRom {
    pub image: PathBuf,
    pub bus: String,
    pub unit: Option<u32>,
}

/// A TPM 2.0 (TIS interface) backed by swtpm through its control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmDevice {
    pub socket: PathBuf,
}

/// What Windows needs beyond what [`VmSpec`] describes, appended to its command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WindowsExtras {
    /// A guest reboot resets the machine (`-action reboot=reset`, which overrides
    /// `-no-reboot`): Windows Setup reboots several times.
    pub allow_reboot: bool,
    pub firmware: Option<Ovmf>,
    pub globals: Vec<Global>,
    /// CD-ROMs on explicit IDE/AHCI buses, in boot order.
    pub cdroms: Vec<CdRom>,
    pub isa_floppy: Option<IsaFloppy>,
    /// A standard VGA card.
    pub vga: bool,
    pub tpm: Option<TpmDevice>,
}

impl WindowsExtras {
    /// The arguments to append to [`VmSpec::argv`].
    pub fn argv(&self) -> Result<Vec<String>> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |flag: &str, val: String| {
            a.push(flag.to_string());
            a.push(val);
        };
        if self.allow_reboot {
            push("-action", "reboot=reset".into());
        }
        if let Some(fw) = &self.firmware {
            push(
                "-drive",
                format!(
                    "file={},if=pflash,unit=0,format=raw,readonly=on",
                    value(&fw.code)?
                ),
            );
            push(
                "-drive",
                format!("file={},if=pflash,unit=1,format=raw", value(&fw.vars)?),
            );
            if fw.secure_boot {
                push(
                    "-global",
                    "driver=cfi.pflash01,property=secure,value=on".into(),
                );
            }
        }
        for g in &self.globals {
            push(
                "-global",
                format!(
                    "driver={},property={},value={}",
                    g.driver,
                    g.property,
                    g.value.replace(',', ",,")
                ),
            );
        }
        for (i, cd) in self.cdroms.iter().enumerate() {
            push(
                "-drive",
                format!(
                    "file={},if=none,id=cd{i},format=raw,media=cdrom,read-only=on",
                    value(&cd.image)?
                ),
            );
            let unit = cd.unit.map(|u| format!(",unit={u}")).unwrap_or_default();
            push(
                "-device",
                format!("ide-cd,drive=cd{i},bus={}{unit}", cd.bus),
            );
        }
        if let Some(f) = &self.isa_floppy {
            let ro = if f.readonly { ",read-only=on" } else { "" };
            push(
                "-drive",
                format!("file={},if=none,id=fdd0,format=raw{ro}", value(&f.image)?),
            );
            push("-device", "isa-fdc,id=fdc0".into());
            push("-device", "floppy,bus=fdc0.0,unit=0,drive=fdd0".into());
        }
        if self.vga {
            push("-device", "VGA".into());
        }
        if let Some(t) = &self.tpm {
            push(
                "-chardev",
                format!("socket,id=chrtpm,path={}", value(&t.socket)?),
            );
            push("-tpmdev", "emulator,id=tpm0,chardev=chrtpm".into());
            push("-device", "tpm-tis,tpmdev=tpm0".into());
        }
        Ok(a)
    }
}

/// The swtpm process a TPM stage needs running before QEMU starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swtpm {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    /// Set by a guestbox that starts swtpm itself; None: the emitted scripts' paths.
    pub handles: Option<SwtpmHandles>,
}

/// What a guestbox that supervises swtpm hands it, so that swtpm is confined as QEMU is
/// (issue #15): under its seccomp profile (`action=kill`, swtpm's default, written out),
/// and, as root, as an unprivileged user. swtpm changes user before it would bind its
/// control socket or open its log, so those come as descriptors: a path in a root-owned
/// run directory would fail (a log it cannot open makes it exit without a word). QEMU
/// still connects to [`Swtpm::socket`] by path, before it leaves root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwtpmHandles {
    /// A unix stream socket bound at [`Swtpm::socket`] and listening, swtpm inherits it.
    pub ctrl_fd: i32,
    /// An open file for its log, inherited.
    pub log_fd: i32,
    /// As root: the account it becomes, by name (a number would also become its group
    /// id); [`Swtpm::state_dir`] must belong to that account.
    pub runas: Option<String>,
}

impl Swtpm {
    /// Arguments after `swtpm`. It serves one QEMU and exits when that one disconnects.
    pub fn argv(&self) -> Result<Vec<String>> {
        // swtpm splits its option values at commas and has no escape for them.
        let v = |p: &Path| -> Result<String> {
            let s = value(p)?;
            if s.contains(',') {
                return Err(Error::Usage(format!(
                    "swtpm cannot take paths with a comma: {}",
                    p.display()
                )));
            }
            Ok(s)
        };
        let mut a: Vec<String> = vec![
            "socket".into(),
            "--tpm2".into(),
            "--tpmstate".into(),
            format!("dir={}", v(&self.state_dir)?),
        ];
        match &self.handles {
            None => a.extend([
                "--ctrl".into(),
                format!("type=unixio,path={}", v(&self.socket)?),
                "--log".into(),
                format!("file={},level=1", v(&self.log)?),
                "--pid".into(),
                format!("file={}", v(&self.pid_file)?),
            ]),
            Some(h) => {
                a.extend([
                    "--ctrl".into(),
                    format!("type=unixio,fd={}", h.ctrl_fd),
                    "--log".into(),
                    format!("fd={},level=1", h.log_fd),
                ]);
                if let Some(user) = &h.runas {
                    a.extend(["--runas".into(), user.clone()]);
                }
            }
        }
        a.extend([
            "--seccomp".into(),
            "action=kill".into(),
            "--terminate".into(),
        ]);
        Ok(a)
    }
}

/// Key presses to send over QMP while the firmware starts the install CD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPresses {
    /// QMP `send-key` qcode.
    pub qcode: String,
    pub every: Duration,
    pub during: Duration,
}

/// How a stage ends, or when it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageEnd {
    /// The guest powers off; its first serial port (the console log) holds `ok`, or
    /// `failed` followed by ": " and the step.
    PowerOff {
        ok: &'static str,
        failed: &'static str,
    },
    /// The guest is up when its SSH server answers.
    SshReady { address: Ipv4Addr, port: u16 },
}

/// One boot of the guest during bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    pub spec: VmSpec,
    pub extras: WindowsExtras,
    /// Start it (and wait for its socket) before QEMU.
    pub swtpm: Option<Swtpm>,
    /// Windows' UEFI CD loader waits for a key: press this meanwhile.
    pub boot_keys: Option<KeyPresses>,
    pub end: StageEnd,
}

impl Stage {
    /// QEMU's arguments, without the program name.
    pub fn argv(&self) -> Result<Vec<String>> {
        let mut a = self.spec.argv()?;
        a.extend(self.extras.argv()?);
        Ok(a)
    }
}

fn media_error(e: media::windows::Error) -> Error {
    match e {
        media::windows::Error::Io { path, source } => Error::Io {
            context: format!("writing {}", path.display()),
            source,
        },
        other => Error::Usage(other.to_string()),
    }
}

/// The guest as one stage boots it.
fn stage(
    name: &str,
    settings: &WindowsSettings,
    paths: &WindowsPaths,
    hw: &Hardware,
) -> Result<Stage> {
    let install = name == STAGE_INSTALL;
    let q35 = settings.profile == WinProfile::Windows;
    let mut drives = vec![Drive {
        path: paths.disk.clone(),
        format: DiskFormat::Qcow2,
        interface: if q35 {
            DriveInterface::Ahci
        } else {
            DriveInterface::Ide
        },
        readonly: false,
    }];
    // i440FX has a floppy controller of its own (q35's is in the extras).
    if install && !q35 {
        drives.push(Drive {
            path: paths.floppy.clone(),
            format: DiskFormat::Raw,
            interface: DriveInterface::Floppy,
            readonly: true,
        });
    }
    // The CDs go in the extras, on buses named explicitly. VmSpec puts the disk on q35
    // AHCI port 0 / the i440FX primary master, so:
    // q35 ports 1 and 2; i440FX the secondary channel, master and slave. The Windows CD
    // first: the firmware boots the first CD it finds.
    let cdroms = if install {
        [&paths.windows_iso, &paths.cygwin_iso]
            .into_iter()
            .enumerate()
            .map(|(i, iso)| CdRom {
                image: iso.clone(),
                bus: if q35 {
                    format!("ide.{}", i + 1)
                } else {
                    "ide.1".into()
                },
                unit: (!q35).then_some(i as u32),
            })
            .collect()
    } else {
        Vec::new()
    };
    let ovmf = ovmf_build(settings);
    let mut machine = hw.machine.clone();
    machine.push_str(",hpet=off");
    if ovmf.is_some_and(|o| o.secure_boot) {
        machine.push_str(",smm=on");
    }
    let memory = match (&paths.first_boot_ram, install) {
        (Some(path), false) => Memory::File {
            path: path.clone(),
            shared: true,
            readonly: false,
        },
        _ => Memory::Anonymous,
    };
    let model = nic_model(settings);
    let spec = VmSpec {
        name: "guest".into(),
        accel: hw.accel,
        machine,
        cpu: hw.cpu.clone(),
        cpus: hw.cpus,
        memory_mib: hw.memory_mib,
        memory,
        boot: Boot::Firmware {
            order: if install { "dc" } else { "c" }.into(),
        },
        drives,
        nics: vec![Nic {
            model,
            mac: settings.network.mac_colons(),
            // The pair's socket pair when guestbox starts it, the socket paths in scripts.
            link: paths.sockets.link(crate::pair::End::Guest),
        }],
        ports: vec![],
        shares: vec![],
        console_log: paths
            .sockets
            .console(if install { STAGE_INSTALL } else { "guest" }),
        qmp_socket: paths.sockets.qmp("guest"),
        rtc: rtc(settings),
        generation_id: None,
        incoming: false,
        inherit: paths.sockets.inherit(),
        // The full seccomp sandbox; a root guestbox sets the user QEMU becomes.
        confinement: Default::default(),
    };

    let pm = if q35 { "ICH9-LPC" } else { "PIIX4_PM" };
    let mut globals = vec![
        Global::new(pm, "disable_s3", "1"),
        Global::new(pm, "disable_s4", "1"),
        Global::new("mc146818rtc", "lost_tick_policy", "slew"),
        Global::new(nic_driver(model), "romfile", ""),
    ];
    if hw.accel == Accel::Kvm {
        globals.push(Global::new("kvm-pit", "lost_tick_policy", "delay"));
    }
    let extras = WindowsExtras {
        allow_reboot: install,
        firmware: ovmf.map(|o| Ovmf {
            code: o.code.into(),
            vars: paths.ovmf_vars.clone(),
            secure_boot: o.secure_boot,
        }),
        globals,
        cdroms,
        isa_floppy: (install && q35).then(|| IsaFloppy {
            image: paths.floppy.clone(),
            readonly: true,
        }),
        vga: true,
        tpm: wants_tpm(settings).then(|| TpmDevice {
            socket: paths.tpm_socket(),
        }),
    };
    let swtpm = wants_tpm(settings).then(|| Swtpm {
        state_dir: paths.tpm_state.clone(),
        socket: paths.tpm_socket(),
        log: paths.sockets.dir.join("swtpm.log"),
        pid_file: paths.sockets.dir.join("swtpm.pid"),
        handles: None,
    });
    // Setup's first reboot comes minutes after these, so the keys cannot start the CD
    // again; TCG needs longer to get the firmware to the prompt.
    let boot_keys = (install && ovmf.is_some()).then(|| KeyPresses {
        qcode: "spc".into(),
        every: Duration::from_secs(1),
        during: Duration::from_secs(match hw.accel {
            Accel::Kvm => 60,
            Accel::Tcg => 240,
        }),
    });
    let end = if install {
        StageEnd::PowerOff {
            ok: media::windows::BOOTSTRAP_OK,
            failed: media::windows::BOOTSTRAP_FAILED,
        }
    } else {
        StageEnd::SshReady {
            address: settings.network.guest_ip,
            port: 22,
        }
    };
    Ok(Stage {
        name: name.into(),
        spec,
        extras,
        swtpm,
        boot_keys,
        end,
    })
}

/// The bootstrap's stages, in order: `install`, then `first-boot`.
pub fn stage_specs(
    settings: &WindowsSettings,
    paths: &WindowsPaths,
    hw: &Hardware,
) -> Result<Vec<Stage>> {
    settings.validate().map_err(media_error)?;
    hw.check(settings)?;
    [STAGE_INSTALL, STAGE_FIRST_BOOT]
        .into_iter()
        .map(|name| stage(name, settings, paths, hw))
        .collect()
}

/// The guest of a run: the `first-boot` stage's machine, its RAM the base's snapshot file
/// mapped copy-on-write, waiting for the device state (`-incoming defer`). Same devices
/// in the same order as the snapshot, so the state fits.
pub fn revive_stage(
    settings: &WindowsSettings,
    paths: &WindowsPaths,
    hw: &Hardware,
    ram: &Path,
    readonly_ram: bool,
) -> Result<Stage> {
    let mut st = stage_specs(settings, paths, hw)?
        .pop()
        .ok_or_else(|| Error::Stage {
            stage: STAGE_FIRST_BOOT.into(),
            problem: "there is none".into(),
        })?;
    st.name = "revive".into();
    st.spec.memory = Memory::File {
        path: ram.to_path_buf(),
        shared: false,
        readonly: readonly_ram,
    };
    st.spec.incoming = true;
    Ok(st)
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

/// Each stage's QEMU arguments (without the program name).
pub fn command_lines(
    settings: &WindowsSettings,
    paths: &WindowsPaths,
    hw: &Hardware,
) -> Result<Vec<(String, Vec<String>)>> {
    stage_specs(settings, paths, hw)?
        .into_iter()
        .map(|s| Ok((s.name.clone(), s.argv()?)))
        .collect()
}

/// A shell command, one argument per line, joined with ` \` continuations.
fn shell_lines(program: &str, args: &[String], indent: &str) -> Result<String> {
    let mut s = sh_quote(program)?;
    for a in args {
        s.push_str(" \\\n");
        s.push_str(indent);
        s.push_str(&sh_quote(a)?);
    }
    Ok(s)
}

fn path_word(p: &Path) -> Result<String> {
    let text = p.to_str().ok_or_else(|| {
        Error::Usage(format!(
            "path {} is not valid UTF-8; the stage scripts need UTF-8 paths",
            p.display()
        ))
    })?;
    sh_quote(text)
}

/// A runnable `sh` script for one stage: creates what the stage needs that does not
/// exist yet, starts swtpm if the stage has a TPM, then QEMU. Relative paths are relative
/// to the script's directory.
pub fn stage_script(stage: &Stage, index: usize, total: usize, hw: &Hardware) -> Result<String> {
    let install = stage.name == STAGE_INSTALL;
    let disk = stage
        .spec
        .drives
        .first()
        .map(|d| d.path.clone())
        .ok_or_else(|| Error::Stage {
            stage: stage.name.clone(),
            problem: "it has no disk".into(),
        })?;
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(&format!(
        "# guestbox: Windows bootstrap, stage {index} of {total}: {} (generated by\n\
         # `guestbox bootstrap --emit`). Relative paths are relative to this directory.\n",
        stage.name
    ));
    match &stage.end {
        StageEnd::PowerOff { ok, failed } => s.push_str(&format!(
            "# Boots the Windows ISO with the answer-file floppy and the Cygwin CD. Setup\n\
             # installs Windows, reboots a few times, installs Cygwin and sshd, then powers\n\
             # off. COM1 goes to {}: it ends with {ok}, or\n\
             # with {failed}: <step>. Under TCG this takes hours.\n",
            stage.spec.console_log.display()
        )),
        StageEnd::SshReady { address, port } => s.push_str(&format!(
            "# Boots the installed disk. guestbox starts the controller on the other end of\n\
             # the NIC's link ({}) and waits for SSH at {address}:{port};\n\
             # run alone, this boots Windows with its network unplugged.\n",
            stage
                .spec
                .nics
                .first()
                .map_or(String::new(), |n| match &n.link {
                    Link::UnixDgram { remote, .. } => remote.display().to_string(),
                    Link::Socket { .. } => "a socket pair".to_string(),
                })
        )),
    }
    s.push_str("set -eu\ncd -- \"$(dirname -- \"$0\")\"\n");
    if let Some(run) = stage.spec.qmp_socket.parent() {
        if !run.as_os_str().is_empty() {
            s.push_str(&format!("mkdir -p {}\n", path_word(run)?));
        }
    }
    let disk_w = path_word(&disk)?;
    if install {
        s.push_str(&format!(
            "[ -e {disk_w} ] || qemu-img create -f qcow2 {disk_w} {}G\n",
            hw.disk_gib
        ));
    } else {
        s.push_str(&format!(
            "[ -e {disk_w} ] || {{ echo \"{disk_w} is missing: run the install stage first\" >&2; exit 1; }}\n"
        ));
    }
    if let Some(t) = &stage.swtpm {
        s.push_str(&format!("mkdir -p {}\n", path_word(&t.state_dir)?));
        let sock = path_word(&t.socket)?;
        s.push_str(&format!(
            "# The TPM: serves this QEMU and exits with it. In the background, not as a\n\
             # daemon, so that it keeps this directory for its relative paths.\n\
             rm -f {sock}\n"
        ));
        s.push_str(&shell_lines("swtpm", &t.argv()?, "  ")?);
        s.push_str(&format!(
            " &\n\
             i=0\n\
             while [ ! -S {sock} ]; do\n\
             \x20 i=$((i + 1))\n\
             \x20 [ \"$i\" -le 100 ] || {{ echo {} >&2; exit 1; }}\n\
             \x20 sleep 0.1\n\
             done\n",
            sh_quote(&format!("swtpm did not start; see {}", t.log.display()))?
        ));
    }
    let argv = stage.argv()?;
    match &stage.boot_keys {
        None => {
            s.push_str("exec ");
            s.push_str(&shell_lines("qemu-system-x86_64", &argv, "  ")?);
            s.push('\n');
        }
        Some(keys) => {
            s.push_str(&shell_lines("qemu-system-x86_64", &argv, "  ")?);
            s.push_str(" &\nqemu_pid=$!\n");
            let qmp = path_word(&stage.spec.qmp_socket)?;
            let json = format!(
                "{{\"execute\":\"send-key\",\"arguments\":{{\"keys\":[{{\"type\":\"qcode\",\"data\":\"{}\"}}]}}}}",
                keys.qcode
            );
            s.push_str(&format!(
                "# Windows' UEFI CD loader waits for a key (\"Press any key to boot from CD or\n\
                 # DVD\"): press one every {} s for {} s, over QMP.\n\
                 if command -v socat >/dev/null 2>&1; then\n\
                 \x20 i=0\n\
                 \x20 while [ \"$i\" -lt {} ] && kill -0 \"$qemu_pid\" 2>/dev/null; do\n\
                 \x20   printf '%s\\n' '{{\"execute\":\"qmp_capabilities\"}}' {} \\\n\
                 \x20     | socat - UNIX-CONNECT:{qmp} >/dev/null 2>&1 || :\n\
                 \x20   sleep {}\n\
                 \x20   i=$((i + 1))\n\
                 \x20 done\n\
                 else\n\
                 \x20 echo 'socat is not installed: nothing can press the key the CD loader waits for (apt-get install socat)' >&2\n\
                 fi\n\
                 wait \"$qemu_pid\"\n",
                keys.every.as_secs().max(1),
                keys.during.as_secs(),
                keys.during.as_secs() / keys.every.as_secs().max(1),
                sh_quote(&json)?,
                keys.every.as_secs().max(1),
            ));
        }
    }
    Ok(s)
}

/// What [`emit`] wrote.
#[derive(Debug, Clone)]
pub struct EmitReport {
    pub dir: PathBuf,
    pub media: EmittedMedia,
    /// The per-base copy of the UEFI variable store, if UEFI.
    pub ovmf_vars: Option<PathBuf>,
    /// One runnable script per stage, in order.
    pub stage_scripts: Vec<(String, PathBuf)>,
    /// The stages the scripts run, paths relative to `dir`.
    pub stages: Vec<Stage>,
}

/// Checks the user's inputs for a Windows bootstrap before anything is built.
pub fn check_inputs(iso: &Path, mirror: &CygwinMirror) -> Result<()> {
    match fs::metadata(iso) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(Error::Usage(format!(
                "--iso {}: not a file; give the path of a Windows install ISO image",
                iso.display()
            )))
        }
        Err(e) => {
            return Err(Error::Usage(format!(
                "--iso {}: {e}; give the path of a Windows install ISO image (e.g. an \
                 evaluation ISO from Microsoft)",
                iso.display()
            )))
        }
    }
    if !mirror.dir.is_dir() {
        return Err(Error::Usage(format!(
            "--cygwin-mirror {}: no such directory; make a local Cygwin mirror with \
             `{} --download --local-package-dir DIR --packages openssh,cygrunsrv` \
             and give the directory named after the mirror URL",
            mirror.dir.display(),
            mirror.arch.setup_exe()
        )));
    }
    let ini = mirror.setup_ini_path();
    if !ini.is_file() {
        return Err(Error::Usage(format!(
            "--cygwin-mirror {}: it has no {}; give the directory named after the mirror URL, \
             which holds {}/setup.ini",
            mirror.dir.display(),
            ini.display(),
            mirror.arch.dir()
        )));
    }
    if !mirror.setup_exe.is_file() {
        return Err(Error::Usage(format!(
            "{}: no such file; put Cygwin's {} next to the mirror directory",
            mirror.setup_exe.display(),
            mirror.arch.setup_exe()
        )));
    }
    Ok(())
}

fn require_file(path: &str, program: Program) -> Result<()> {
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

/// The administrator password an earlier emit left in `dir`
/// ([`ADMIN_PASSWORD_FILE`]), if any: emitting again with it gives the same floppy.
pub fn stored_password(dir: &Path) -> Result<Option<Secret>> {
    let path = dir.join(ADMIN_PASSWORD_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Io {
                context: format!("reading {}", path.display()),
                source: e,
            })
        }
    };
    match String::from_utf8(bytes) {
        Ok(p) if !p.is_empty() => Ok(Some(Secret::new(p))),
        _ => Err(Error::Usage(format!(
            "{} is empty or not UTF-8: remove it to have a new password generated, or give \
             --admin-password",
            path.display()
        ))),
    }
}

/// Writes the password owner-only, exactly its bytes (no newline: what is read back is
/// the password).
fn store_password(dir: &Path, password: &Secret) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(ADMIN_PASSWORD_FILE);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .ctx(|| format!("writing {}", path.display()))?;
    // The mode above only applies to a new file.
    set_mode(&path, 0o600)?;
    f.write_all(password.expose().as_bytes())
        .ctx(|| format!("writing {}", path.display()))
}

/// `guestbox bootstrap --emit DIR`: writes the floppy image, the Cygwin ISO, the answer
/// file, every script, the administrator password ([`ADMIN_PASSWORD_FILE`], owner-only),
/// the UEFI variable store (if UEFI) and one runnable script per stage into `dir`, and
/// starts nothing.
///
/// The stage scripts use paths relative to `dir` (so the directory can be moved and socket
/// paths stay short), except the Windows ISO and the firmware, which they name absolutely.
pub fn emit(
    dir: &Path,
    settings: &WindowsSettings,
    iso: &Path,
    mirror: &CygwinMirror,
    hw: &Hardware,
) -> Result<EmitReport> {
    check_inputs(iso, mirror)?;
    settings.validate().map_err(media_error)?;
    hw.check(settings)?;
    let ovmf = ovmf_build(settings);
    if let Some(o) = ovmf {
        // Only the firmware: swtpm is started by the scripts, not here.
        require_file(o.code, OVMF)?;
        require_file(o.vars_template, OVMF)?;
    }
    let iso = fs::canonicalize(iso).ctx(|| format!("resolving {}", iso.display()))?;
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Usage(format!(
            "--emit {}: exists and is not a directory",
            dir.display()
        )));
    }
    let install_media =
        media::windows::build_install_media(settings, mirror).map_err(media_error)?;
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    // Before the media: the stored password is never older than the floppy's.
    store_password(dir, &settings.password)?;
    let written = install_media.write_to_dir(dir).map_err(media_error)?;

    let paths = WindowsPaths::new(Path::new(""), Path::new(RUN_DIR), &iso)?;
    let ovmf_vars = match ovmf {
        Some(o) => {
            let dst = dir.join(&paths.ovmf_vars);
            fs::copy(o.vars_template, &dst)
                .ctx(|| format!("copying {} to {}", o.vars_template, dst.display()))?;
            set_mode(&dst, 0o644)?;
            Some(dst)
        }
        None => None,
    };
    let stages = stage_specs(settings, &paths, hw)?;
    let mut stage_scripts = Vec::new();
    for (i, st) in stages.iter().enumerate() {
        let text = stage_script(st, i + 1, stages.len(), hw)?;
        let path = dir.join(format!("{}-{}.sh", i + 1, st.name));
        fs::write(&path, text).ctx(|| format!("writing {}", path.display()))?;
        set_mode(&path, 0o755)?;
        stage_scripts.push((st.name.clone(), path));
    }
    Ok(EmitReport {
        dir: dir.to_path_buf(),
        media: written,
        ovmf_vars,
        stage_scripts,
        stages,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting the mode of {}", path.display()))
}

fn bash_word(field: &str, s: &str) -> Result<String> {
    media::quote::bash(s).map_err(|e| Error::Usage(format!("{field}: {e}")))
}

/// The run for a job, as [`media::windows::run`] runs it: the controller's share root
/// (SMB share `guestbox`, user `guestbox`) mapped to `G:` and mounted at
/// [`GUEST_SHARE_ROOT`]; then, in a small bash prelude, each volume's directory
/// (`G:/vol0`...) mounted at its guest path, the clock set (best effort: it needs the
/// right to change the system time), the working directory entered, and the command
/// executed.
///
/// Cygwin has no read-only mounts: a read-only volume is read-only because the
/// controller's 9p device for it is.
pub fn run_spec(job: &GuestJob, smb_password: &str) -> Result<RunSpec> {
    if job.argv.is_empty() {
        return Err(Error::Usage("there is no command to run".into()));
    }
    let tags = shares::all_tags();
    let mut prelude = String::new();
    prelude.push_str(&format!(
        "guestbox_fail() {{ printf 'guestbox: %s\\n' \"$1\" >&2; exit {SETUP_FAILED_EXIT}; }}\n"
    ));
    if let Some(t) = job.time {
        prelude.push_str(&format!("date -s @{t} >/dev/null 2>&1 || :\n"));
    }
    let mut seen = Vec::new();
    for m in &job.mounts {
        if !tags.contains(&m.tag) {
            return Err(Error::Usage(format!(
                "share tag {:?} is not one of the controller's ({})",
                m.tag,
                tags.join(", ")
            )));
        }
        let p = &m.guest_path;
        if !p.starts_with('/') || p.trim_end_matches('/').is_empty() || p.contains(['\0', '\n']) {
            return Err(Error::Usage(format!(
                "guest path {p:?}: a Windows guest needs an absolute Cygwin path other than / \
                 (like /src; C:\\src is /cygdrive/c/src)"
            )));
        }
        if seen.contains(&p) {
            return Err(Error::Usage(format!("guest path {p:?} is used twice")));
        }
        seen.push(p);
        let dst = bash_word("guest path", p)?;
        prelude.push_str(&format!(
            "umount {dst} 2>/dev/null\nmount -f -o binary,noacl {SHARE_DRIVE}:/{} {dst} || guestbox_fail {}\n",
            m.tag,
            bash_word("guest path", &format!("cannot mount share {} at {p}", m.tag))?
        ));
    }
    if let Some(dir) = &job.workdir {
        if !dir.starts_with('/') {
            return Err(Error::Usage(format!(
                "working directory {dir:?}: a Windows guest needs an absolute Cygwin path"
            )));
        }
        prelude.push_str(&format!(
            "cd -- {} || guestbox_fail {}\n",
            bash_word("working directory", dir)?,
            bash_word("working directory", &format!("cannot enter {dir}"))?
        ));
    }
    prelude.push_str("exec \"$@\"\n");
    let mut argv = vec![
        "/bin/bash".to_string(),
        "-c".into(),
        prelude,
        "guestbox".into(),
    ];
    argv.extend(job.argv.iter().cloned());
    let mut spec = RunSpec::new(argv);
    spec.server = net::CONTROLLER_ADDRESS;
    spec.smb_user = shares::SMB_USER.into();
    spec.smb_password = Secret::new(smb_password);
    if !job.mounts.is_empty() {
        spec.shares = vec![ShareMount {
            drive: SHARE_DRIVE,
            share: shares::SMB_SHARE.into(),
            mount_point: GUEST_SHARE_ROOT.into(),
        }];
    }
    spec.env = job.env.clone();
    Ok(spec)
}

/// The bash script of one run in a Windows guest (see [`run_spec`]); it exits with the
/// command's status, or [`SETUP_FAILED_EXIT`] if the shares or the directory failed.
pub fn run_script(job: &GuestJob, smb_password: &str) -> Result<String> {
    media::windows::run::run_script(&run_spec(job, smb_password)?).map_err(media_error)
}
