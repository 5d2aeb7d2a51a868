//! Registering a base made elsewhere (pulled from a registry), as a bootstrap registers
//! one: its sealed manifest checked first, its files filled by the caller into a build
//! directory in the store (`.tmp-<id>-*`, which `gc` removes if the caller dies), every
//! file checked against the manifest's checksums, modes sealed, then renamed into place
//! under the lock bootstrap takes, so a half-made base is never listed or revived.
//!
//! Also the layout of what push and pull keep between attempts (`<data>/registry`), and
//! when `gc` may drop it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::origin::{Origin, ORIGIN};
use super::SECRETS;
use super::{files, is_base_id, verify, Base, Manifest, Secrets, Store, BASE_FORMAT, MANIFEST};
use crate::host::fs::{BuildDir, FileLock};
use crate::host::Dirs;
use crate::machine::qemu;
use crate::{Error, IoContext, Result};

/// The files of a base that travel with its manifest: every file the base needs (for a
/// Windows guest its UEFI variables and its TPM's state, `tpm/...`), and the secrets.
/// Without the secrets a base still revives (its VMs hold the SSH key and SMB password in
/// their frozen memory) but `run --cold` cannot set up its link.
pub fn transported_files(manifest: &Manifest) -> Vec<String> {
    let mut all = manifest.required_files();
    all.push(SECRETS.to_string());
    all
}

/// A file name of a base as a manifest may give it: plain components below the base's
/// directory (`tpm/tpm2-00.permall`), nothing that could reach out of it.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\\', '\0']))
}

/// What push and pull keep between attempts: `registry/push` (the registry client's state:
/// upload sessions to resume, part digests, which repositories hold which blobs) and
/// `registry/pull/<manifest digest>` (blobs downloaded so far).
pub fn registry_state(dirs: &Dirs) -> PathBuf {
    dirs.data.join("registry")
}

pub fn push_state(dirs: &Dirs) -> PathBuf {
    registry_state(dirs).join("push")
}

/// The staging directory of a pull of the manifest `digest` (`sha256:…`).
pub fn pull_staging(dirs: &Dirs, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    registry_state(dirs).join("pull").join(hex)
}

/// The lock a pull holds on its staging directory while it works, so `gc` leaves it be.
pub const STAGING_LOCK: &str = "lock";

/// How long `gc` keeps what an interrupted push or pull left for the next attempt: a week,
/// as long as distribution keeps an unfinished upload session (its `uploadpurging` age),
/// after which a remembered session names nothing.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Newest modification time of `path` and its direct entries.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let own = fs::metadata(path).and_then(|m| m.modified()).ok();
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .chain(own)
        .max()
}

fn older_than(t: Option<SystemTime>, age: Duration, now: SystemTime) -> bool {
    t.and_then(|t| now.duration_since(t).ok())
        .is_some_and(|a| a > age)
}

/// What `gc` may remove of the registry state at `now`: pull staging directories nobody
/// holds that saw no write for [`STALE_AFTER`], and remembered upload sessions as old.
/// The part-digest and known-blob records stay: they are small, and only save work.
pub fn stale_registry_state(dirs: &Dirs, now: SystemTime) -> Vec<PathBuf> {
    let mut stale = Vec::new();
    let pulls = registry_state(dirs).join("pull");
    for e in fs::read_dir(&pulls).into_iter().flatten().flatten() {
        let dir = e.path();
        let lock = dir.join(STAGING_LOCK);
        // Held: a pull is working there. Taking it (and dropping it at once) is harmless:
        // a pull that waits on it starts over on a fresh lock file.
        let held = lock.exists() && matches!(FileLock::try_exclusive(&lock), Ok(None));
        if !held && older_than(newest_mtime(&dir), STALE_AFTER, now) {
            stale.push(dir);
        }
    }
    let uploads = push_state(dirs).join("uploads");
    for e in fs::read_dir(&uploads).into_iter().flatten().flatten() {
        let t = e.metadata().and_then(|m| m.modified()).ok();
        if older_than(t, STALE_AFTER, now) {
            stale.push(e.path());
        }
    }
    stale
}

fn bad(id: &str, problem: String) -> Error {
    Error::BadImport {
        id: id[..12.min(id.len())].to_string(),
        problem,
    }
}

/// The sealed manifest of a base from elsewhere, checked as far as it can be alone: it
/// parses, its seal holds, its id is one bootstrap makes, its format is this guestbox's.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        bad(
            "(unknown)",
            format!("its manifest is not JSON ({e}): not a guestbox base, or a damaged one"),
        )
    })?;
    let id = value["id"].as_str().unwrap_or("(unknown)").to_string();
    match value["format"].as_u64() {
        Some(f) if f == u64::from(BASE_FORMAT) => {}
        Some(f) if f > u64::from(BASE_FORMAT) => {
            return Err(Error::Usage(format!(
                "base {id} has base format {f}, made by a newer guestbox than this one \
                 (format {BASE_FORMAT}): update guestbox to pull it"
            )))
        }
        other => {
            return Err(Error::Usage(format!(
                "base {id} has base format {}, which this guestbox (format {BASE_FORMAT}) \
                 cannot take: bootstrap it again with a current guestbox and push that",
                other.map_or("(none)".to_string(), |f| f.to_string())
            )))
        }
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| bad(&id, format!("its manifest does not parse ({e})")))?;
    if manifest.seal.is_none() || !manifest.seal_holds()? {
        return Err(bad(
            &id,
            "its manifest does not match its seal (changed after it was made)".into(),
        ));
    }
    if !is_base_id(&manifest.id) {
        return Err(bad(&id, format!("{:?} is not a base id", manifest.id)));
    }
    if let Some(name) = manifest.files.keys().find(|n| !safe_name(n)) {
        return Err(bad(
            &id,
            format!("it names a file {name:?} outside the base's directory"),
        ));
    }
    Ok(manifest)
}

/// What [`Store::begin_import`] found.
pub enum Begun {
    /// A base with this id is in the store already (the same base, or another bootstrap of
    /// the same inputs: see [`Base::manifest`]'s seal).
    Present(Box<Base>),
    /// Fill [`Import::dir`], then [`check`] and [`Import::register`].
    Started(Box<Import>),
}

/// A base being registered. Dropped before [`Import::register`], it leaves nothing (its
/// build directory is removed; a killed process leaves it to `gc`).
pub struct Import {
    store: Store,
    manifest: Manifest,
    bytes: Vec<u8>,
    // Removed before the lock is released (fields drop in order).
    dir: BuildDir,
    _lock: FileLock,
}

impl Store {
    /// Starts registering the base whose sealed manifest is `manifest_bytes`: the same lock
    /// as a bootstrap of that id, then a build directory for its files.
    pub async fn begin_import(&self, manifest_bytes: &[u8]) -> Result<Begun> {
        let manifest = parse_manifest(manifest_bytes)?;
        self.create()?;
        let id = manifest.id.clone();
        let present = |s: &Store| s.base_dir(&id).join(MANIFEST).is_file();
        if present(self) {
            return Ok(Begun::Present(Box::new(self.load(&id)?)));
        }
        let lock = FileLock::exclusive(&self.bases.join(format!(".{id}.lock"))).await?;
        if present(self) {
            drop(lock);
            return Ok(Begun::Present(Box::new(self.load(&id)?)));
        }
        let dir = BuildDir::create(&self.bases, &id)?;
        Ok(Begun::Started(Box::new(Import {
            store: self.clone(),
            manifest,
            bytes: manifest_bytes.to_vec(),
            dir,
            _lock: lock,
        })))
    }
}

impl Import {
    /// Where the base's files go (each of [`transported_files`], nothing else).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Writes the manifest byte for byte and the origin, seals the modes as bootstrap does
    /// and renames the base into place. Call [`check`] on [`Import::dir`] first.
    pub fn register(self, origin: &Origin) -> Result<Base> {
        let dir = self.dir.path();
        let id = self.manifest.id.clone();
        fs::write(dir.join(MANIFEST), &self.bytes).ctx(|| "writing the pulled manifest")?;
        let json =
            serde_json::to_vec_pretty(origin).ctx(|| "recording where the base came from")?;
        fs::write(dir.join(ORIGIN), json).ctx(|| "recording where the base came from")?;
        seal(dir, ram_mode(&self.store, self.manifest.qemu_version))?;
        fs::rename(dir, self.store.base_dir(&id)).ctx(|| format!("registering base {id}"))?;
        let store = self.store.clone();
        drop(self);
        store.load(&id)
    }
}

/// Checks the files in `dir` against `manifest`: exactly [`transported_files`], regular
/// files, the secrets well-formed, every checksummed file matching its size and blake3.
/// Reads every byte: run it off the async threads.
pub fn check(dir: &Path, manifest: &Manifest) -> Result<()> {
    let id = &manifest.id;
    let expected = transported_files(manifest);
    let mut found = Vec::new();
    // The base's directory and its subdirectories (a TPM's state), as names like the
    // manifest's.
    let mut dirs = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = dirs.pop() {
        for e in fs::read_dir(&d).ctx(|| format!("reading {}", d.display()))? {
            let e = e.ctx(|| format!("reading {}", d.display()))?;
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            let kind = e.file_type().ctx(|| format!("reading {}", d.display()))?;
            if kind.is_dir() && expected.iter().any(|x| x.starts_with(&format!("{name}/"))) {
                dirs.push((e.path(), format!("{name}/")));
                continue;
            }
            if !expected.contains(&name) {
                return Err(bad(
                    id,
                    format!("it carries a file a base has not: {name:?}"),
                ));
            }
            if !kind.is_file() {
                return Err(bad(id, format!("{name} is not a regular file")));
            }
            found.push(name);
        }
    }
    if let Some(missing) = expected.iter().find(|n| !found.contains(n)) {
        return Err(bad(id, format!("it lacks {missing}")));
    }
    let secrets = fs::read(dir.join(SECRETS)).ctx(|| "reading the pulled secrets")?;
    if serde_json::from_slice::<Secrets>(&secrets).is_err() {
        return Err(bad(id, format!("its {SECRETS} does not parse")));
    }
    // What the base needs is `expected` but the secrets, which no manifest checksums.
    for name in expected.iter().filter(|n| *n != SECRETS) {
        if !manifest.files.contains_key(name) {
            return Err(bad(id, format!("its manifest has no checksum of {name}")));
        }
    }
    let base = Base {
        dir: dir.to_path_buf(),
        manifest: manifest.clone(),
        names: Vec::new(),
    };
    let problems = verify(&base)?;
    if !problems.is_empty() {
        return Err(bad(
            id,
            format!(
                "its files differ from its manifest: {}",
                problems.join("; ")
            ),
        ));
    }
    Ok(())
}

/// The mode of a base's RAM files, where QEMU needs them writable. QEMU before 8.2 opens
/// even a private RAM file read-write (it never writes it): in a GUESTBOX_HOME shared by
/// a group (its bases directory group-writable), the group's other users must be able
/// to, or they cannot revive the base.
pub fn ram_mode(store: &Store, qemu_version: qemu::Version) -> Option<u32> {
    (!qemu::private_ram_can_be_readonly(qemu_version)).then(|| {
        let shared = fs::metadata(&store.bases).is_ok_and(|m| m.permissions().mode() & 0o020 != 0);
        if shared {
            0o664
        } else {
            0o644
        }
    })
}

/// Makes every base file read-only (but the RAM files where QEMU needs to open them RW);
/// the secrets owner-only; a directory's files too (its RAM mode aside).
pub fn seal(dir: &Path, ram_mode: Option<u32>) -> Result<()> {
    for e in fs::read_dir(dir)
        .ctx(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            // A Windows guest's TPM state: read-only files in a directory that cannot
            // change.
            seal(&e.path(), None)?;
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o555))
                .ctx(|| format!("sealing {name}"))?;
            continue;
        }
        let mode = if name == SECRETS {
            0o400
        } else if name == files::GUEST_RAM || name == files::CONTROLLER_RAM {
            ram_mode.unwrap_or(0o444)
        } else {
            0o444
        };
        fs::set_permissions(e.path(), fs::Permissions::from_mode(mode))
            .ctx(|| format!("sealing {name}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_rule() {
        let home = tempfile::tempdir().unwrap();
        let dirs = Dirs::under(home.path().to_path_buf());
        let digest = format!("sha256:{}", "0a".repeat(32));
        let staging = pull_staging(&dirs, &digest);
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("x.partial"), b"abc").unwrap();
        let uploads = push_state(&dirs).join("uploads");
        fs::create_dir_all(&uploads).unwrap();
        fs::write(uploads.join("u.json"), b"{}").unwrap();
        let now = SystemTime::now();
        assert!(
            stale_registry_state(&dirs, now).is_empty(),
            "fresh state stays"
        );
        let later = now + STALE_AFTER + Duration::from_secs(60);
        let mut stale = stale_registry_state(&dirs, later);
        stale.sort();
        assert_eq!(stale, vec![staging.clone(), uploads.join("u.json")]);
        // A pull holding the staging directory keeps it, however old.
        let lock = FileLock::exclusive_blocking(&staging.join(STAGING_LOCK)).unwrap();
        assert_eq!(
            stale_registry_state(&dirs, later),
            vec![uploads.join("u.json")]
        );
        drop(lock);
    }

    #[test]
    fn a_manifest_names_files_only_inside_the_base() {
        for good in ["guest.ram", "tpm/tpm2-00.permall", "OVMF_VARS.fd"] {
            assert!(safe_name(good), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "tpm/../../x",
            "tpm//x",
            "./x",
            "a\\b",
        ] {
            assert!(!safe_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn foreign_manifests_are_checked() {
        let err = parse_manifest(b"{\"format\": 9, \"id\": \"abc\"}").unwrap_err();
        assert!(err.to_string().contains("newer guestbox"), "{err}");
        assert_eq!(err.exit_code(), 2);
        let err = parse_manifest(b"not json").unwrap_err();
        assert!(matches!(err, Error::BadImport { .. }), "{err}");
        let err = parse_manifest(b"{\"format\": 3, \"id\": \"abcdefabcdef\"}").unwrap_err();
        assert!(err.to_string().contains("bootstrap it again"), "{err}");
        let current = format!("{{\"format\": {BASE_FORMAT}, \"id\": \"abcdefabcdef\"}}");
        let err = parse_manifest(current.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
    }
}
