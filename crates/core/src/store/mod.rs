//! The base store: immutable, content-addressed bases under `<data>/bases/<id>`, human
//! aliases under `<data>/bases/names/<name>` (symlinks), run directories under
//! `<data>/runs`, and what failed Windows stages leave for the user (console, screenshot)
//! under `<data>/failures` until `gc`.
//!
//! A base is built in `bases/.tmp-*` and renamed into place only when complete. Runs hold
//! a shared lock on the base's manifest for their whole life; `rm` takes the exclusive lock
//! without waiting, so a base in use is never removed.

pub mod gc;
pub mod import;
pub mod manifest;
pub mod origin;
pub mod verify;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::host::fs::make_writable;
use crate::host::Dirs;
use crate::{Error, IoContext, Result};
pub use manifest::{files, FileSum, Manifest, Secrets, BASE_FORMAT, MANIFEST, SECRETS};
pub use origin::{Origin, ORIGIN};
pub use verify::{agent_id, checksum, quick_check, verify};

#[derive(Debug, Clone)]
pub struct Store {
    pub bases: PathBuf,
    pub runs: PathBuf,
    /// One directory per failed stage, kept for the user until `gc`.
    pub failures: PathBuf,
    /// Rebuildable facts (the host's QEMU, the KVM verdict).
    pub cache: PathBuf,
}

/// A base directory as [`Store::survey`] finds it.
#[derive(Debug)]
pub enum Listed {
    Healthy(Box<Base>),
    /// Its manifest cannot be loaded; `guestbox rm ID` removes it.
    Damaged {
        id: String,
        problem: Error,
    },
}

/// A base found in the store.
#[derive(Debug, Clone)]
pub struct Base {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub names: Vec<String>,
}

impl Base {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn secrets(&self) -> Result<Secrets> {
        let path = self.dir.join(SECRETS);
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::DamagedBase {
            id: self.manifest.id.clone(),
            problem: format!("its secrets file {} does not parse: {e}", path.display()),
        })
    }

    /// Holds the base for a run: `rm` refuses while any such lock exists.
    pub fn lock_shared(&self) -> Result<File> {
        let path = self.dir.join(MANIFEST);
        let f = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        f.lock_shared()
            .ctx(|| format!("locking {}", path.display()))?;
        Ok(f)
    }

    /// Total bytes on disk (sparse files count what they use).
    pub fn disk_usage(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }
}

/// An id as bootstrap makes them (24 lowercase hex digits); at least the 12 that messages
/// show.
pub fn is_base_id(id: &str) -> bool {
    id.len() >= 12 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A name for a base: letters, digits, `.`, `_`, `-`; not starting with `.`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{name:?} is not a valid base name (1-64 of letters, digits, '.', '_', '-', not starting with '.')"
        )))
    }
}

impl Store {
    pub fn new(dirs: &Dirs) -> Self {
        Self {
            bases: dirs.data.join("bases"),
            runs: dirs.data.join("runs"),
            failures: dirs.data.join("failures"),
            cache: dirs.cache.clone(),
        }
    }

    /// A new name under [`Store::failures`] for what stage `stage` leaves (not created:
    /// the stage makes it if it fails).
    pub fn failure_dir(&self, stage: &str) -> Result<PathBuf> {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', "");
        let tail = crate::host::fs::random_hex(3)?;
        Ok(self.failures.join(format!("{stage}-{stamp}-{tail}")))
    }

    pub fn create(&self) -> Result<()> {
        for d in [&self.bases, &self.names_dir(), &self.runs] {
            fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    fn names_dir(&self) -> PathBuf {
        self.bases.join("names")
    }

    pub fn base_dir(&self, id: &str) -> PathBuf {
        self.bases.join(id)
    }

    pub fn load(&self, id: &str) -> Result<Base> {
        let dir = self.base_dir(id);
        let path = dir.join(MANIFEST);
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        let damaged = |why: String| Error::DamagedBase {
            id: id.to_string(),
            problem: format!("its manifest {}: {why}", path.display()),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        if !manifest.seal_holds()? {
            return Err(damaged("its content does not match its seal".into()));
        }
        // The id names the directory (`rm` renames it by the id) and messages cut it to
        // 12 bytes: it must be this directory's name, and look like an id bootstrap makes.
        if manifest.id != id {
            return Err(damaged(format!(
                "it is the manifest of base {:?}",
                manifest.id
            )));
        }
        if !is_base_id(id) {
            return Err(damaged(format!("{id:?} is not a base id (hex digits)")));
        }
        let names = self.names_of(id);
        Ok(Base {
            dir,
            manifest,
            names,
        })
    }

    /// Finds a base by name, full id or unique id prefix.
    pub fn resolve(&self, what: &str) -> Result<Base> {
        let link = self.names_dir().join(what);
        if check_name(what).is_ok() {
            if let Ok(target) = fs::read_link(&link) {
                if let Some(id) = target.file_name().and_then(|n| n.to_str()) {
                    return self.load(id);
                }
            }
        }
        let ids = self.ids()?;
        let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(what)).collect();
        match matches.as_slice() {
            [one] if !what.is_empty() => self.load(one),
            [] | [_] => Err(Error::Usage(format!(
                "no base named {what:?}; `guestbox ls` lists the bases, `guestbox bootstrap` makes one"
            ))),
            many => Err(Error::Usage(format!(
                "{what:?} matches {} bases; give more of the id",
                many.len()
            ))),
        }
    }

    /// Ids of complete bases.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let Ok(entries) = fs::read_dir(&self.bases) else {
            return Ok(ids);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "names" || !e.path().join(MANIFEST).is_file() {
                continue;
            }
            ids.push(name);
        }
        ids.sort();
        Ok(ids)
    }

    pub fn list(&self) -> Result<Vec<Base>> {
        self.ids()?.iter().map(|id| self.load(id)).collect()
    }

    /// Every base directory, healthy or not: one damaged manifest does not hide the others.
    pub fn survey(&self) -> Result<Vec<Listed>> {
        Ok(self
            .ids()?
            .into_iter()
            .map(|id| match self.load(&id) {
                Ok(base) => Listed::Healthy(Box::new(base)),
                Err(problem) => Listed::Damaged { id, problem },
            })
            .collect())
    }

    pub fn names_of(&self, id: &str) -> Vec<String> {
        let mut names = Vec::new();
        for e in fs::read_dir(self.names_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = fs::read_link(e.path()) {
                if target.file_name().and_then(|n| n.to_str()) == Some(id) {
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        names.sort();
        names
    }

    /// Points `name` at base `id` (atomically replacing an older alias).
    pub fn set_name(&self, name: &str, id: &str) -> Result<()> {
        check_name(name)?;
        let dir = self.names_dir();
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("..").join(id), &tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        fs::rename(&tmp, dir.join(name)).ctx(|| format!("naming base {id} {name}"))
    }

    /// Removes a base and its names, unless a run holds it.
    pub fn remove(&self, base: &Base) -> Result<()> {
        self.remove_id(&base.manifest.id)
    }

    /// Removes base `id` by its directory alone, so a base whose manifest is damaged can
    /// go too.
    pub fn remove_id(&self, id: &str) -> Result<()> {
        let dir = self.base_dir(id);
        let path = dir.join(MANIFEST);
        let f = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Usage(format!(
                    "base {id} is in use by a running job; try again when it has finished"
                )))
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).ctx(|| format!("locking {}", path.display()))
            }
        }
        // Move it out of sight first, so a half-removed base is never listed or revived.
        let doomed = self.bases.join(format!(".rm-{id}-{}", std::process::id()));
        fs::rename(&dir, &doomed).ctx(|| format!("removing {}", dir.display()))?;
        for name in self.names_of(id) {
            let _ = fs::remove_file(self.names_dir().join(name));
        }
        make_writable(&doomed);
        fs::remove_dir_all(&doomed).ctx(|| format!("removing {}", doomed.display()))?;
        // The overlay templates made for its disks go with it (best effort: gc would too).
        for t in crate::machine::overlay::stale_templates(
            &self.cache.join(crate::machine::overlay::TEMPLATES_DIR),
        ) {
            let _ = fs::remove_file(t);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["debian", "ci-2024.1", "A_b"] {
            check_name(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
