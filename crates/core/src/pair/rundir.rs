//! The directory of one live pair (a bootstrap, a run, a boot check): its sockets, console
//! logs and overlays. Removed when dropped; while it lives its `lock` file is held, so `gc`
//! can tell it from one left behind by a guestbox that was killed.

use std::fs;
use std::path::{Path, PathBuf};

use crate::host::ShortDir;
use crate::{IoContext, Result};

/// The agent's control port, as a socket in the pair's directory.
pub const CONTROL_SOCKET: &str = "control.sock";

pub struct RunDir {
    dir: tempfile::TempDir,
    _lock: fs::File,
}

impl RunDir {
    /// A new directory `<prefix>XXXX` under `runs` (the store's runs directory), locked.
    pub fn create(runs: &Path, prefix: &str) -> Result<RunDir> {
        fs::create_dir_all(runs).ctx(|| format!("creating {}", runs.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(runs)
            .ctx(|| format!("creating a run directory in {}", runs.display()))?;
        let lock_path = dir.path().join("lock");
        let lock =
            fs::File::create(&lock_path).ctx(|| format!("creating {}", lock_path.display()))?;
        lock.lock()
            .ctx(|| format!("locking {}", lock_path.display()))?;
        Ok(RunDir { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Sockets and logs of one pair, in one directory.
#[derive(Debug, Clone)]
pub struct PairSockets {
    /// Where the files are: logs are named by this path.
    pub dir: PathBuf,
    /// Sockets are named through this short handle (see [`ShortDir`]); None: relative to
    /// `dir`, for scripts that run in its parent.
    short: Option<ShortDir>,
}

impl PairSockets {
    /// The pair in `dir`, which must exist and outlive the VMs.
    pub fn new(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            short: Some(ShortDir::open(dir)?),
        })
    }
    /// Sockets named `dir/NAME` as they are, for emitted scripts where `dir` is relative.
    pub fn relative(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            short: None,
        }
    }
    /// What each QEMU of the pair must inherit for the socket paths to work.
    pub fn inherit(&self) -> Option<ShortDir> {
        self.short.clone()
    }
    pub fn socket(&self, name: &str) -> PathBuf {
        match &self.short {
            Some(short) => short.join(name),
            None => self.dir.join(name),
        }
    }
    pub fn guest_link(&self) -> PathBuf {
        self.socket("link-guest.sock")
    }
    pub fn controller_link(&self) -> PathBuf {
        self.socket("link-ctl.sock")
    }
    pub fn control(&self) -> PathBuf {
        self.socket(CONTROL_SOCKET)
    }
    /// A file of the directory by its real path, for messages: sockets are reached through
    /// a short alias that means nothing once guestbox has exited.
    pub fn real(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn qmp(&self, vm: &str) -> PathBuf {
        self.socket(&format!("qmp-{vm}.sock"))
    }
    pub fn console(&self, vm: &str) -> PathBuf {
        self.dir.join(format!("{vm}.console.log"))
    }
}
