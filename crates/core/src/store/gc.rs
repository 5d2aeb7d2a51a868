//! Garbage collection: half-made bases and images (left by a guestbox that was killed),
//! stale images, run directories whose run is gone, lock files nobody holds, and the
//! console logs and screenshots failed stages kept.

use std::fs;
use std::path::Path;

use crate::host::fs::{make_writable, remove_build_dir, FileLock};
use crate::host::Dirs;
use crate::images::{cache::INPUTS_FILE, debian, DebianSource, Provenance, RECIPE_VERSION};
use crate::store::Store;
use crate::Result;

#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    pub bytes: u64,
}

/// Bytes allocated under `path` (like `du`).
pub fn usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        total += md.blocks() * 512;
        if md.is_dir() {
            stack.extend(
                fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    total
}

/// True if nobody holds the lock file in `dir`: its owner is gone. A directory without
/// one is abandoned only once it is a minute old: its owner may be about to make it.
fn abandoned(dir: &Path) -> bool {
    match fs::File::open(dir.join("lock")) {
        Ok(f) => f.try_lock().is_ok(),
        // Another user's run in a shared GUESTBOX_HOME (run directories are owner-only):
        // not this user's to collect.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => false,
        Err(_) => fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60)),
    }
}

/// The index fingerprint images are built from now (that of the default source, as this
/// environment configures it), if one was ever fetched.
fn current_index(images: &Path) -> Option<String> {
    let pointer = debian::index_pointer(images, &DebianSource::default()).ok()?;
    fs::read_to_string(pointer)
        .ok()
        .map(|s| s.trim().to_string())
}

/// An image made by an older recipe, from a superseded index, for a kernel that is gone, or
/// carrying another agent. One whose inputs do not parse predates [`Provenance`]: stale.
fn image_is_stale(images: &Path, artifact: &Path) -> bool {
    let Ok(text) = fs::read(artifact.join(INPUTS_FILE)) else {
        return false;
    };
    let Ok(p) = serde_json::from_slice::<Provenance>(&text) else {
        return true;
    };
    p.recipe != RECIPE_VERSION
        || p.index
            .is_some_and(|index| current_index(images).is_some_and(|c| c != index))
        || p.kernel.is_some_and(|k| !images.join(k).is_dir())
        || p.agent.is_some_and(|a| a != crate::store::agent_id())
}

pub fn collect(dirs: &Dirs) -> Result<Report> {
    let store = Store::new(dirs);
    let mut report = Report::default();
    let take = |path: &Path, report: &mut Report| {
        report.bytes += usage(path);
        make_writable(path);
        remove_build_dir(path);
        if !path.exists() {
            report.removed.push(path.display().to_string());
        }
    };
    // Half-made bases and images: their builders hold a lock on `.<id>.lock` while they work.
    for root in [&store.bases, &dirs.images()] {
        for e in fs::read_dir(root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name
                .strip_prefix(".tmp-")
                .or_else(|| name.strip_prefix(".rm-"))
            else {
                continue;
            };
            let id = rest.rsplit_once('-').map(|(id, _)| id).unwrap_or(rest);
            let busy = fs::File::open(root.join(format!(".{id}.lock")))
                .map(|f| f.try_lock().is_err())
                .unwrap_or(false);
            if !busy {
                take(&e.path(), &mut report);
            }
        }
    }
    // Lock files nobody holds (a builder removes its own; one killed at the wrong moment
    // cannot). Taking the lock first: a builder that holds it is never disturbed, and one
    // that waits on it starts over on a fresh file (see FileLock).
    for root in [&store.bases, &dirs.images()] {
        for e in fs::read_dir(root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".lock") {
                if let Ok(Some(lock)) = FileLock::try_exclusive(&e.path()) {
                    drop(lock);
                    report.removed.push(e.path().display().to_string());
                }
            }
        }
    }
    // Images superseded by a newer recipe, a newer suite index or a newer agent. Kernels and
    // root disks first, then initramfs images whose kernel is gone.
    for pass in [false, true] {
        for e in fs::read_dir(dirs.images()).into_iter().flatten().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !path.is_dir() || name.starts_with("initrd-") != pass {
                continue;
            }
            if image_is_stale(&dirs.images(), &path) {
                take(&path, &mut report);
            }
        }
    }
    // Overlay templates of backing files that are gone (a removed base).
    for path in crate::machine::overlay::stale_templates(
        &dirs.cache.join(crate::machine::overlay::TEMPLATES_DIR),
    ) {
        report.bytes += usage(&path);
        if fs::remove_file(&path).is_ok() {
            report.removed.push(path.display().to_string());
        }
    }
    for e in fs::read_dir(&store.runs).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() && abandoned(&path) {
            take(&path, &mut report);
        }
    }
    // What failed stages kept for the user: they have read it, or will not.
    for e in fs::read_dir(&store.failures)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = e.path();
        if path.is_dir() {
            take(&path, &mut report);
        }
    }
    // What interrupted pushes and pulls kept for their next attempt, once stale.
    for path in crate::store::import::stale_registry_state(dirs, std::time::SystemTime::now()) {
        if path.is_dir() {
            take(&path, &mut report);
        } else {
            report.bytes += usage(&path);
            if fs::remove_file(&path).is_ok() {
                report.removed.push(path.display().to_string());
            }
        }
    }
    Ok(report)
}
