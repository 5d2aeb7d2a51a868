//! Guest profiles: what the guest is, as one seam. A profile supplies what differs between
//! guests — its user, the script that mounts (or maps) the controller's share at bootstrap,
//! and the script of one run — and bootstrap and run are the same code for every profile.
//!
//! - [`debian`]: the default Debian guest built from packages.
//! - [`windows`]: Windows guests (their machine, install media and stages, and run script).

pub mod debian;
pub mod windows;

use serde::{Deserialize, Serialize};

use crate::images::GuestRecipe;
use crate::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "profile", rename_all = "kebab-case")]
pub enum Profile {
    Debian(GuestRecipe),
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
        }
    }

    /// The user the controller logs in as.
    pub fn guest_user(&self) -> &'static str {
        match self {
            Profile::Debian(_) => debian::USER,
        }
    }

    /// How the controller's share behaves for this guest: Linux guests get a local POSIX
    /// filesystem, Windows guests what SMB gives Windows.
    pub fn share_semantics(&self) -> link::shares::Semantics {
        match self {
            Profile::Debian(_) => debian::SHARE_SEMANTICS,
        }
    }

    /// Run once at bootstrap (over SSH, on stdin): mount the controller's share root.
    pub fn guest_setup_script(&self, smb_password: &str) -> String {
        match self {
            Profile::Debian(_) => debian::setup_script(smb_password),
        }
    }

    /// The jobs that settle the guest before it is frozen (see `pair::lifecycle::settle`):
    /// written data on disk and the job path used once; then, last, the kernel's generator
    /// reseeded with `seed`.
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
            first: self.run_script(&job(&["sh", "-c", "sync"], None))?,
            last: self.run_script(&job(&["true"], Some(seed)))?,
        })
    }

    /// The remote command line for one job.
    pub fn run_script(&self, job: &GuestJob) -> Result<String> {
        match self {
            Profile::Debian(_) => debian::run_script(job),
        }
    }
}
