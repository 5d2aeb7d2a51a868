//! Guest profiles: what the guest is, as one seam. A profile supplies what differs between
//! guests — its machine (none: the Debian guest the pair describes; or a firmware-booted
//! one), how it becomes ready (a console marker, or SSH answering), the script that mounts
//! (or maps) the controller's share at bootstrap, and the script of one run — and
//! bootstrap and run are the same code for every profile.
//!
//! - [`debian`]: the default Debian guest built from packages.
//! - [`windows`]: Windows guests (`windows`, `windows-xp`): their machine, install media
//!   and stages, and scripts.

pub mod debian;
pub mod windows;

use serde::{Deserialize, Serialize};

use crate::images::GuestRecipe;
use crate::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "profile", rename_all = "kebab-case")]
pub enum Profile {
    Debian(GuestRecipe),
    /// 64-bit Windows 10/11, Server 2016 and later (Autounattend.xml, q35).
    Windows(windows::WindowsProfile),
    /// 32-bit Windows XP / Server 2003 (winnt.sif, i440FX), as in the original.
    WindowsXp(windows::WindowsProfile),
}

/// A directory of the host as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// The 9p tag (= the subdirectory of the share root).
    pub tag: String,
    pub guest_path: String,
    pub readonly: bool,
}

/// What to run, as the guest will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestJob {
    /// Host time to set in the guest first (seconds since the epoch); None keeps the
    /// snapshot's clock.
    pub time: Option<i64>,
    /// Host random bytes (hex) the guest's kernel reseeds from before the command; None
    /// replays the snapshot's randomness.
    pub seed: Option<String>,
    pub mounts: Vec<GuestMount>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub argv: Vec<String>,
    /// The command reads the host's stdin (otherwise nothing).
    pub stdin: bool,
}

impl Profile {
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Debian(_) => "debian",
            Profile::Windows(_) => "windows",
            Profile::WindowsXp(_) => "windows-xp",
        }
    }

    /// The Windows profile and which Windows, if it is one.
    pub fn windows(&self) -> Option<(media::windows::Profile, &windows::WindowsProfile)> {
        match self {
            Profile::Debian(_) => None,
            Profile::Windows(w) => Some((media::windows::Profile::Windows, w)),
            Profile::WindowsXp(w) => Some((media::windows::Profile::WindowsXp, w)),
        }
    }

    /// The user the controller logs in as.
    pub fn guest_user(&self) -> String {
        match self.windows() {
            None => debian::USER.into(),
            Some((kind, w)) => w.ssh_user(kind),
        }
    }

    /// How the controller's share behaves for this guest: Linux guests get a local POSIX
    /// filesystem, Windows guests what SMB gives Windows.
    pub fn share_semantics(&self) -> link::shares::Semantics {
        match self {
            Profile::Debian(_) => debian::SHARE_SEMANTICS,
            Profile::Windows(_) | Profile::WindowsXp(_) => windows::SHARE_SEMANTICS,
        }
    }

    /// The line the guest prints on its console when it is ready; None: it is ready when
    /// its SSH port answers (Windows prints nothing).
    pub fn guest_ready_marker(&self) -> Option<&'static str> {
        match self {
            Profile::Debian(_) => Some(link::markers::GUEST_READY),
            _ => None,
        }
    }

    /// Run once at bootstrap (over SSH, on stdin of [`Profile::guest_setup_command`]):
    /// mount (Linux) or map (Windows) the controller's share root.
    pub fn guest_setup_script(&self, smb_password: &str) -> Result<String> {
        match self {
            Profile::Debian(_) => Ok(debian::setup_script(smb_password)),
            _ => windows::run::setup_script(smb_password),
        }
    }

    /// The remote command that runs the setup script from its stdin.
    pub fn guest_setup_command(&self) -> &'static str {
        match self {
            Profile::Debian(_) => "sh -s",
            _ => windows::run::SETUP_COMMAND,
        }
    }

    /// Whether the guest has a resident job server (the Linux exec helper); without one
    /// every job opens an SSH session of its own.
    pub fn job_server(&self) -> bool {
        matches!(self, Profile::Debian(_))
    }

    /// Whether a failed stage of its bootstrap keeps its console and a screenshot for the
    /// user (under the store's failures): a Windows install or first boot is long, and
    /// says little on its serial port.
    pub fn keeps_failures(&self) -> bool {
        !matches!(self, Profile::Debian(_))
    }

    /// The jobs that settle the guest before it is frozen (see `pair::lifecycle::settle`):
    /// written data on disk and the job path used once; then, last, the kernel's generator
    /// reseeded with `seed` (a Linux guest's; a Windows run has no generator it can seed,
    /// so there the last job only ends the settle).
    pub fn settle_scripts(&self, seed: String) -> Result<crate::pair::lifecycle::Settle> {
        let job = |argv: &[&str], seed| GuestJob {
            time: None,
            seed,
            mounts: vec![],
            env: vec![],
            workdir: None,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            stdin: false,
        };
        Ok(crate::pair::lifecycle::Settle {
            first: self.run_script(&job(&["sh", "-c", "sync"], None), "")?,
            last: self.run_script(&job(&["true"], Some(seed)), "")?,
        })
    }

    /// The remote command line for one job (`smb_password`: the base's, for a Windows
    /// run that maps a drive).
    pub fn run_script(&self, job: &GuestJob, smb_password: &str) -> Result<String> {
        match self {
            Profile::Debian(_) => debian::run_script(job),
            _ => windows::run_script(job, smb_password),
        }
    }

    /// Checks a volume's guest path (`-v HOST:GUEST`) before anything starts.
    pub fn check_volume_path(&self, path: &str) -> Result<()> {
        match self {
            Profile::Debian(_) => debian::check_path("-v", path),
            _ => windows::run::check_volume_path(path).map(|_| ()),
        }
    }

    /// Checks a working directory (`-w DIR`) before anything starts.
    pub fn check_workdir(&self, path: &str) -> Result<()> {
        match self {
            Profile::Debian(_) => debian::check_path("-w", path),
            _ => windows::GuestPath::parse(path).map(|_| ()),
        }
    }
}
