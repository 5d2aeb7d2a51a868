//! Garbage collection: half-made bases and images (left by a guestbox that was killed),
//! and run directories whose run is gone.

use std::fs;
use std::path::Path;

use crate::images::cache::remove_build_dir;
use crate::paths::Dirs;
use crate::store::{make_writable, Store};
use crate::Result;

#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    pub bytes: u64,
}

fn usage(path: &Path) -> u64 {
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

/// True if nobody holds the lock file in `dir` (or there is none): its owner is gone.
fn abandoned(dir: &Path) -> bool {
    match fs::File::open(dir.join("lock")) {
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => true,
    }
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
    for e in fs::read_dir(&store.runs).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() && abandoned(&path) {
            take(&path, &mut report);
        }
    }
    Ok(report)
}
