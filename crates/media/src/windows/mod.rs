//! Install media for the `windows` (Vista and later; the CLI: 10/11, Server 2016+) and
//! `windows-xp` (XP/2003, `winnt.sif`) guest profiles.
//!
//! [`WindowsSettings`] holds every choice; [`build_install_media`] turns it
//! and a local Cygwin mirror into a floppy (answer file, bootstrap scripts,
//! the controller's public key) and an offline Cygwin CD. Nothing here
//! starts a process; the only host I/O is reading the mirror, and writing
//! files in [`InstallMedia::write_to_dir`].
//!
//! The guest's bootstrap, once Windows is installed: at first logon it runs
//! `bootstrap.cmd` from the floppy, which opens the firewall to the
//! controller, turns off updates, time sync and sleep, installs Cygwin from
//! the CD (found by its marker file), runs `bootstrap.sh` (authorized key,
//! sshd service), reports on COM1 and powers off.

pub mod run;
pub mod scripts;
pub mod unattend;
pub mod winnt_sif;

use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cygwin::{CygwinArch, CygwinError, CygwinMirror, OfflineRepo};
use crate::floppy::{build_floppy, FloppyError, FloppyFile, FloppyOptions};
use crate::iso9660::{IsoBuilder, IsoError};
use crate::quote::QuoteError;

pub use link::markers::{BOOTSTRAP_FAILED, BOOTSTRAP_OK};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting {field}: {reason}")]
    Setting { field: &'static str, reason: String },
    #[error("setting {field}: {source}")]
    Quote {
        field: &'static str,
        #[source]
        source: QuoteError,
    },
    #[error(transparent)]
    Cygwin(#[from] CygwinError),
    #[error(transparent)]
    Floppy(#[from] FloppyError),
    #[error(transparent)]
    Iso(#[from] IsoError),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn setting(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Setting {
        field,
        reason: reason.into(),
    }
}

/// Attaches the setting's name to a quoting error.
pub(crate) fn quoted<T>(field: &'static str, r: Result<T, QuoteError>) -> Result<T, Error> {
    r.map_err(|source| Error::Quote { field, source })
}

/// Which answer file and conventions the guest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Windows Vista and later, client and server: `Autounattend.xml`. The writer
    /// knows Vista-era vocabulary ([`WindowsGeneration::Legacy`]), but only
    /// 64-bit Windows 10/11 and Server 2016 and later are selectable from the
    /// command line.
    Windows,
    /// Windows XP and Server 2003: `winnt.sif`, as the 2014 original.
    WindowsXp,
}

impl Profile {
    /// The profile's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Windows => "windows",
            Profile::WindowsXp => "windows-xp",
        }
    }

    pub fn from_name(name: &str) -> Option<Profile> {
        match name {
            "windows" => Some(Profile::Windows),
            "windows-xp" => Some(Profile::WindowsXp),
            _ => None,
        }
    }

    /// The answer file's name on the floppy, where Setup looks for it.
    pub fn answer_file_name(self) -> &'static str {
        match self {
            Profile::Windows => "Autounattend.xml",
            Profile::WindowsXp => "winnt.sif",
        }
    }
}

/// A password. Its `Debug` output is redacted so it stays out of logs.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Which image of install.wim to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSelection {
    /// `/IMAGE/INDEX`, 1-based.
    Index(u32),
    /// `/IMAGE/NAME`, e.g. "Windows 11 Pro" or "Windows Server 2022 SERVERSTANDARD".
    Name(String),
}

impl Default for ImageSelection {
    fn default() -> Self {
        ImageSelection::Index(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// MBR disk, one active NTFS partition.
    #[default]
    Bios,
    /// GPT disk: EFI system, MSR and Windows partitions.
    Uefi,
}

/// How Windows 11's hardware checks are met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Win11Requirements {
    /// Setup skips the TPM, Secure Boot, RAM and CPU checks (LabConfig
    /// keys); works on BIOS and on any QEMU CPU model. Ignored by older
    /// Windows.
    #[default]
    Bypass,
    /// The machine has a TPM 2.0 (swtpm) and UEFI with Secure Boot: no
    /// bypass keys. Needs [`Firmware::Uefi`].
    RealTpmUefi,
}

/// Which answer-file vocabulary Setup understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowsGeneration {
    /// Vista, 7, Server 2008 (R2): their Setup rejects the newer OOBE
    /// settings and has no use for Windows 11's LabConfig.
    Legacy,
    /// Windows 8 and later, Server 2012 and later.
    #[default]
    Modern,
}

/// `processorArchitecture` of the answer file's components, which must
/// match the install media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowsArch {
    #[default]
    Amd64,
    X86,
    Arm64,
}

impl WindowsArch {
    pub fn unattend_name(self) -> &'static str {
        match self {
            WindowsArch::Amd64 => "amd64",
            WindowsArch::X86 => "x86",
            WindowsArch::Arm64 => "arm64",
        }
    }
}

/// The private link between guest and controller. No gateway, no DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    pub guest_ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The only host the firewall lets in, and the SMB server.
    pub controller_ip: Ipv4Addr,
    /// The guest NIC's MAC address; the answer file names the interface by
    /// it, so the VM must use the same one.
    pub nic_mac: [u8; 6],
}

impl Default for GuestNetwork {
    fn default() -> Self {
        GuestNetwork {
            guest_ip: link::net::GUEST_ADDRESS,
            prefix_len: link::net::PREFIX_LEN,
            controller_ip: link::net::CONTROLLER_ADDRESS,
            nic_mac: link::net::GUEST_MAC,
        }
    }
}

impl GuestNetwork {
    /// `52:54:00:00:00:01`, as QEMU's `mac=` wants it.
    pub fn mac_colons(&self) -> String {
        self.mac_with(':')
    }

    /// `52-54-00-00-00-01`, as the unattend TCPIP Identifier wants it.
    pub fn mac_dashes(&self) -> String {
        self.mac_with('-')
    }

    fn mac_with(&self, sep: char) -> String {
        self.nic_mac
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(&sep.to_string())
    }

    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    fn validate(&self) -> Result<(), Error> {
        if !(1..=30).contains(&self.prefix_len) {
            return Err(setting("network.prefix_len", "must be between 1 and 30"));
        }
        let mask = u32::from(self.netmask());
        if u32::from(self.guest_ip) & mask != u32::from(self.controller_ip) & mask {
            return Err(setting(
                "network.controller_ip",
                "must be on the guest's subnet (there is no gateway)",
            ));
        }
        if self.guest_ip == self.controller_ip {
            return Err(setting(
                "network.controller_ip",
                "must differ from the guest's address",
            ));
        }
        Ok(())
    }
}

/// Cygwin as the guest gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CygwinSettings {
    /// Windows path of the Cygwin root; no spaces (Cygwin advises against them).
    pub root: String,
    /// Packages beyond Base; their dependencies come along.
    pub packages: Vec<String>,
    pub arch: CygwinArch,
}

impl Default for CygwinSettings {
    fn default() -> Self {
        CygwinSettings {
            root: "C:\\cygwin".to_owned(),
            packages: vec!["openssh".to_owned(), "cygrunsrv".to_owned()],
            arch: CygwinArch::X86_64,
        }
    }
}

impl CygwinSettings {
    fn validate(&self) -> Result<(), Error> {
        let r = self.root.as_bytes();
        let ok = r.len() >= 3
            && r[0].is_ascii_alphabetic()
            && r[1] == b':'
            && r[2] == b'\\'
            && !self.root.ends_with('\\')
            && self.root[3..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '\\' | '_' | '-' | '.'));
        if !ok || self.root.contains("\\\\") {
            return Err(setting(
                "cygwin.root",
                "must be an absolute Windows path like C:\\cygwin, of letters, digits, '_', '-', '.'",
            ));
        }
        for p in &self.packages {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
            {
                return Err(setting(
                    "cygwin.packages",
                    format!("{p:?} is not a Cygwin package name"),
                ));
            }
        }
        if !self.packages.iter().any(|p| p == "openssh") {
            return Err(setting(
                "cygwin.packages",
                "must include openssh: the controller needs sshd",
            ));
        }
        Ok(())
    }
}

/// The Windows time zone ids `windows-xp` can be given, with the index
/// winnt.sif's `TimeZone` takes (Microsoft's "Time Zone Index Values").
/// XP's Setup knows no ids, only these numbers; the list is short on purpose:
/// only indexes we are sure of. "UTC" is Greenwich Standard Time (90): GMT
/// without daylight saving, the nearest XP has.
pub const XP_TIME_ZONES: &[(&str, u16)] = &[
    ("UTC", 90),
    ("Greenwich Standard Time", 90),
    ("GMT Standard Time", 85),
    ("W. Europe Standard Time", 110),
    ("Eastern Standard Time", 35),
    ("Central Standard Time", 20),
    ("Mountain Standard Time", 10),
    ("Pacific Standard Time", 4),
    ("China Standard Time", 210),
    ("Tokyo Standard Time", 235),
];

/// The locales `windows-xp` can be given: language tag, LCID for
/// winnt.sif's `Language`, and the language group Setup must install for it
/// (1: Western Europe and US, 7: Japanese).
pub const XP_LANGUAGES: &[(&str, u16, u8)] = &[
    ("en-US", 0x0409, 1),
    ("en-GB", 0x0809, 1),
    ("de-DE", 0x0407, 1),
    ("fr-FR", 0x040c, 1),
    ("es-ES", 0x0c0a, 1),
    ("it-IT", 0x0410, 1),
    ("nl-NL", 0x0413, 1),
    ("ja-JP", 0x0411, 7),
];

/// XP's `TimeZone` index for a Windows time zone id (case-insensitive).
pub fn xp_time_zone(id: &str) -> Option<u16> {
    let id = id.trim();
    XP_TIME_ZONES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(id))
        .map(|&(_, index)| index)
}

/// XP's LCID and language group for a language tag (case-insensitive).
pub fn xp_language(tag: &str) -> Option<(u16, u8)> {
    let tag = tag.trim();
    XP_LANGUAGES
        .iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(tag))
        .map(|&(_, lcid, group)| (lcid, group))
}

/// "a, b, c": the names a setting accepts, for error messages.
pub fn xp_time_zone_names() -> String {
    XP_TIME_ZONES
        .iter()
        .map(|(n, _)| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn xp_language_names() -> String {
    XP_LANGUAGES
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything that decides the install media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsSettings {
    pub profile: Profile,
    pub generation: WindowsGeneration,
    pub arch: WindowsArch,
    pub firmware: Firmware,
    pub win11: Win11Requirements,
    pub image: ImageSelection,
    /// XXXXX-XXXXX-XXXXX-XXXXX-XXXXX. Needed for XP; for newer Windows only
    /// if the media asks for one.
    pub product_key: Option<String>,
    /// The local administrator that logs on once and that SSH logs in as.
    /// `windows-xp` always uses the built-in Administrator.
    pub user: String,
    /// That account's password (and the built-in Administrator's). Written
    /// into the answer file only.
    pub password: Secret,
    pub full_name: String,
    pub organization: String,
    /// NetBIOS name: up to 15 letters, digits and '-'.
    pub computer_name: String,
    /// Language tag for UI, system and user locale.
    pub locale: String,
    /// Input locale, e.g. "0409:00000409" (US keyboard).
    pub keyboard: String,
    /// Windows time zone id, e.g. "UTC" or "W. Europe Standard Time". For
    /// `windows-xp` one of [`XP_TIME_ZONES`], written as its index.
    pub timezone: String,
    pub network: GuestNetwork,
    pub cygwin: CygwinSettings,
    /// The controller's SSH public key, one `authorized_keys` line.
    pub authorized_key: String,
}

impl WindowsSettings {
    /// Defaults for everything but what only the caller can know.
    pub fn new(profile: Profile, password: Secret, authorized_key: impl Into<String>) -> Self {
        let (arch, cygwin_arch) = match profile {
            Profile::Windows => (WindowsArch::Amd64, CygwinArch::X86_64),
            Profile::WindowsXp => (WindowsArch::X86, CygwinArch::X86),
        };
        WindowsSettings {
            profile,
            generation: WindowsGeneration::Modern,
            arch,
            firmware: Firmware::Bios,
            win11: Win11Requirements::Bypass,
            image: ImageSelection::default(),
            product_key: None,
            user: "guestbox".to_owned(),
            password,
            full_name: "guestbox".to_owned(),
            organization: String::new(),
            computer_name: "GUESTBOX".to_owned(),
            locale: "en-US".to_owned(),
            keyboard: "0409:00000409".to_owned(),
            timezone: "UTC".to_owned(),
            network: GuestNetwork::default(),
            cygwin: CygwinSettings {
                arch: cygwin_arch,
                ..CygwinSettings::default()
            },
            authorized_key: authorized_key.into().trim().to_owned(),
        }
    }

    /// The account the controller logs in as over SSH.
    pub fn ssh_user(&self) -> &str {
        match self.profile {
            Profile::Windows => &self.user,
            Profile::WindowsXp => "Administrator",
        }
    }

    /// Checks every setting; the writers call it too.
    pub fn validate(&self) -> Result<(), Error> {
        let name = &self.computer_name;
        if name.is_empty()
            || name.len() > 15
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || name.chars().all(|c| c.is_ascii_digit())
            || name.starts_with('-')
        {
            return Err(setting(
                "computer_name",
                "1 to 15 letters, digits and '-', not all digits, not starting with '-'",
            ));
        }
        if self.profile == Profile::Windows {
            let u = &self.user;
            if u.is_empty()
                || u.chars().count() > 20
                || u.ends_with('.')
                || u.chars()
                    .any(|c| c.is_control() || "\"/\\[]:;|=,+*?<>@%".contains(c))
            {
                return Err(setting(
                    "user",
                    "1 to 20 characters, none of \" / \\ [ ] : ; | = , + * ? < > @ %, not ending in '.'",
                ));
            }
            if u.eq_ignore_ascii_case("Administrator") || u.eq_ignore_ascii_case("Guest") {
                return Err(setting("user", "must not be a built-in account"));
            }
        }
        if let Some(key) = &self.product_key {
            let groups: Vec<&str> = key.split('-').collect();
            if groups.len() != 5
                || !groups.iter().all(|g| {
                    g.len() == 5
                        && g.chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                })
            {
                return Err(setting(
                    "product_key",
                    "must look like XXXXX-XXXXX-XXXXX-XXXXX-XXXXX",
                ));
            }
        }
        let tag_ok = |s: &str| {
            let mut parts = s.split('-');
            let first = parts.next().unwrap_or_default();
            (2..=3).contains(&first.len())
                && first.chars().all(|c| c.is_ascii_alphabetic())
                && parts.all(|p| {
                    (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric())
                })
        };
        if !tag_ok(&self.locale) {
            return Err(setting("locale", "must be a language tag like en-US"));
        }
        if self.keyboard.is_empty()
            || !self
                .keyboard
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | ';' | '-' | '{' | '}'))
        {
            return Err(setting("keyboard", "must be like 0409:00000409 or en-US"));
        }
        if self.timezone.trim().is_empty()
            || self.timezone.len() > 64
            || self.timezone.chars().any(|c| c.is_control())
        {
            return Err(setting(
                "timezone",
                "must be a Windows time zone id like UTC",
            ));
        }
        if let ImageSelection::Name(n) = &self.image {
            if n.trim().is_empty() {
                return Err(setting("image", "the image name is empty"));
            }
        }
        if let ImageSelection::Index(0) = self.image {
            return Err(setting("image", "image indexes start at 1"));
        }
        let key = &self.authorized_key;
        let key_type = key.split_whitespace().next().unwrap_or_default();
        if key.contains(['\n', '\r', '\0'])
            || !(key_type.starts_with("ssh-")
                || key_type.starts_with("ecdsa-")
                || key_type.starts_with("sk-"))
            || key.split_whitespace().count() < 2
        {
            return Err(setting(
                "authorized_key",
                "must be one OpenSSH public key line (ssh-ed25519 AAAA... comment)",
            ));
        }
        if self.full_name.trim().is_empty() {
            return Err(setting("full_name", "must not be empty"));
        }
        self.network.validate()?;
        self.cygwin.validate()?;
        match self.profile {
            Profile::Windows => {
                if self.win11 == Win11Requirements::RealTpmUefi && self.firmware != Firmware::Uefi {
                    return Err(setting(
                        "win11",
                        "a real TPM + Secure Boot needs UEFI firmware",
                    ));
                }
            }
            Profile::WindowsXp => {
                if self.firmware != Firmware::Bios {
                    return Err(setting(
                        "firmware",
                        "Windows XP and 2003 boot from BIOS only",
                    ));
                }
                if self.product_key.is_none() {
                    return Err(setting(
                        "product_key",
                        "Windows XP and 2003 Setup stops without one",
                    ));
                }
                if xp_time_zone(&self.timezone).is_none() {
                    return Err(setting(
                        "timezone",
                        format!(
                            "{:?} has no Windows XP time zone index here; use one of {}",
                            self.timezone,
                            xp_time_zone_names()
                        ),
                    ));
                }
                if xp_language(&self.locale).is_none() {
                    return Err(setting(
                        "locale",
                        format!(
                            "{:?} has no Windows XP language id here; use one of {}",
                            self.locale,
                            xp_language_names()
                        ),
                    ));
                }
                if self.password.expose().chars().count() > 127 {
                    return Err(setting(
                        "password",
                        "winnt.sif allows at most 127 characters",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A file of the install media, by its name on the media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFile {
    pub name: String,
    pub data: Vec<u8>,
}

/// Every install medium for one profile, in memory except the CD, which
/// is written from the mirror on demand.
#[derive(Debug, Clone)]
pub struct InstallMedia {
    pub profile: Profile,
    /// `Autounattend.xml` or `winnt.sif`. Holds the password.
    pub answer_file: MediaFile,
    /// `bootstrap.cmd`, `bootstrap.sh` and `authorized_keys`; on the
    /// floppy and at the CD root.
    pub scripts: Vec<MediaFile>,
    /// The 1.44 MB FAT12 floppy image: answer file plus scripts.
    pub floppy: Vec<u8>,
    /// The offline Cygwin CD; `write` or `to_vec` produce the ISO.
    pub cygwin_cd: IsoBuilder,
    /// What the CD holds, verified.
    pub repo: OfflineRepo,
    /// The account SSH logs in as.
    pub ssh_user: String,
}

/// Where [`InstallMedia::write_to_dir`] put things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedMedia {
    pub floppy: PathBuf,
    pub cygwin_iso: PathBuf,
    pub answer_file: PathBuf,
    pub scripts: Vec<PathBuf>,
}

pub const FLOPPY_FILE: &str = "floppy.img";
pub const CYGWIN_ISO_FILE: &str = "cygwin.iso";

/// The answer file for the settings' profile.
pub fn answer_file(settings: &WindowsSettings) -> Result<MediaFile, Error> {
    let text = match settings.profile {
        Profile::Windows => unattend::autounattend_xml(settings)?,
        Profile::WindowsXp => winnt_sif::winnt_sif(settings)?,
    };
    Ok(MediaFile {
        name: settings.profile.answer_file_name().to_owned(),
        data: text.into_bytes(),
    })
}

/// The floppy image: answer file plus `scripts`.
pub fn floppy_image(answer: &MediaFile, scripts: &[MediaFile]) -> Result<Vec<u8>, Error> {
    let files: Vec<FloppyFile> = std::iter::once(answer)
        .chain(scripts)
        .map(|f| FloppyFile::new(f.name.clone(), f.data.clone()))
        .collect();
    Ok(build_floppy(&files, &FloppyOptions::default())?)
}

/// Verifies the mirror and lays out the Cygwin CD, scripts at its root.
pub fn cygwin_cd(
    settings: &WindowsSettings,
    mirror: &CygwinMirror,
    scripts: &[MediaFile],
) -> Result<(OfflineRepo, IsoBuilder), Error> {
    if mirror.arch != settings.cygwin.arch {
        return Err(setting(
            "cygwin.arch",
            format!(
                "the mirror is for {} but the settings want {}",
                mirror.arch.dir(),
                settings.cygwin.arch.dir()
            ),
        ));
    }
    let repo = mirror.resolve(&settings.cygwin.packages)?;
    let extra: Vec<(String, Vec<u8>)> = scripts
        .iter()
        .map(|s| (s.name.clone(), s.data.clone()))
        .collect();
    let iso = repo.iso(&extra)?;
    Ok((repo, iso))
}

/// Everything the profile needs to install a guest.
pub fn build_install_media(
    settings: &WindowsSettings,
    mirror: &CygwinMirror,
) -> Result<InstallMedia, Error> {
    settings.validate()?;
    let answer = answer_file(settings)?;
    let scripts = scripts::bootstrap_files(settings)?;
    let floppy = floppy_image(&answer, &scripts)?;
    let (repo, iso) = cygwin_cd(settings, mirror, &scripts)?;
    Ok(InstallMedia {
        profile: settings.profile,
        answer_file: answer,
        scripts,
        floppy,
        cygwin_cd: iso,
        repo,
        ssh_user: settings.ssh_user().to_owned(),
    })
}

/// Creates `path` readable by the owner only when it holds a secret.
fn write_file(
    path: &Path,
    secret: bool,
    write: impl FnOnce(&mut std::fs::File) -> Result<(), Error>,
) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let _ = secret;
    let mut file = opts.open(path).map_err(io)?;
    write(&mut file)?;
    file.flush().map_err(io)?;
    Ok(())
}

impl InstallMedia {
    /// Writes the floppy image, the ISO, the answer file and every script
    /// into `dir` (created if missing), as `guestbox bootstrap --emit` does.
    pub fn write_to_dir(&self, dir: &Path) -> Result<EmittedMedia, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let put = |name: &str, data: &[u8], secret: bool| -> Result<PathBuf, Error> {
            let path = dir.join(name);
            write_file(&path, secret, |f| {
                f.write_all(data).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })
            })?;
            Ok(path)
        };
        let floppy = put(FLOPPY_FILE, &self.floppy, true)?;
        let answer_file = put(&self.answer_file.name, &self.answer_file.data, true)?;
        let scripts = self
            .scripts
            .iter()
            .map(|s| put(&s.name, &s.data, false))
            .collect::<Result<Vec<_>, _>>()?;
        let cygwin_iso = dir.join(CYGWIN_ISO_FILE);
        write_file(&cygwin_iso, false, |f| {
            let mut w = std::io::BufWriter::new(f);
            self.cygwin_cd.write(&mut w)?;
            w.flush().map_err(|source| Error::Io {
                path: cygwin_iso.clone(),
                source,
            })
        })?;
        Ok(EmittedMedia {
            floppy,
            cygwin_iso,
            answer_file,
            scripts,
        })
    }
}
