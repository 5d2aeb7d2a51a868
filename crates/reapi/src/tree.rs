//! Input roots: fetch the Directory tree and lay it out on disk. Output paths: check them
//! and make their parent directories.
//!
//! Nothing here follows a symlink: files are created with `O_EXCL`, directories one
//! component at a time, so a symlink in the tree (or made by a command) cannot make the
//! worker write outside the input root.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cas::{key, Cas};
use crate::error::LeaseError;
use crate::proto::re::{Digest, Directory};

/// What was laid out (for logs and execution metadata).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct InputStats {
    pub files: usize,
    pub directories: usize,
    pub symlinks: usize,
    pub bytes: u64,
}

/// A file or directory name from a Directory message: one non-empty component.
fn check_name(name: &str, in_dir: &Path) -> Result<(), LeaseError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(LeaseError::Invalid(format!(
            "the input tree has an invalid name {name:?} in directory {:?}",
            in_dir.display().to_string()
        )));
    }
    Ok(())
}

/// Fetches every Directory under `root` (level by level, in batches).
async fn fetch_directories(
    cas: &Cas,
    root: &Digest,
) -> Result<HashMap<String, Directory>, LeaseError> {
    let mut dirs: HashMap<String, Directory> = HashMap::new();
    let mut level = vec![root.clone()];
    while !level.is_empty() {
        let (small, large): (Vec<Digest>, Vec<Digest>) =
            level.iter().cloned().partition(|d| cas.is_small(d));
        let mut blobs = cas.read_batch(&small).await?;
        for d in &large {
            blobs.insert(d.hash.clone(), cas.read_blob(d).await?);
        }
        let mut next = Vec::new();
        for d in &level {
            if dirs.contains_key(&d.hash) {
                continue;
            }
            let data = blobs
                .get(&d.hash)
                .ok_or_else(|| LeaseError::MissingBlobs(vec![key(d)]))?;
            let dir = <Directory as prost::Message>::decode(data.as_slice()).map_err(|source| {
                LeaseError::Decode {
                    digest: key(d),
                    what: "Directory",
                    source,
                }
            })?;
            for child in &dir.directories {
                let cd = child.digest.clone().ok_or_else(|| {
                    LeaseError::Invalid(format!("directory {:?} has no digest", child.name))
                })?;
                if !dirs.contains_key(&cd.hash) && !next.iter().any(|n: &Digest| n.hash == cd.hash)
                {
                    next.push(cd);
                }
            }
            dirs.insert(d.hash.clone(), dir);
        }
        level = next
            .into_iter()
            .filter(|d| !dirs.contains_key(&d.hash))
            .collect();
    }
    Ok(dirs)
}

struct FileJob {
    path: PathBuf,
    digest: Digest,
    executable: bool,
}

/// Lays out the input root `root_digest` in `dest` (which must exist and be empty).
pub(crate) async fn materialise(
    cas: &Cas,
    root_digest: &Digest,
    dest: &Path,
) -> Result<InputStats, LeaseError> {
    let dirs = fetch_directories(cas, root_digest).await?;
    let mut stats = InputStats::default();
    let mut files: Vec<FileJob> = Vec::new();
    let mut symlinks: Vec<(PathBuf, String)> = Vec::new();
    // Depth-first over the tree; a Directory reached twice (same digest) is laid out twice.
    let mut stack: Vec<(String, PathBuf)> = vec![(root_digest.hash.clone(), dest.to_path_buf())];
    let mut depth_guard = 0usize;
    while let Some((hash, at)) = stack.pop() {
        depth_guard += 1;
        if depth_guard > 10_000_000 {
            return Err(LeaseError::Invalid("the input tree is too large".into()));
        }
        let dir = dirs
            .get(&hash)
            .ok_or_else(|| LeaseError::MissingBlobs(vec![hash.clone()]))?;
        let mut names = HashSet::new();
        for f in &dir.files {
            check_name(&f.name, &at)?;
            if !names.insert(f.name.as_str()) {
                return Err(LeaseError::Invalid(format!(
                    "the input tree names {:?} twice in {}",
                    f.name,
                    at.display()
                )));
            }
            let digest = f.digest.clone().ok_or_else(|| {
                LeaseError::Invalid(format!("input file {:?} has no digest", f.name))
            })?;
            stats.files += 1;
            stats.bytes += digest.size_bytes.max(0) as u64;
            files.push(FileJob {
                path: at.join(&f.name),
                digest,
                executable: f.is_executable,
            });
        }
        for d in &dir.directories {
            check_name(&d.name, &at)?;
            if !names.insert(d.name.as_str()) {
                return Err(LeaseError::Invalid(format!(
                    "the input tree names {:?} twice in {}",
                    d.name,
                    at.display()
                )));
            }
            let path = at.join(&d.name);
            tokio::fs::create_dir(&path)
                .await
                .map_err(|e| LeaseError::io("cannot create input directory", &path, e))?;
            stats.directories += 1;
            let h = d
                .digest
                .as_ref()
                .map(|d| d.hash.clone())
                .unwrap_or_default();
            stack.push((h, path));
        }
        for s in &dir.symlinks {
            check_name(&s.name, &at)?;
            if !names.insert(s.name.as_str()) {
                return Err(LeaseError::Invalid(format!(
                    "the input tree names {:?} twice in {}",
                    s.name,
                    at.display()
                )));
            }
            if s.target.is_empty() {
                return Err(LeaseError::Invalid(format!(
                    "input symlink {:?} has an empty target",
                    s.name
                )));
            }
            stats.symlinks += 1;
            symlinks.push((at.join(&s.name), s.target.clone()));
        }
    }

    // Contents: small blobs in batches, each distinct blob fetched once.
    let small: Vec<Digest> = files
        .iter()
        .filter(|f| cas.is_small(&f.digest))
        .map(|f| f.digest.clone())
        .collect();
    let blobs = cas.read_batch(&small).await?;
    let mut first_copy: HashMap<String, PathBuf> = HashMap::new();
    for f in &files {
        if let Some(data) = blobs.get(&f.digest.hash) {
            write_new(&f.path, data).await?;
        } else if let Some(src) = first_copy.get(&f.digest.hash) {
            copy_new(src, &f.path).await?;
        } else {
            cas.read_to_file(&f.digest, &f.path).await?;
            first_copy.insert(f.digest.hash.clone(), f.path.clone());
        }
        let mode = if f.executable { 0o755 } else { 0o644 };
        tokio::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(|e| LeaseError::io("cannot set mode of input file", &f.path, e))?;
    }
    for (path, target) in symlinks {
        tokio::fs::symlink(&target, &path)
            .await
            .map_err(|e| LeaseError::io("cannot create input symlink", &path, e))?;
    }
    Ok(stats)
}

async fn write_new(path: &Path, data: &[u8]) -> Result<(), LeaseError> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| LeaseError::io("cannot create input file", path, e))?;
    f.write_all(data)
        .await
        .map_err(|e| LeaseError::io("cannot write input file", path, e))?;
    f.flush()
        .await
        .map_err(|e| LeaseError::io("cannot write input file", path, e))
}

async fn copy_new(src: &Path, dst: &Path) -> Result<(), LeaseError> {
    let mut from = tokio::fs::File::open(src)
        .await
        .map_err(|e| LeaseError::io("cannot read input file", src, e))?;
    let mut to = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .await
        .map_err(|e| LeaseError::io("cannot create input file", dst, e))?;
    tokio::io::copy(&mut from, &mut to)
        .await
        .map_err(|e| LeaseError::io("cannot write input file", dst, e))?;
    Ok(())
}

/// A relative path of the Command (working directory or output), checked: no root, no
/// `.`/`..`, no empty components. Empty means "the directory itself".
pub(crate) fn relative_path(p: &str, what: &str) -> Result<PathBuf, LeaseError> {
    if p.is_empty() {
        return Ok(PathBuf::new());
    }
    // Split by hand: Path::components would quietly drop "a/./b"'s "." and a trailing "/".
    if p.split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'))
    {
        return Err(LeaseError::Invalid(format!(
            "{what} {p:?} must be a clean relative path (no leading or trailing '/', no '.' or '..')"
        )));
    }
    Ok(PathBuf::from(p))
}

/// Makes directory `rel` under `root`, one component at a time, refusing to pass through
/// anything that is not a real directory (a symlink, a file).
pub(crate) async fn make_dirs_under(root: &Path, rel: &Path) -> Result<(), LeaseError> {
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match tokio::fs::symlink_metadata(&at).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(LeaseError::Invalid(format!(
                    "{} is in the way of an output or working directory: it is not a directory",
                    at.strip_prefix(root).unwrap_or(&at).display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::create_dir(&at)
                    .await
                    .map_err(|e| LeaseError::io("cannot create directory", &at, e))?;
            }
            Err(e) => return Err(LeaseError::io("cannot inspect", &at, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path("", "p").ok(), Some(PathBuf::new()));
        assert_eq!(relative_path("a/b", "p").ok(), Some(PathBuf::from("a/b")));
        for bad in [
            "/abs", "../up", "a/../b", "./a", "a//b", "a/./b", "a/", "a\0b",
        ] {
            assert!(relative_path(bad, "output path").is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        let d = Path::new("d");
        assert!(check_name("ok.txt", d).is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_name(bad, d).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn dirs_are_not_made_through_symlinks() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
        assert!(make_dirs_under(&root, Path::new("link/x")).await.is_err());
        assert!(!outside.join("x").exists());
        make_dirs_under(&root, Path::new("a/b/c"))
            .await
            .expect("plain dirs");
        assert!(root.join("a/b/c").is_dir());
    }
}
