//! The two boots that make a Windows base, as data: `install` (the ISO, the answer-file
//! floppy and the Cygwin CD; ends when the guest powers off) and `first-boot` (the
//! installed disk alone, next to the controller; ready when SSH answers). Both are written
//! from the one [`FirmwareGuest`](crate::pair::FirmwareGuest) of the settings
//! ([`super::machine::firmware_guest`]), the install with its media added.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use media::windows::WindowsSettings;

use super::machine::{firmware_guest, ovmf_build, Hardware};
use super::{media_error, DISK_FILE, OVMF_VARS_FILE, TPM_DIR};
use crate::machine::spec::{Accel, Boot, DiskFormat, Drive, DriveInterface, Memory, VmSpec};
use crate::pair::guest::{GuestFiles, TPM_SOCKET};
use crate::pair::PairSockets;
use crate::Result;

/// The stage that installs Windows and Cygwin and ends with the guest powering off.
pub const STAGE_INSTALL: &str = "install";
/// The stage that boots the installed disk next to the controller.
pub const STAGE_FIRST_BOOT: &str = "first-boot";

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
    /// UEFI: this guest's copy of the variable store.
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
        self.sockets.socket(TPM_SOCKET)
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
    /// The whole machine, its TPM (swtpm) included.
    pub spec: VmSpec,
    /// Windows' UEFI CD loader waits for a key: press this meanwhile.
    pub boot_keys: Option<KeyPresses>,
    pub end: StageEnd,
}

impl Stage {
    /// QEMU's arguments, without the program name.
    pub fn argv(&self) -> Result<Vec<String>> {
        self.spec.argv()
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
    let memory = match (&paths.first_boot_ram, install) {
        (Some(path), false) => Memory::File {
            path: path.clone(),
            shared: true,
            readonly: false,
        },
        _ => Memory::Anonymous,
    };
    let guest = firmware_guest(settings, hw);
    let files = GuestFiles {
        disk: paths.disk.clone(),
        vars: paths.ovmf_vars.clone(),
        tpm_state: paths.tpm_state.clone(),
    };
    let console = if install { STAGE_INSTALL } else { "guest" };
    let mut spec = guest.spec(
        hw.accel,
        hw.memory_mib,
        hw.cpus,
        &files,
        memory,
        false,
        &paths.sockets,
        console,
    );
    if install {
        // CD first: the firmware boots the first CD it finds, the Windows ISO; the floppy
        // holds the answer file; Setup reboots several times.
        spec.boot = Boot::Firmware { order: "dc".into() };
        spec.platform.allow_reboot = true;
        spec.drives.push(Drive {
            path: paths.floppy.clone(),
            format: DiskFormat::Raw,
            interface: DriveInterface::Floppy,
            readonly: true,
        });
        for iso in [&paths.windows_iso, &paths.cygwin_iso] {
            spec.drives.push(Drive {
                path: iso.clone(),
                format: DiskFormat::Raw,
                interface: DriveInterface::CdRom,
                readonly: true,
            });
        }
    }
    // Setup's first reboot comes minutes after these, so the keys cannot start the CD
    // again; TCG needs longer to get the firmware to the prompt.
    let boot_keys = (install && ovmf_build(settings).is_some()).then(|| KeyPresses {
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
