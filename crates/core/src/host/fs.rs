//! File-system helpers: lock files that do not pile up, build directories that never leave
//! a half-made artifact (nor walk into a mount), sealed trees made removable, owner-only
//! files, random names.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, IoContext, Result};

/// An exclusive lock on a lock file, which it removes when dropped.
///
/// Lock files are removed while locked, so each waiter must check, once it holds the lock,
/// that the path still names the file it locked; if not (the holder removed it, or `gc`
/// did), it starts over on a fresh file. That way a lock file exists only while someone
/// holds or waits for it.
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
    file: Option<File>,
}

impl FileLock {
    /// Takes the lock on `path` (created if absent), waiting on a blocking-safe thread:
    /// another guestbox may be building the same thing.
    pub async fn exclusive(path: &Path) -> Result<FileLock> {
        let owned = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::exclusive_blocking(&owned))
            .await
            .map_err(|e| Error::Io {
                context: format!("waiting for the lock {}", path.display()),
                source: std::io::Error::other(e),
            })?
    }

    pub fn exclusive_blocking(path: &Path) -> Result<FileLock> {
        loop {
            let file = match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
            {
                // Another user's lock file in a shared GUESTBOX_HOME: flock needs no write.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    File::open(path).map_err(|_| e)
                }
                other => other,
            }
            .ctx(|| format!("creating the lock file {}", path.display()))?;
            file.lock().ctx(|| format!("locking {}", path.display()))?;
            if still_names(path, &file) {
                return Ok(FileLock {
                    path: path.to_path_buf(),
                    file: Some(file),
                });
            }
        }
    }

    /// Takes the lock only if nobody holds it.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>> {
        let file = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => File::open(path).map_err(|_| e),
                _ => Err(e),
            }) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Io {
                    context: format!("opening the lock file {}", path.display()),
                    source: e,
                })
            }
        };
        match file.try_lock() {
            Ok(()) if still_names(path, &file) => Ok(Some(FileLock {
                path: path.to_path_buf(),
                file: Some(file),
            })),
            Ok(()) | Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::Io {
                context: format!("locking {}", path.display()),
                source: e,
            }),
        }
    }
}

fn still_names(path: &Path, file: &File) -> bool {
    match (fs::metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
        _ => false,
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Removed before it is unlocked: a waiter then finds the path gone or new.
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

/// A build directory (`.tmp-<name>-*` in `root`: images and bases alike) that is removed
/// unless it was renamed into place. Tools like mmdebstrap mount /proc and friends inside
/// it; if one is killed mid-build those mounts stay, so they are detached first and removal
/// never walks into a mounted filesystem. Sealed (read-only) files are made writable first.
pub struct BuildDir {
    path: PathBuf,
}

impl BuildDir {
    pub fn create(root: &Path, name: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!(".tmp-{name}-"))
            .tempdir_in(root)
            .ctx(|| format!("creating a build directory in {}", root.display()))?;
        Ok(Self { path: dir.keep() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if self.path.exists() {
            make_writable(&self.path);
            remove_build_dir(&self.path);
        }
    }
}

/// Detaches every mount under `dir` (deepest first), then removes it; leaves it (with a
/// warning) if something stays mounted there.
pub fn remove_build_dir(dir: &Path) {
    let Ok(canonical) = dir.canonicalize() else {
        return;
    };
    for m in sys::mountinfo::mounts_under(&canonical).unwrap_or_default() {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: plain syscall with a valid C string.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    match sys::mountinfo::mounts_under(&canonical) {
        Ok(left) if left.is_empty() => {}
        Ok(left) => {
            tracing::warn!(
                "not removing {}: {} is still mounted inside it",
                dir.display(),
                left[0].display()
            );
            return;
        }
        Err(e) => {
            tracing::warn!(
                "not removing {}: cannot read the mount table: {e}",
                dir.display()
            );
            return;
        }
    }
    make_writable(dir);
    // A tree built without root holds files of subordinate ids: see host::userns.
    if let Err(e) = super::userns::remove_tree(dir) {
        tracing::warn!("could not remove {}: {e}", dir.display());
    }
}

/// Gives the owner write permission on `dir` and its subdirectories so their entries can be
/// removed. Files are left alone: removing one needs only its directory's permission, and
/// a file may be a hard link shared with a base still in use (or a secret).
pub fn make_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&e.path());
        }
    }
}

/// Writes a new file only its owner can read and write (secrets, passwords). With
/// `replace`, an existing file is replaced; otherwise it is an error.
pub fn write_private(path: &Path, content: &[u8], replace: bool) -> Result<()> {
    let mut open = fs::OpenOptions::new();
    open.write(true).mode(0o600);
    if replace {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let mut f = open
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    // An existing file keeps its mode through open(2): make it owner-only first.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .ctx(|| format!("chmod {}", path.display()))?;
    f.write_all(content)
        .ctx(|| format!("writing {}", path.display()))
}

/// Random hex from the kernel's generator.
pub fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .ctx(|| "reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_is_gone_once_released_and_a_waiter_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".x.lock");
        let first = FileLock::exclusive_blocking(&path).unwrap();
        assert!(path.exists());
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        // A waiter opened the file before the holder removed it; it must not keep a lock
        // on the removed inode while a third party locks a new file at the same path.
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || FileLock::exclusive_blocking(&path).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(first);
        let second = waiter.join().unwrap();
        assert!(path.exists(), "the waiter made a fresh lock file");
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        drop(second);
        assert!(!path.exists(), "no lock file once nobody holds it");
    }

    /// Mounts below build directories whose paths hold each byte mountinfo escapes are
    /// detached, and the directories removed, without walking into the mounts. Mounting
    /// needs a mount namespace of its own (and, without root, a user namespace too): the
    /// test runs itself again inside one.
    #[test]
    fn a_mount_below_an_odd_path_is_detached_not_walked_into() {
        const INSIDE: &str = "GUESTBOX_TEST_IN_MOUNT_NAMESPACE";
        if std::env::var_os(INSIDE).is_none() {
            let exe = std::env::current_exe().unwrap();
            let mut unshare = std::process::Command::new("unshare");
            // SAFETY: plain syscall without arguments.
            if unsafe { libc::geteuid() } != 0 {
                unshare.args(["--user", "--map-root-user"]);
            }
            let out = unshare
                .args(["--mount", "--propagation", "private"])
                .arg(exe)
                .args([
                    "--exact",
                    "host::fs::tests::a_mount_below_an_odd_path_is_detached_not_walked_into",
                    "--nocapture",
                ])
                .env(INSIDE, "1")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        for odd in ["a space", "a\ttab", "a\nnewline", "a\\backslash"] {
            let build = root.path().join(format!(".tmp-{odd}"));
            let mount_point = build.join("proc");
            fs::create_dir_all(&mount_point).unwrap();
            let target =
                std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid C strings for the duration of the call.
            let rc = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
            fs::write(mount_point.join("inside"), b"x").unwrap();
            remove_build_dir(&build);
            assert!(!build.exists(), "{odd:?}: the build directory stayed");
            let canonical = root.path().canonicalize().unwrap();
            let left = sys::mountinfo::mounts_under(&canonical).unwrap();
            assert!(left.is_empty(), "{odd:?}: still mounted: {left:?}");
        }
    }

    #[test]
    fn private_files_are_owner_only_even_when_replacing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(write_private(&p, b"x", false).is_err());
        write_private(&p, b"new", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    }
}
