//! Short paths to deep directories, for unix sockets.
//!
//! A unix socket path is limited to 108 bytes, and `GUESTBOX_HOME` may be as deep as a
//! user likes. So the sockets of a run are named through `/proc/self/fd/N/`, where N is
//! a descriptor of the run's directory that guestbox holds and that every QEMU of the
//! run inherits at the same number: one short path that means the same directory in
//! guestbox and in its children.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{IoContext, Result};

#[derive(Debug, Clone)]
pub struct ShortDir {
    real: PathBuf,
    fd: Arc<OwnedFd>,
}

impl ShortDir {
    pub fn open(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        // O_PATH: a handle to name the directory by, not to read it. Close-on-exec like
        // every descriptor; the children that need it are given it explicitly.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)
            .ctx(|| format!("opening {}", dir.display()))?;
        Ok(Self {
            real: dir.to_path_buf(),
            fd: Arc::new(OwnedFd::from(file)),
        })
    }

    /// `name` in the directory, as a short path valid here and in children that inherit
    /// [`Self::fd`].
    pub fn join(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// The directory's real path, for messages and for files that are not sockets.
    pub fn real(&self) -> &Path {
        &self.real
    }

    /// The real path behind a path made by [`Self::join`] (any other path as it is): what a
    /// message must show, since the short form means nothing outside this process.
    pub fn real_path(&self, path: &Path) -> PathBuf {
        let prefix = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        match path.strip_prefix(&prefix) {
            Ok(rest) => self.real.join(rest),
            Err(_) => path.to_path_buf(),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl PartialEq for ShortDir {
    fn eq(&self, other: &Self) -> bool {
        self.fd() == other.fd()
    }
}

impl Eq for ShortDir {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_deeper_than_the_limit_is_reachable_through_the_short_path() {
        let top = tempfile::tempdir().unwrap();
        let deep = top.path().join("d".repeat(100)).join("e".repeat(100));
        std::fs::create_dir_all(&deep).unwrap();
        assert!(deep.join("s.sock").as_os_str().len() > 108);
        let short = ShortDir::open(&deep).unwrap();
        let path = short.join("s.sock");
        assert!(path.as_os_str().len() < 40, "{}", path.display());
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(deep.join("s.sock").exists(), "bound in the real directory");
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (_server, _) = listener.accept().unwrap();
        assert_eq!(short.real_path(&path), deep.join("s.sock"));
        assert_eq!(short.real_path(Path::new("/x/y")), Path::new("/x/y"));
    }
}
