//! A content-addressed cache of build artifacts.
//!
//! An artifact is a directory `<kind>-<hash>` where the hash covers every input of its recipe.
//! It is built in a temporary sibling directory and renamed into place only when complete,
//! so a failed or interrupted build registers nothing. A lock file per key makes concurrent
//! builders of the same artifact build it once: the others wait, then reuse it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Error, IoContext, Result};

#[derive(Debug, Clone)]
pub struct ArtifactCache {
    root: PathBuf,
}

/// The stable identity of an artifact: its kind and the hash of its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub kind: String,
    pub hash: String,
}

impl Key {
    pub fn new(kind: &str, inputs: &impl Serialize) -> Result<Self> {
        let json = serde_json::to_vec(inputs)
            .map_err(|e| Error::Other(format!("hashing {kind} inputs: {e}")))?;
        let hash = blake3::hash(&json).to_hex();
        Ok(Self {
            kind: kind.to_string(),
            hash: hash[..24].to_string(),
        })
    }

    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.kind, self.hash)
    }
}

/// Name of the file, inside every finished artifact, that records its inputs.
pub const INPUTS_FILE: &str = "inputs.json";

impl ArtifactCache {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.dir_name())
    }

    /// Returns the artifact for `key`, building it with `build(tmp_dir)` if it is absent.
    /// `build` fills the empty directory it is given; on error the directory is removed.
    pub async fn get_or_build<F, Fut>(
        &self,
        key: &Key,
        inputs: &impl Serialize,
        build: F,
    ) -> Result<PathBuf>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let done = self.path(key);
        if done.is_dir() {
            return Ok(done);
        }
        fs::create_dir_all(&self.root).ctx(|| format!("creating {}", self.root.display()))?;
        let lock = lock_exclusive(&self.root.join(format!(".{}.lock", key.dir_name()))).await?;
        if done.is_dir() {
            return Ok(done);
        }
        let tmp = BuildDir::create(&self.root, &key.dir_name())?;
        build(tmp.path().to_path_buf()).await?;
        let record = serde_json::to_vec_pretty(inputs)
            .map_err(|e| Error::Other(format!("recording inputs: {e}")))?;
        let record_path = tmp.path().join(INPUTS_FILE);
        fs::write(&record_path, record).ctx(|| format!("writing {}", record_path.display()))?;
        fs::rename(tmp.path(), &done).ctx(|| format!("registering {}", done.display()))?;
        drop(lock);
        Ok(done)
    }
}

/// Takes the exclusive lock on `path` (created if absent), waiting on a blocking-safe
/// thread: another guestbox may be building the same thing.
pub async fn lock_exclusive(path: &Path) -> Result<File> {
    let lock = File::create(path).ctx(|| format!("creating {}", path.display()))?;
    tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| Error::Other(format!("waiting for {}: {e}", path.display())))?
        .ctx(|| format!("locking {}", path.display()))
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
            crate::store::make_writable(&self.path);
            remove_build_dir(&self.path);
        }
    }
}

/// Detaches every mount under `dir` (deepest first), then removes it.
pub fn remove_build_dir(dir: &Path) {
    let Ok(canonical) = dir.canonicalize() else {
        return;
    };
    let mut mounts: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(&canonical))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in &mounts {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: plain syscall with a valid C string.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    let still_mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m).starts_with(&canonical));
    if still_mounted {
        tracing::warn!(
            "not removing {}: something is still mounted inside it",
            dir.display()
        );
        return;
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        tracing::warn!("could not remove {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failed_build_registers_nothing_and_success_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().join("images"));
        let key = Key::new("thing", &("a", 1)).unwrap();
        let err = cache
            .get_or_build(&key, &("a", 1), |tmp| async move {
                std::fs::write(tmp.join("half"), b"x").unwrap();
                Err(Error::Other("boom".into()))
            })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        let leftovers: Vec<_> = std::fs::read_dir(cache.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");

        let mut builds = 0;
        for _ in 0..2 {
            let path = cache
                .get_or_build(&key, &("a", 1), |tmp| {
                    builds += 1;
                    async move {
                        std::fs::write(tmp.join("out"), b"ok").ctx(|| "writing")?;
                        Ok(())
                    }
                })
                .await
                .unwrap();
            assert_eq!(std::fs::read(path.join("out")).unwrap(), b"ok");
            assert!(path.join(INPUTS_FILE).is_file());
        }
        assert_eq!(builds, 1);
    }

    #[test]
    fn keys_change_with_inputs() {
        let a = Key::new("k", &("x", 1)).unwrap();
        let b = Key::new("k", &("x", 2)).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, Key::new("k", &("x", 1)).unwrap());
    }
}
