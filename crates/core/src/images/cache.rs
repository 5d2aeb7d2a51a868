//! A content-addressed cache of build artifacts.
//!
//! An artifact is a directory `<kind>-<hash>` where the hash covers every input of its recipe.
//! It is built in a temporary sibling directory and renamed into place only when complete,
//! so a failed or interrupted build registers nothing. A lock file per key makes concurrent
//! builders of the same artifact build it once: the others wait, then reuse it.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host::fs::{BuildDir, FileLock};
use crate::{IoContext, Result};

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
        let json = serde_json::to_vec(inputs).ctx(|| format!("hashing the inputs of {kind}"))?;
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
        let lock_path = self.root.join(format!(".{}.lock", key.dir_name()));
        let lock = FileLock::exclusive(&lock_path).await?;
        if done.is_dir() {
            return Ok(done);
        }
        let tmp = BuildDir::create(&self.root, &key.dir_name())?;
        build(tmp.path().to_path_buf()).await?;
        write_inputs(tmp.path(), inputs)?;
        fs::rename(tmp.path(), &done).ctx(|| format!("registering {}", done.display()))?;
        drop(lock);
        Ok(done)
    }
}

/// Records what an artifact was made from, in the file `gc` reads ([`super::Provenance`]).
pub fn write_inputs(dir: &Path, inputs: &impl Serialize) -> Result<()> {
    let record = serde_json::to_vec_pretty(inputs).ctx(|| "recording an artifact's inputs")?;
    let path = dir.join(INPUTS_FILE);
    fs::write(&path, record).ctx(|| format!("writing {}", path.display()))
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
                Err(crate::Error::Usage("boom".into()))
            })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        let leftovers: Vec<_> = std::fs::read_dir(cache.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
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
        // Nor does a build leave its lock file behind.
        let left: Vec<_> = std::fs::read_dir(cache.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "lock files left: {left:?}");
    }

    #[test]
    fn keys_change_with_inputs() {
        let a = Key::new("k", &("x", 1)).unwrap();
        let b = Key::new("k", &("x", 2)).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, Key::new("k", &("x", 1)).unwrap());
    }
}
