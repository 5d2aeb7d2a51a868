//! A Windows guest's scripts over SSH, in Cygwin's bash ([`media::windows::run`] writes
//! them): at bootstrap, the controller's share root mapped with `net use` to
//! [`SHARE_DRIVE`] and mounted in Cygwin at [`SHARE_ROOT`], where each volume slot is a
//! directory (`/run/guestbox/share/vol0` ...); per run, each volume at its guest path — a
//! Cygwin path (a bind mount of its slot) or a drive letter (`net use S:` of its slot, as
//! the original mapped `s:`) —, the clock, the working directory, the environment, and the
//! command as a child of the script.
//!
//! Cygwin has no read-only mounts: a read-only volume is read-only because the
//! controller's 9p device for it is.

use link::{net, shares};
use media::windows::run::{Bind, DriveMap, RunSpec, SetupSpec, ShareMount};
use media::windows::Secret;

use super::media_error;
use crate::profile::GuestJob;
use crate::{Error, Result};

/// The drive letter the controller's share root is mapped to at bootstrap.
pub const SHARE_DRIVE: char = 'G';
/// Where Cygwin mounts that drive: every run's directories appear under it.
pub const SHARE_ROOT: &str = link::job::SHARE_MOUNT;
/// Exit status of a run whose setup (mapping, mounting, cd) failed.
pub const SETUP_FAILED_EXIT: i32 = media::windows::run::SETUP_FAILED_EXIT;
/// The remote command that runs the bootstrap script from stdin.
pub const SETUP_COMMAND: &str = "bash -s";

/// Where a volume or the working directory is in a Windows guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestPath {
    /// An absolute Cygwin path other than `/` (`/src`; `C:\src` is `/cygdrive/c/src`).
    Cygwin(String),
    /// A drive letter (upper case), with a path below its root (`S:` → "", `S:\a\b` →
    /// "a/b").
    Drive(char, String),
}

impl GuestPath {
    /// Parses `S:`, `S:\dir`, `S:/dir` or an absolute Cygwin path.
    pub fn parse(p: &str) -> Result<GuestPath> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "guest path {p:?}: {why} (a Windows guest takes an absolute Cygwin path like \
                 /src, or a drive letter like S:)"
            ))
        };
        if p.contains(['\0', '\n']) {
            return Err(bad("it contains a NUL or a newline"));
        }
        let b = p.as_bytes();
        if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
            let rest = &p[2..];
            if !rest.is_empty() && !rest.starts_with(['\\', '/']) {
                return Err(bad("a drive path continues with \\ or /"));
            }
            let rest = rest.replace('\\', "/");
            let rest = rest.trim_matches('/');
            if rest.split('/').any(|c| c == "..") {
                return Err(bad("it contains '..'"));
            }
            return Ok(GuestPath::Drive(
                b[0].to_ascii_uppercase() as char,
                rest.into(),
            ));
        }
        if !p.starts_with('/') {
            return Err(bad("it is not absolute"));
        }
        if p.split('/').any(|c| c == "..") {
            return Err(bad("it contains '..'"));
        }
        Ok(GuestPath::Cygwin(p.into()))
    }

    /// The path as Cygwin names it (`S:\a` is `/cygdrive/s/a`).
    pub fn cygwin(&self) -> String {
        match self {
            GuestPath::Cygwin(p) => p.clone(),
            GuestPath::Drive(d, rest) if rest.is_empty() => {
                format!("/cygdrive/{}", d.to_ascii_lowercase())
            }
            GuestPath::Drive(d, rest) => format!("/cygdrive/{}/{rest}", d.to_ascii_lowercase()),
        }
    }
}

/// A volume's guest path: a Cygwin path, or a whole drive letter from D to Z but
/// [`SHARE_DRIVE`].
pub fn check_volume_path(p: &str) -> Result<GuestPath> {
    let g = GuestPath::parse(p)?;
    if let GuestPath::Cygwin(c) = &g {
        if c.trim_end_matches('/').is_empty() {
            return Err(Error::Usage(format!(
                "guest path {p:?}: a volume cannot be mounted at / (use a path like /src)"
            )));
        }
    }
    if let GuestPath::Drive(d, rest) = &g {
        if !rest.is_empty() {
            return Err(Error::Usage(format!(
                "guest path {p:?}: a volume takes a whole drive ({d}:), not a directory on one"
            )));
        }
        if *d == SHARE_DRIVE {
            return Err(Error::Usage(format!(
                "guest path {p:?}: {SHARE_DRIVE}: holds the controller's share in the guest; \
                 use another letter"
            )));
        }
        if !('D'..='Z').contains(d) {
            return Err(Error::Usage(format!(
                "guest path {p:?}: A: to C: are Windows' own; use a letter from D to Z"
            )));
        }
    }
    Ok(g)
}

/// The bootstrap's script: the share root mapped to [`SHARE_DRIVE`] and mounted at
/// [`SHARE_ROOT`].
pub fn setup_script(smb_password: &str) -> Result<String> {
    media::windows::run::setup_script(&SetupSpec {
        server: net::CONTROLLER_ADDRESS,
        smb_user: shares::SMB_USER.into(),
        smb_password: Secret::new(smb_password),
        shares: vec![ShareMount {
            drive: SHARE_DRIVE,
            share: shares::SMB_SHARE.into(),
            mount_point: SHARE_ROOT.into(),
        }],
    })
    .map_err(media_error)
}

/// The run for a job (see the module documentation).
pub fn run_spec(job: &GuestJob, smb_password: &str) -> Result<RunSpec> {
    if job.argv.is_empty() {
        return Err(Error::Usage("there is no command to run".into()));
    }
    let tags = shares::all_tags();
    let mut spec = RunSpec::new(job.argv.clone());
    spec.server = net::CONTROLLER_ADDRESS;
    spec.smb_user = shares::SMB_USER.into();
    spec.smb_password = Secret::new(smb_password);
    spec.time = job.time;
    let mut seen = Vec::new();
    for m in &job.mounts {
        if !tags.contains(&m.tag) {
            return Err(Error::Usage(format!(
                "share tag {:?} is not one of the controller's ({})",
                m.tag,
                tags.join(", ")
            )));
        }
        let g = check_volume_path(&m.guest_path)?;
        let key = g.cygwin().trim_end_matches('/').to_string();
        if seen.contains(&key) {
            return Err(Error::Usage(format!(
                "guest path {:?} is used twice",
                m.guest_path
            )));
        }
        seen.push(key);
        match g {
            GuestPath::Drive(drive, _) => spec.drives.push(DriveMap {
                drive,
                share: shares::SMB_SHARE.into(),
                dir: m.tag.clone(),
            }),
            GuestPath::Cygwin(target) => spec.binds.push(Bind {
                source: format!("{SHARE_ROOT}/{}", m.tag),
                target,
            }),
        }
    }
    if let Some(dir) = &job.workdir {
        spec.workdir = Some(GuestPath::parse(dir)?.cygwin());
    }
    spec.env = job.env.clone();
    Ok(spec)
}

/// The bash script of one run in a Windows guest (see [`run_spec`]); it exits with the
/// command's status, or [`SETUP_FAILED_EXIT`] if a volume or the directory failed.
pub fn run_script(job: &GuestJob, smb_password: &str) -> Result<String> {
    media::windows::run::run_script(&run_spec(job, smb_password)?).map_err(media_error)
}
