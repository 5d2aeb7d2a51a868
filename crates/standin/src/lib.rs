//! **A stand-in for Windows + Cygwin, for tests only. It is not Windows.**
//!
//! guestbox makes Windows bases from media it generates itself (the answer file and
//! bootstrap scripts on a floppy, an offline Cygwin CD) and a Windows install ISO the user
//! brings. No Windows ISO can exist on a test machine, so this crate builds a *stand-in
//! install ISO* from Debian packages: a small Linux that plays Windows Setup, Windows and
//! Cygwin exactly as far as guestbox depends on them, on the same device models guestbox
//! gives a Windows guest, and that rejects what the real ones would reject.
//!
//! What the stand-in ISO does when it boots (BIOS or UEFI, with or without Secure Boot:
//! shim and GRUB signed by Debian, Debian's signed kernel):
//! 1. **Setup.** Finds the floppy and reads the answer file the way Windows Setup does
//!    (`Autounattend.xml` for the `windows` profile, `winnt.sif` for `windows-xp`), parses
//!    it strictly (a real XML parser; winnt.sif's INF grammar) and checks what Setup and
//!    guestbox's bootstrap need (see [`CHECKS`]). Then it runs `bootstrap.cmd` in a strict
//!    batch interpreter that accepts only the documented syntax of each command the script
//!    uses (`netsh`, `reg`, `sc`, `net`, `powercfg`, `shutdown`, Cygwin's setup, ...).
//!    Cygwin's setup stand-in finds the package CD, checks setup.ini and every package of
//!    the closure (size, SHA-512, a valid archive) and "installs Cygwin": the disk gets a
//!    GPT with a BIOS boot partition, an ESP and a root filesystem, GRUB for BIOS and the
//!    signed shim + GRUB for UEFI, and a userland laid out like Cygwin (`/bin/bash`,
//!    `/cygdrive/c`, the user of the answer file). `bootstrap.sh` then runs in real bash
//!    against stand-ins of Cygwin's `ssh-host-config`, `cygrunsrv` (...). The bootstrap's
//!    own lines end on COM1: `GUESTBOX-BOOTSTRAP-OK` or `GUESTBOX-BOOTSTRAP-FAILED: step`;
//!    a problem the real Setup would stop at prints [`SETUP_FAILED`]` <what>` instead.
//!    Then the VM powers off.
//! 2. **The installed stand-in** boots from that disk alone, brings the profile's NIC up
//!    at the answer file's static address, starts sshd accepting only the controller's key,
//!    and offers in SSH sessions `net use`, `cmd /c`, Cygwin's `mount`/`umount` and
//!    `cygpath` with their namesakes' syntax (see the README of the guest files).
//!
//! [`ensure_install_iso`] builds the ISO once per input hash into a caller-given cache
//! directory; everything else a test needs (a Cygwin mirror with real archives, the
//! markers) is here too.

mod build;
pub mod mirror;

pub use build::{ensure_install_iso, StandinIso, GUEST_FILES, PACKAGES, RECIPE_VERSION};

use std::path::PathBuf;

/// What the stand-in prints on COM1, before powering off, when it rejects the media the
/// way Windows Setup (or an earlier step than the bootstrap) would: a malformed or
/// incomplete answer file, a bootstrap line outside the accepted grammar, no floppy.
/// The problem follows after a space.
pub const SETUP_FAILED: &str = "STANDIN-SETUP-FAILED:";
/// Printed on COM1 when the stand-in's setup starts (after the kernel booted).
pub const SETUP_STARTED: &str = "STANDIN-SETUP-STARTED";
/// Printed on COM1 by the installed stand-in when sshd is listening.
pub const SSHD_READY: &str = "STANDIN-SSHD-READY";
/// Printed on COM1 by the installed stand-in when a requirement of the installed system
/// is missing at boot (e.g. the answer file needed a TPM and there is none); then it
/// powers off.
pub const BOOT_FAILED: &str = "STANDIN-BOOT-FAILED:";
/// The ISO's volume label.
pub const VOLUME_LABEL: &str = "STANDIN_WINDOWS";

/// What the stand-in's setup checks, for documentation and reports.
pub const CHECKS: &[&str] = &[
    "the answer file is on the floppy's root under the profile's name (case-insensitive, as FAT is)",
    "Autounattend.xml: well-formed XML in the unattend namespace; every component has name, processorArchitecture (amd64 on this machine), publicKeyToken 31bf3856ad364e35, language neutral, versionScope nonSxS",
    "Autounattend.xml: windowsPE has Microsoft-Windows-Setup with DiskConfiguration (disk 0 wiped, a layout fitting the firmware: one active NTFS partition for BIOS; EFI, MSR, primary for UEFI), ImageInstall/OSImage/InstallFrom/MetaData with /IMAGE/INDEX (a positive number) or /IMAGE/NAME, InstallTo naming an existing partition, UserData/AcceptEula true",
    "Autounattend.xml: specialize has a valid ComputerName (1-15 of letters, digits, '-') and TimeZone; Microsoft-Windows-TCPIP with DHCP off, the NIC's MAC as Identifier and the static address with prefix",
    "Autounattend.xml: oobeSystem has AdministratorPassword and a LocalAccount in Administrators with a password, AutoLogon for that account, a FirstLogonCommands SynchronousCommand that runs bootstrap.cmd from the floppy, TimeZone",
    "winnt.sif: INF grammar (sections, key=value, quoting, CRLF); [Data] [Unattended] [GuiUnattended] [UserData] [Networking] [GuiRunOnce] present; AdminPassword, ProductKey (5x5), ComputerName, TimeZone index, a static IPAddress/SubnetMask with DHCP=No, GuiRunOnce running A:\\bootstrap.cmd",
    "bootstrap.cmd: CRLF line ends; every line is one of the forms guestbox emits, each command with its documented syntax only; labels and variables resolved",
    "Cygwin setup: only documented options, -L with -l at the package CD (found by its marker), -R a drive path, -P packages; setup.ini parsed; every package of the closure (Base and requires/depends2) present with its size, SHA-512 and a valid archive",
    "bootstrap.sh: runs in real bash, against stand-ins of ssh-host-config, cygrunsrv, cygpath with their documented options; authorized_keys is exactly the floppy's",
];

/// Errors building the stand-in ISO.
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}); its output ends with:\n{tail}")]
    Command {
        what: String,
        status: String,
        tail: String,
    },
    #[error("building the stand-in ISO needs root (mmdebstrap and chroot create root-owned files and device nodes): run the tests as root")]
    NeedsRoot,
    #[error("`{program}` is not installed; it is needed to {why}: apt-get install {package} (or run scripts/setup --with-tests)")]
    MissingProgram {
        program: &'static str,
        package: &'static str,
        why: &'static str,
    },
    #[error("the stand-in build left no {what} at {path}")]
    Missing { what: &'static str, path: PathBuf },
}

pub(crate) trait IoContext<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T, StandinError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T, StandinError> {
        self.map_err(|source| StandinError::Io {
            context: f(),
            source,
        })
    }
}
