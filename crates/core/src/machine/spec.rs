//! A typed description of one QEMU machine: every device guestbox uses is a variant here,
//! so the machine of a base can be recorded, compared and tested as data. [`super::argv`]
//! is the one writer that turns it into QEMU's command line.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use super::confine::Confinement;
use crate::host::ShortDir;

/// How QEMU runs the guest's instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// A CPU model a snapshot can be revived on: `host` is migratable by default under KVM
    /// (it drops invtsc); under TCG, qemu64 is what every x86-64 Debian needs.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "qemu64",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Shown in process lists and error messages ("guest", "controller").
    pub name: String,
    pub accel: Accel,
    /// Versioned machine type (e.g. `pc-q35-7.2`), so a snapshot is revived on the same one.
    pub machine: String,
    pub cpu: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub memory: Memory,
    pub boot: Boot,
    pub drives: Vec<Drive>,
    pub nics: Vec<Nic>,
    /// Virtio-serial ports, each a unix socket on the host that QEMU listens on.
    pub ports: Vec<SerialPort>,
    /// Host directories passed to the VM over virtio-9p.
    pub shares: Vec<Share9p>,
    /// Everything the first serial port prints goes to this file.
    pub console_log: PathBuf,
    pub qmp_socket: PathBuf,
    pub rtc: Rtc,
    /// A VM Generation ID device (`vmgenid`): guests reseed their random generators when
    /// it changes, as it does when a snapshot is revived with a fresh one.
    pub generation_id: Option<GenerationId>,
    /// Start paused, waiting for `migrate-incoming` (revive from a snapshot).
    pub incoming: bool,
    /// Firmware, chipset defaults, display, TPM: what a firmware-booted guest (Windows)
    /// has beyond the machine above. Empty for kernel-booted VMs.
    #[serde(default)]
    pub platform: Platform,
    /// A directory QEMU inherits, so that paths through [`ShortDir::join`] work in it.
    #[serde(skip)]
    pub inherit: Option<ShortDir>,
    /// The directory QEMU (and its swtpm) start in: relative paths of the spec are
    /// relative to it (`bootstrap --emit` directories). None: guestbox's own.
    #[serde(skip)]
    pub cwd: Option<PathBuf>,
    /// Its seccomp sandbox and the user it becomes ([`super::confine`]).
    #[serde(default)]
    pub confinement: Confinement,
}

/// What a firmware-booted machine has beyond the basic one: UEFI in flash, `-global`
/// defaults of device classes, a display adapter, a TPM, and whether a guest reboot resets
/// the machine instead of ending QEMU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// UEFI firmware (OVMF) in two flash chips; None: the machine's BIOS (SeaBIOS).
    pub firmware: Option<Pflash>,
    pub globals: Vec<Global>,
    /// A standard VGA card (with `-display none`: for boot loaders that want one, and for
    /// `screendump`).
    pub vga: bool,
    /// A TPM 2.0 (TIS) backed by the swtpm that [`super::tpm`] starts next to QEMU.
    pub tpm: Option<Tpm>,
    /// A guest reboot resets the machine (`-action reboot=reset`, which overrides
    /// `-no-reboot`): Windows Setup reboots several times.
    pub allow_reboot: bool,
}

/// UEFI firmware in two flash chips: the shared code, read-only, and the guest's own
/// variable store, which the guest writes (boot entries, Secure Boot state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pflash {
    pub code: PathBuf,
    pub vars: PathBuf,
    /// Secure Boot build: only SMM may write the flash (the machine needs `smm=on`).
    pub secure_boot: bool,
}

/// The `-global` default of one property of a device class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// An emulated TPM 2.0: swtpm keeps its state in `state_dir` and serves QEMU on `socket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tpm {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// swtpm's log.
    pub log: PathBuf,
}

impl VmSpec {
    /// The descriptors QEMU must inherit at their numbers: the short directory's and the
    /// link's sockets.
    pub fn inherited_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.inherit.iter().map(|d| d.fd()).collect();
        for n in &self.nics {
            if let Link::Socket { socket } = &n.link {
                fds.push(socket.fd());
            }
        }
        fds
    }
}

/// A drive's image opened by guestbox, which QEMU takes instead of its path (`-add-fd`,
/// `file=/dev/fdset/N`): QEMU reopens its disks when it resumes a migrated VM, by which
/// time it may have left root; with the image's descriptors at hand it needs no path, so
/// the run directory can stay closed to it (and to every other QEMU of the same user).
/// Both access modes are in the set: an incoming VM opens its disk read-only first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedDrive {
    pub drive: DriveSlot,
    pub read_write: Descriptor,
    pub read_only: Descriptor,
}

/// Which block device of a spec an [`OpenedDrive`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveSlot {
    /// Index into [`VmSpec::drives`].
    Drive(usize),
    /// The UEFI variable store ([`Pflash::vars`]): a block device QEMU reopens on an
    /// incoming resume like a disk.
    UefiVars,
}

/// A descriptor handed to QEMU at its number (kept open while any spec names it).
/// Recorded as its number; a spec with one cannot be read back from a record.
#[derive(Debug, Clone)]
pub struct Descriptor(Arc<OwnedFd>);

impl Descriptor {
    pub fn new(fd: OwnedFd) -> Self {
        Descriptor(Arc::new(fd))
    }
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl PartialEq for Descriptor {
    fn eq(&self, other: &Self) -> bool {
        self.fd() == other.fd()
    }
}

impl Eq for Descriptor {}

impl Serialize for Descriptor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.fd())
    }
}

impl<'de> Deserialize<'de> for Descriptor {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "a file descriptor cannot be read back from a record",
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Memory {
    /// Ordinary anonymous guest RAM.
    Anonymous,
    /// Guest RAM in a file. `shared` writes go to the file (bootstrap: the file becomes the
    /// snapshot's RAM); private maps it copy-on-write (revive: the base file is never written).
    File {
        path: PathBuf,
        shared: bool,
        /// QEMU >= 8.2 can open the file read-only for a private map; 7.2 cannot.
        readonly: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Boot {
    /// Direct kernel boot (Linux guests and the controller).
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
    /// Firmware boot with a boot order string (`-boot order=...`), e.g. "dc" for CD then disk.
    Firmware { order: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriveInterface {
    VirtioBlk,
    /// SATA disk on the q35 AHCI controller (Windows has no inbox virtio driver).
    Ahci,
    Ide,
    /// A floppy: on the i440FX's own controller, or on an ISA controller of its own (q35
    /// has none).
    Floppy,
    /// A read-only CD-ROM: on the next free AHCI port (q35), on the PIIX secondary channel
    /// (i440FX: the disks have the primary one).
    CdRom,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub interface: DriveInterface,
    pub readonly: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicModel {
    VirtioNet,
    E1000,
    E1000e,
    Rtl8139,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub model: NicModel,
    pub mac: String,
    pub link: Link,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Link {
    /// A point-to-point Ethernet cable made of two unix datagram sockets: frames sent by one
    /// VM arrive at the other and nowhere else. No tap, no bridge, no host port; and since
    /// datagrams need no connection, either end can be stopped and revived independently.
    UnixDgram { local: PathBuf, remote: PathBuf },
    /// One end of a connected datagram socket pair whose other end is the peer VM's: the
    /// same cable without paths, so nothing else on the host can send into it, and it
    /// works after QEMU has left root (a path-based link would then need access to the
    /// peer's socket file).
    Socket { socket: Descriptor },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialPort {
    pub name: String,
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share9p {
    pub tag: String,
    pub path: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum GenerationId {
    /// This GUID (the snapshot's own, to replay it exactly).
    Fixed { guid: String },
    /// A new GUID at every start (`guid=auto`): each revive is a new generation.
    Fresh,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rtc {
    /// `utc`, `localtime` or a fixed start like `2010-01-01` (the seed's choice, for
    /// determinism).
    pub base: String,
    /// `clock=vm`: guest time stands still while the VM is stopped or saved.
    pub vm_clock: bool,
}

impl Default for Rtc {
    fn default() -> Self {
        Rtc {
            base: "utc".into(),
            vm_clock: false,
        }
    }
}
