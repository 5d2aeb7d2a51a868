//! The directory of one live pair (a bootstrap, a run, a boot check): its sockets, console
//! logs and overlays. Removed when dropped; while it lives its `lock` file is held, so `gc`
//! can tell it from one left behind by a guestbox that was killed.

use std::fs;
use std::path::{Path, PathBuf};

use crate::host::ShortDir;
use crate::machine::spec::{Descriptor, Link};
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
        // Owner-only: its consoles carry the job's output, its overlays the guest's writes;
        // and the QEMUs, which may run as another user, need no path into it (they are
        // handed their disks and sockets).
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
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

/// One VM of the pair, as an end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Guest,
    Controller,
}

/// Sockets and logs of one pair, in one directory.
#[derive(Debug, Clone)]
pub struct PairSockets {
    /// Where the files are: logs are named by this path.
    pub dir: PathBuf,
    /// Sockets are named through this short handle (see [`ShortDir`]); None: relative to
    /// `dir`, for scripts that run in its parent.
    short: Option<ShortDir>,
    /// The link as a connected socket pair (guest's end, controller's end), made by
    /// guestbox for the QEMUs it starts; None: the link by socket paths (emitted scripts).
    link: Option<(Descriptor, Descriptor)>,
}

impl PairSockets {
    /// The pair in `dir`, which must exist and outlive the VMs, with a fresh link.
    pub fn new(dir: &Path) -> Result<Self> {
        let (g, c) = std::os::unix::net::UnixDatagram::pair()
            .ctx(|| "making the private link's socket pair")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            short: Some(ShortDir::open(dir)?),
            link: Some((Descriptor::new(g.into()), Descriptor::new(c.into()))),
        })
    }
    /// Sockets named `dir/NAME` as they are, for emitted scripts where `dir` is relative.
    pub fn relative(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            short: None,
            link: None,
        }
    }
    /// The NIC link of `end`: its end of the socket pair, or the two socket paths.
    pub fn link(&self, end: End) -> Link {
        match (&self.link, end) {
            (Some((g, _)), End::Guest) => Link::Socket { socket: g.clone() },
            (Some((_, c)), End::Controller) => Link::Socket { socket: c.clone() },
            (None, End::Guest) => Link::UnixDgram {
                local: self.guest_link(),
                remote: self.controller_link(),
            },
            (None, End::Controller) => Link::UnixDgram {
                local: self.controller_link(),
                remote: self.guest_link(),
            },
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
