//! What a push remembers in the caller's state directory between runs: the upload session
//! of each unfinished blob (to resume it), the digests of parts already compressed (so a
//! second push of an unchanged base compresses nothing), and which repositories of which
//! registry hold which blobs (to mount instead of upload).
//!
//! Small JSON files, each replaced whole through a rename so a kill leaves the old or the
//! new one, never half of one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::IoContext;
use crate::Result;

/// An upload session the registry acknowledged up to `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Upload {
    pub registry: String,
    pub repository: String,
    pub digest: String,
    /// Absolute URL of the session, as the registry's last `Location`.
    pub location: String,
    /// Bytes the registry acknowledged.
    pub offset: u64,
}

#[derive(Default)]
pub(crate) struct State {
    dir: Option<PathBuf>,
    /// Part key -> (sha256 digest, compressed size).
    digests: Mutex<BTreeMap<String, (String, u64)>>,
    /// registry -> repository -> digests it holds.
    blobs: Mutex<BTreeMap<String, BTreeMap<String, BTreeSet<String>>>>,
}

const DIGESTS: &str = "part-digests.json";
const BLOBS: &str = "known-blobs.json";
const UPLOADS: &str = "uploads";

fn read_json<T: DeserializeOwned + Default>(path: &Path) -> T {
    // A damaged or foreign file only costs work (recompressing, uploading), never
    // correctness: every digest is checked again by the registry. So start afresh.
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!("ignoring {}: {e}", path.display());
            T::default()
        }),
        Err(_) => T::default(),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|source| crate::Error::Json {
        what: format!("encoding {}", path.display()),
        source,
    })?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, bytes).at("writing", &tmp)?;
    fs::rename(&tmp, path).at("renaming into place", path)
}

impl State {
    pub fn open(dir: Option<&Path>) -> Result<State> {
        let Some(dir) = dir else {
            return Ok(State::default());
        };
        fs::create_dir_all(dir.join(UPLOADS)).at("creating the state directory", dir)?;
        Ok(State {
            dir: Some(dir.to_path_buf()),
            digests: Mutex::new(read_json(&dir.join(DIGESTS))),
            blobs: Mutex::new(read_json(&dir.join(BLOBS))),
        })
    }

    pub fn digest(&self, key: &str) -> Option<(String, u64)> {
        let d = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        d.get(key).cloned()
    }

    pub fn set_digest(&self, key: String, digest: &str, size: u64) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let mut d = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        d.insert(key, (digest.to_string(), size));
        write_json(&dir.join(DIGESTS), &*d)
    }

    pub fn forget_digest(&self, key: &str) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let mut d = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        d.remove(key);
        write_json(&dir.join(DIGESTS), &*d)
    }

    /// Other repositories of `registry` known to hold `digest`.
    pub fn holders(&self, registry: &str, digest: &str, except: &str) -> Vec<String> {
        let b = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        b.get(registry)
            .map(|repos| {
                repos
                    .iter()
                    .filter(|(r, ds)| r.as_str() != except && ds.contains(digest))
                    .map(|(r, _)| r.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every repository of `registry` this state knows of.
    pub fn repositories(&self, registry: &str) -> Vec<String> {
        let b = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        b.get(registry)
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn record_blobs<'a>(
        &self,
        registry: &str,
        repository: &str,
        digests: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let mut b = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        b.entry(registry.to_string())
            .or_default()
            .entry(repository.to_string())
            .or_default()
            .extend(digests.into_iter().map(str::to_string));
        write_json(&dir.join(BLOBS), &*b)
    }

    fn upload_path(&self, registry: &str, repository: &str, digest: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let key = Sha256::digest(format!("{registry}/{repository}@{digest}"));
        Some(dir.join(UPLOADS).join(format!("{key:x}.json")))
    }

    pub fn upload(&self, registry: &str, repository: &str, digest: &str) -> Option<Upload> {
        let path = self.upload_path(registry, repository, digest)?;
        let u: Option<Upload> = read_json(&path);
        u.filter(|u| u.registry == registry && u.repository == repository && u.digest == digest)
    }

    pub fn save_upload(&self, upload: &Upload) -> Result<()> {
        match self.upload_path(&upload.registry, &upload.repository, &upload.digest) {
            Some(path) => write_json(&path, upload),
            None => Ok(()),
        }
    }

    pub fn forget_upload(&self, registry: &str, repository: &str, digest: &str) -> Result<()> {
        match self.upload_path(registry, repository, digest) {
            Some(path) => match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at("removing", path),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(Some(dir.path())).unwrap();
        s.set_digest("k".into(), "sha256:aa", 3).unwrap();
        s.record_blobs("r:1", "a/b", ["sha256:aa"]).unwrap();
        let up = Upload {
            registry: "r:1".into(),
            repository: "a/b".into(),
            digest: "sha256:aa".into(),
            location: "http://r:1/v2/a/b/blobs/uploads/x".into(),
            offset: 4096,
        };
        s.save_upload(&up).unwrap();
        let s = State::open(Some(dir.path())).unwrap();
        assert_eq!(s.digest("k"), Some(("sha256:aa".into(), 3)));
        assert_eq!(s.holders("r:1", "sha256:aa", "c/d"), ["a/b"]);
        assert!(s.holders("r:1", "sha256:aa", "a/b").is_empty());
        assert_eq!(s.upload("r:1", "a/b", "sha256:aa"), Some(up));
        s.forget_upload("r:1", "a/b", "sha256:aa").unwrap();
        assert_eq!(s.upload("r:1", "a/b", "sha256:aa"), None);
        // Without a directory nothing is kept, and nothing fails.
        let none = State::open(None).unwrap();
        none.set_digest("k".into(), "d", 1).unwrap();
        assert_eq!(none.digest("k"), None);
    }
}
