//! The base store: immutable, content-addressed bases under `<data>/bases/<id>`, human
//! aliases under `<data>/bases/names/<name>` (symlinks), and run directories under
//! `<data>/runs`.
//!
//! A base is built in `bases/.tmp-*` and renamed into place only when complete. Runs hold
//! a shared lock on the base's manifest for their whole life; `rm` takes the exclusive lock
//! without waiting, so a base in use is never removed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pair::PairConfig;
use crate::paths::Dirs;
use crate::{Error, IoContext, Result};

pub const MANIFEST: &str = "manifest.json";
pub const SECRETS: &str = "secrets.json";
/// Bump when the base layout or the way bases are made changes incompatibly.
/// 3: manifests are sealed.
pub const BASE_FORMAT: u32 = 3;

/// Everything needed to revive a base exactly, and to tell whether this host can.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub created: String,
    pub profile: String,
    /// The profile's inputs (packages, disk size ...), as given.
    pub inputs: serde_json::Value,
    pub guestbox_version: String,
    /// blake3 of the controller agent inside the base: the host must speak its protocol.
    #[serde(default)]
    pub agent: String,
    /// `(major, minor, micro)` of the QEMU that made the snapshot.
    pub qemu_version: (u32, u32, u32),
    pub pair: PairConfig,
    pub guest_address: String,
    pub controller_address: String,
    /// The guest's SSH host key (public).
    pub guest_host_key: String,
    /// Installed Debian packages of the guest (`name -> version`), for the record.
    pub guest_packages: BTreeMap<String, String>,
    /// File name -> (size, blake3) of every file of the base.
    pub files: BTreeMap<String, FileSum>,
    /// Seconds the bootstrap took, by stage.
    pub timings: BTreeMap<String, f64>,
    /// blake3 of the manifest without this field: a changed byte anywhere that still
    /// parses is caught on load. None only in bases of format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl Manifest {
    fn digest(&self) -> Result<String> {
        let unsealed = Manifest {
            seal: None,
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&unsealed).map_err(|e| Error::Other(e.to_string()))?;
        Ok(blake3::hash(&bytes).to_hex().to_string())
    }

    /// The manifest with its seal set.
    pub fn sealed(self) -> Result<Self> {
        let seal = Some(self.digest()?);
        Ok(Manifest { seal, ..self })
    }

    fn seal_holds(&self) -> Result<bool> {
        match &self.seal {
            Some(seal) => Ok(*seal == self.digest()?),
            // Format 2 bases were made before seals; from 3 on a missing seal is damage.
            None => Ok(self.format < 3),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub size: u64,
    pub blake3: String,
}

/// Secrets of a base, kept apart from the manifest (which `inspect` prints) in a 0600 file.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub client_key: String,
    pub smb_password: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

/// The files every base has, in the order they are checked.
pub mod files {
    pub const GUEST_DISK: &str = "guest.qcow2";
    pub const CONTROLLER_DISK: &str = "controller.qcow2";
    pub const GUEST_RAM: &str = "guest.ram";
    pub const CONTROLLER_RAM: &str = "controller.ram";
    pub const GUEST_STATE: &str = "guest.state";
    pub const CONTROLLER_STATE: &str = "controller.state";
    pub const KERNEL: &str = "vmlinuz";
    pub const GUEST_INITRD: &str = "guest.initrd";
    pub const CONTROLLER_INITRD: &str = "controller.initrd";
    pub const ALL: &[&str] = &[
        GUEST_DISK,
        CONTROLLER_DISK,
        GUEST_RAM,
        CONTROLLER_RAM,
        GUEST_STATE,
        CONTROLLER_STATE,
        KERNEL,
        GUEST_INITRD,
        CONTROLLER_INITRD,
    ];
}

#[derive(Debug, Clone)]
pub struct Store {
    pub bases: PathBuf,
    pub runs: PathBuf,
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
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Other(format!("{} is damaged: {e}", path.display())))
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
        }
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
        let damaged = |why: String| {
            Error::Other(format!(
                "the manifest of base {id} ({}) is damaged: {why}; remove the base with `guestbox rm {id}`",
                path.display()
            ))
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
        fs::remove_dir_all(&doomed).ctx(|| format!("removing {}", doomed.display()))
    }
}

/// Gives the owner write permission on `dir` and its subdirectories so their entries can be
/// removed. Files are left alone: removing one needs only its directory's permission, and
/// a file may be a hard link shared with a base still in use (or a secret).
pub fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&e.path());
        }
    }
}

/// What `verify` found wrong with a base's files, one line each; empty when intact.
pub fn verify(base: &Base) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for name in files::ALL {
        let path = base.file(name);
        let Some(expected) = base.manifest.files.get(*name) else {
            problems.push(format!("{name}: not in the manifest"));
            continue;
        };
        match checksum(&path) {
            Ok(actual) if &actual == expected => {}
            Ok(actual) if actual.size != expected.size => problems.push(format!(
                "{}: {} bytes, the manifest says {}",
                path.display(),
                actual.size,
                expected.size
            )),
            Ok(_) => problems.push(format!(
                "{}: content differs from the manifest's checksum",
                path.display()
            )),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    Ok(problems)
}

/// The checks a revive can afford before QEMU starts: every file has its recorded size,
/// the disks start like qcow2 files, and the device states (small, and what QEMU would
/// choke on) match their checksums. RAM and disk contents are left to [`verify`].
pub fn quick_check(base: &Base) -> Result<()> {
    let m = &base.manifest;
    let damaged = |path: &Path, why: String| {
        Error::Other(format!(
            "base {} is damaged: {}: {why}. `guestbox verify {}` checks it all; `guestbox rm {}` and bootstrap again",
            short_id(&m.id),
            path.display(),
            short_id(&m.id),
            short_id(&m.id),
        ))
    };
    for name in files::ALL {
        let path = base.file(name);
        let Some(expected) = m.files.get(*name) else {
            return Err(damaged(&path, "not in the manifest".into()));
        };
        match fs::metadata(&path) {
            Ok(md) if md.len() == expected.size => {}
            Ok(md) => {
                return Err(damaged(
                    &path,
                    format!("{} bytes, expected {}", md.len(), expected.size),
                ))
            }
            Err(e) => return Err(damaged(&path, format!("cannot be read ({e})"))),
        }
    }
    for name in [files::GUEST_DISK, files::CONTROLLER_DISK] {
        let path = base.file(name);
        let mut magic = [0u8; 4];
        let read = File::open(&path).and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut magic)
        });
        if read.is_err() || &magic != b"QFI\xfb" {
            return Err(damaged(&path, "not a qcow2 image any more".into()));
        }
    }
    for name in [files::GUEST_STATE, files::CONTROLLER_STATE] {
        let path = base.file(name);
        if m.files.get(name) != Some(&checksum(&path)?) {
            return Err(damaged(&path, "content differs from its checksum".into()));
        }
    }
    Ok(())
}

fn short_id(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// blake3 of this guestbox's agent, as recorded in the bases it makes.
pub fn agent_id() -> String {
    blake3::hash(crate::AGENT).to_hex().to_string()
}

/// blake3 and size of a file, read in large blocks.
pub fn checksum(path: &Path) -> Result<FileSum> {
    let mut hasher = blake3::Hasher::new();
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let size = file
        .metadata()
        .ctx(|| format!("reading {}", path.display()))?
        .len();
    hasher
        .update_reader(file)
        .ctx(|| format!("reading {}", path.display()))?;
    Ok(FileSum {
        size,
        blake3: hasher.finalize().to_hex().to_string(),
    })
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
