//! Outputs: find what the command left at its output paths, describe it (files, Tree
//! messages for directories, symlinks) and upload what the CAS lacks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::cas::{digest_file, digest_of, key, Cas, Source};
use crate::error::LeaseError;
use crate::proto::re::{
    ActionResult, Command, Digest, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};
use crate::tree::relative_path;

/// The output paths of a command, relative to its working directory.
pub(crate) struct OutputSpec {
    /// REAPI v2.1 `output_paths`: each may turn out a file, a directory or a symlink.
    pub paths: Vec<String>,
    /// REAPI v2.0 `output_files` (Bazel 4 sends these).
    pub files: Vec<String>,
    /// REAPI v2.0 `output_directories`.
    pub directories: Vec<String>,
}

impl OutputSpec {
    pub(crate) fn of(cmd: &Command) -> Self {
        if !cmd.output_paths.is_empty() {
            // v2.1: output_paths supersedes the other two.
            OutputSpec {
                paths: cmd.output_paths.clone(),
                files: Vec::new(),
                directories: Vec::new(),
            }
        } else {
            #[allow(deprecated)]
            OutputSpec {
                paths: Vec::new(),
                files: cmd.output_files.clone(),
                directories: cmd.output_directories.clone(),
            }
        }
    }

    /// Every output path, checked.
    pub(crate) fn all(&self) -> Result<Vec<PathBuf>, LeaseError> {
        self.paths
            .iter()
            .chain(&self.files)
            .chain(&self.directories)
            .map(|p| relative_path(p, "output path"))
            .collect()
    }
}

/// What is at an output path, without following a final symlink.
enum Found {
    Missing,
    File { executable: bool },
    Dir,
    Symlink(String),
}

/// Looks at `rel` under `base`, refusing paths whose parent resolves outside `root`
/// (a symlink made by the command must not make the worker read host files).
async fn look(root: &Path, base: &Path, rel: &Path) -> Result<Found, LeaseError> {
    let full = base.join(rel);
    let parent = full.parent().unwrap_or(base);
    let canon_root = tokio::fs::canonicalize(root)
        .await
        .map_err(|e| LeaseError::io("cannot resolve input root", root, e))?;
    match tokio::fs::canonicalize(parent).await {
        Ok(p) if p.starts_with(&canon_root) => {}
        Ok(_) => {
            return Err(LeaseError::Output(format!(
                "output path {} leads outside the input root through a symlink",
                rel.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(LeaseError::io("cannot resolve output", parent, e)),
    }
    let meta = match tokio::fs::symlink_metadata(&full).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(LeaseError::io("cannot inspect output", &full, e)),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = tokio::fs::read_link(&full)
            .await
            .map_err(|e| LeaseError::io("cannot read output symlink", &full, e))?;
        Ok(Found::Symlink(target.to_string_lossy().into_owned()))
    } else if ft.is_dir() {
        Ok(Found::Dir)
    } else if ft.is_file() {
        Ok(Found::File {
            executable: meta.permissions().mode() & 0o111 != 0,
        })
    } else {
        Err(LeaseError::Output(format!(
            "output path {} is neither a file, a directory nor a symlink",
            rel.display()
        )))
    }
}

/// A directory as a Tree: its root and every distinct Directory below it.
async fn build_tree(dir: &Path, uploads: &mut Vec<(Digest, Source)>) -> Result<Tree, LeaseError> {
    let mut children: Vec<Directory> = Vec::new();
    let root = build_directory(dir, uploads, &mut children).await?;
    Ok(Tree {
        root: Some(root),
        children,
    })
}

/// One Directory message for `dir`, recursing with an explicit stack of pending work
/// would obscure it; trees from commands are shallow enough for boxed recursion.
fn build_directory<'a>(
    dir: &'a Path,
    uploads: &'a mut Vec<(Digest, Source)>,
    children: &'a mut Vec<Directory>,
) -> futures::future::BoxFuture<'a, Result<Directory, LeaseError>> {
    Box::pin(async move {
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| LeaseError::io("cannot list output directory", dir, e))?;
        let mut out = Directory::default();
        let mut names = Vec::new();
        while let Some(e) = entries
            .next_entry()
            .await
            .map_err(|e| LeaseError::io("cannot list output directory", dir, e))?
        {
            names.push(e.file_name());
        }
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let Some(name) = name.to_str().map(str::to_owned) else {
                return Err(LeaseError::Output(format!(
                    "output {} has a name that is not UTF-8",
                    path.display()
                )));
            };
            let meta = tokio::fs::symlink_metadata(&path)
                .await
                .map_err(|e| LeaseError::io("cannot inspect output", &path, e))?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = tokio::fs::read_link(&path)
                    .await
                    .map_err(|e| LeaseError::io("cannot read output symlink", &path, e))?;
                out.symlinks.push(SymlinkNode {
                    name,
                    target: target.to_string_lossy().into_owned(),
                    ..Default::default()
                });
            } else if ft.is_dir() {
                let child = build_directory(&path, uploads, children).await?;
                let digest = digest_of(&child.encode_to_vec());
                if !children
                    .iter()
                    .any(|c| digest_of(&c.encode_to_vec()).hash == digest.hash)
                {
                    children.push(child);
                }
                out.directories.push(DirectoryNode {
                    name,
                    digest: Some(digest),
                });
            } else if ft.is_file() {
                let digest = digest_file(&path).await?;
                uploads.push((digest.clone(), Source::File(path.clone())));
                out.files.push(FileNode {
                    name,
                    digest: Some(digest),
                    is_executable: meta.permissions().mode() & 0o111 != 0,
                    ..Default::default()
                });
            } else {
                tracing::warn!(path = %path.display(), "skipping an output that is neither file, directory nor symlink");
            }
        }
        Ok(out)
    })
}

/// Collects the outputs under `root`/`working_directory` into `result` and uploads
/// them, with stdout and stderr.
pub(crate) async fn collect_and_upload(
    cas: &Cas,
    root: &Path,
    working_directory: &Path,
    spec: &OutputSpec,
    stdout: &Path,
    stderr: &Path,
    result: &mut ActionResult,
) -> Result<(), LeaseError> {
    let base = root.join(working_directory);
    let mut uploads: Vec<(Digest, Source)> = Vec::new();

    for p in &spec.paths {
        let rel = relative_path(p, "output path")?;
        match look(root, &base, &rel).await? {
            Found::Missing => {}
            Found::File { executable } => {
                add_file(&base, p, executable, result, &mut uploads).await?
            }
            Found::Dir => {
                let (od, tree) = output_directory(p, &base.join(&rel), &mut uploads).await?;
                uploads.push(tree);
                result.output_directories.push(od);
            }
            Found::Symlink(target) => result.output_symlinks.push(OutputSymlink {
                path: p.clone(),
                target,
                ..Default::default()
            }),
        }
    }
    for p in &spec.files {
        let rel = relative_path(p, "output file")?;
        match look(root, &base, &rel).await? {
            Found::Missing => {}
            Found::File { executable } => {
                add_file(&base, p, executable, result, &mut uploads).await?
            }
            Found::Dir => {
                return Err(LeaseError::Output(format!(
                    "output file {p} is a directory (declare it as an output directory)"
                )))
            }
            #[allow(deprecated)]
            Found::Symlink(target) => result.output_file_symlinks.push(OutputSymlink {
                path: p.clone(),
                target,
                ..Default::default()
            }),
        }
    }
    for p in &spec.directories {
        let rel = relative_path(p, "output directory")?;
        match look(root, &base, &rel).await? {
            Found::Missing => {}
            Found::File { .. } => {
                return Err(LeaseError::Output(format!(
                    "output directory {p} is a file (declare it as an output file)"
                )))
            }
            Found::Dir => {
                let (od, tree) = output_directory(p, &base.join(&rel), &mut uploads).await?;
                uploads.push(tree);
                result.output_directories.push(od);
            }
            #[allow(deprecated)]
            Found::Symlink(target) => result.output_directory_symlinks.push(OutputSymlink {
                path: p.clone(),
                target,
                ..Default::default()
            }),
        }
    }

    for (path, slot) in [
        (stdout, &mut result.stdout_digest),
        (stderr, &mut result.stderr_digest),
    ] {
        match tokio::fs::symlink_metadata(path).await {
            Ok(m) if m.is_file() => {
                let d = digest_file(path).await?;
                uploads.push((d.clone(), Source::File(path.to_path_buf())));
                *slot = Some(d);
            }
            // The executor never opened it: report an empty stream.
            _ => *slot = Some(digest_of(&[])),
        }
    }

    tracing::debug!(
        blobs = uploads.len(),
        "uploading outputs ({})",
        uploads
            .iter()
            .take(4)
            .map(|(d, _)| key(d))
            .collect::<Vec<_>>()
            .join(", ")
    );
    cas.upload(uploads).await
}

async fn add_file(
    base: &Path,
    rel: &str,
    executable: bool,
    result: &mut ActionResult,
    uploads: &mut Vec<(Digest, Source)>,
) -> Result<(), LeaseError> {
    let path = base.join(rel);
    let digest = digest_file(&path).await?;
    uploads.push((digest.clone(), Source::File(path)));
    result.output_files.push(OutputFile {
        path: rel.to_string(),
        digest: Some(digest),
        is_executable: executable,
        ..Default::default()
    });
    Ok(())
}

async fn output_directory(
    p: &str,
    dir: &Path,
    uploads: &mut Vec<(Digest, Source)>,
) -> Result<(OutputDirectory, (Digest, Source)), LeaseError> {
    let tree = build_tree(dir, uploads).await?;
    let bytes = tree.encode_to_vec();
    let tree_digest = digest_of(&bytes);
    Ok((
        OutputDirectory {
            path: p.to_string(),
            tree_digest: Some(tree_digest.clone()),
            ..Default::default()
        },
        (tree_digest, Source::Bytes(bytes)),
    ))
}
