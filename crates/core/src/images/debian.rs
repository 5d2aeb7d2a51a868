//! Running mmdebstrap, Debian's own tool for making a root filesystem from packages.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::DebianSource;
use crate::host::process::{run_tool, supervise, tail_of_text, GroupGuard};
use crate::host::programs;
use crate::host::userns::{remove_tree, Builder};
use crate::progress::Step;
use crate::{Error, IoContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Unpack the named packages only, run no maintainer script (kernel, busybox).
    Extract,
    /// Essential packages + apt, then the named ones, fully installed.
    Minbase,
}

/// Documentation and translations are dropped: the guest needs none of them, and they are a
/// third of a minimal system's size.
const PATH_EXCLUDES: &[&str] = &[
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
];

const APT_HELPER: &str = "/usr/lib/apt/apt-helper";

/// `source` with its index fingerprint: fetched from the mirror (apt's own downloader, which
/// mmdebstrap needs anyway), or, when the mirror cannot be reached, the one the last images
/// of this source were built with, so cached images keep working offline.
pub async fn pin_index(
    cache: &super::cache::ArtifactCache,
    source: &DebianSource,
    progress: &crate::progress::Progress,
) -> Result<DebianSource> {
    let pointer = index_pointer(cache.root(), source)?;
    let mut pinned = source.clone();
    match fetch_index(source).await {
        Ok(fingerprint) => {
            std::fs::create_dir_all(cache.root())
                .ctx(|| format!("creating {}", cache.root().display()))?;
            // A temporary file of its own: two bootstraps at once pin the same index, and
            // with one shared name the second found its file renamed away by the first.
            let mut tmp = tempfile::NamedTempFile::new_in(cache.root())
                .ctx(|| format!("creating a file in {}", cache.root().display()))?;
            std::io::Write::write_all(&mut tmp, fingerprint.as_bytes())
                .ctx(|| format!("writing {}", tmp.path().display()))?;
            tmp.persist(&pointer)
                .map_err(|e| e.error)
                .ctx(|| format!("writing {}", pointer.display()))?;
            pinned.index = Some(fingerprint);
        }
        Err(e) => match std::fs::read_to_string(&pointer) {
            Ok(fingerprint) => {
                progress.note(&format!(
                    "cannot reach {} ({e}); using the images built from its last known index",
                    source.mirror
                ));
                pinned.index = Some(fingerprint.trim().to_string());
            }
            Err(_) => {
                return Err(Error::Mirror {
                    mirror: source.mirror.clone(),
                    source: Box::new(e),
                })
            }
        },
    }
    Ok(pinned)
}

/// blake3 over the signed indexes of all of `source`'s suites.
/// Where the last index fingerprint of `source`'s family (its suites and mirrors) is kept.
pub fn index_pointer(images: &Path, source: &DebianSource) -> Result<std::path::PathBuf> {
    let family = super::cache::Key::new("index", &source.sources())?;
    Ok(images.join(format!("index-{}.txt", family.hash)))
}

async fn fetch_index(source: &DebianSource) -> Result<String> {
    let dir = tempfile::tempdir().ctx(|| "creating a temporary directory")?;
    let mut hasher = blake3::Hasher::new();
    for (i, url) in source.index_urls().iter().enumerate() {
        let file = dir.path().join(format!("InRelease-{i}"));
        let file_s = file.to_string_lossy().into_owned();
        let args = ["download-file", url.as_str(), file_s.as_str()];
        let fetch = run_tool("fetching the Debian index", Path::new(APT_HELPER), &args);
        tokio::time::timeout(std::time::Duration::from_secs(30), fetch)
            .await
            .map_err(|_| Error::Io {
                context: format!("fetching {url}"),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 30 s"),
            })??;
        let bytes = std::fs::read(&file).ctx(|| format!("reading {}", file.display()))?;
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex()[..24].to_string())
}

/// Makes `target` (an empty or absent directory) a root filesystem with `packages`.
pub async fn mmdebstrap(
    source: &DebianSource,
    variant: Variant,
    packages: &[String],
    target: &Path,
    step: &Step,
) -> Result<()> {
    // Every tool the build needs, before minutes of mmdebstrap: not mkfs.ext4 missing after;
    // and, without root, a user namespace to build in (see host::userns).
    programs::require(programs::IMAGE_BUILD)?;
    let builder = Builder::current();
    builder.check()?;
    let program = programs::path_of(programs::MMDEBSTRAP)?;
    let mut args: Vec<String> = vec![
        match variant {
            Variant::Extract => "--variant=extract".into(),
            Variant::Minbase => "--variant=minbase".into(),
        },
        "--mode=root".into(),
        "--aptopt=Acquire::Retries \"3\"".into(),
    ];
    if !packages.is_empty() {
        args.push(format!("--include={}", packages.join(",")));
    }
    if variant == Variant::Minbase {
        args.extend(PATH_EXCLUDES.iter().map(|s| s.to_string()));
    }
    args.push(source.suite.clone());
    args.push(target.display().to_string());
    args.extend(source.sources());

    // mmdebstrap runs as PID 1 of its own PID and mount namespaces, a child of unshare that
    // dies with it (--kill-child): if guestbox is SIGKILLed, PDEATHSIG takes unshare, the
    // kernel then takes mmdebstrap, every apt and dpkg below it, and the mounts it made in
    // the chroot. A process group alone would leave the grandchildren and the mounts.
    // Without root the same command runs in a user namespace too, still in root mode
    // (mmdebstrap supports that; /sys is bind-mounted instead of mounted).
    let (unshare, args) = builder.command(
        &["--pid", "--mount", "--fork", "--kill-child"],
        &program,
        &args,
    )?;
    // Its temporary files (a gpg home, apt lists) go next to the target, inside the build's
    // own directory: a SIGKILL cannot leave them in /tmp, and gc removes the build's remains.
    let tmp = target.with_extension("tmp");
    std::fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let result = run_mmdebstrap(&unshare, &args, &tmp, step).await;
    remove_tree(&tmp).ctx(|| format!("removing {}", tmp.display()))?;
    result.map_err(|(status, log)| Error::Command {
        what: format!(
            "mmdebstrap ({} from {}, packages: {})",
            source.suite,
            source.mirror,
            if packages.is_empty() {
                "-".to_string()
            } else {
                packages.join(",")
            }
        ),
        status,
        detail: tail_of_text(&log, 20),
    })
}

/// Runs mmdebstrap under `unshare` (the command line made by [`Builder::command`]); on
/// failure, its exit status and output.
async fn run_mmdebstrap(
    unshare: &Path,
    args: &[std::ffi::OsString],
    tmp: &Path,
    step: &Step,
) -> std::result::Result<(), (String, String)> {
    let mut std_cmd = std::process::Command::new(unshare);
    std_cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("TMPDIR", tmp)
        // mmdebstrap reads no config from the environment that we want; keep apt quiet.
        .env("DEBIAN_FRONTEND", "noninteractive");
    supervise(&mut std_cmd);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    tracing::debug!(?args, "mmdebstrap");
    let mut child = cmd.spawn().map_err(|e| {
        (
            "not started".to_string(),
            format!("starting {}: {e}", unshare.display()),
        )
    })?;
    let group = GroupGuard(child.id().map(|p| p as libc::pid_t));
    let mut log = String::new();
    if let Some(stderr) = child.stderr.take() {
        let mut lines = BufReader::new(stderr).lines();
        while let Some(line) = lines.next_line().await.map_err(|e| {
            (
                "unknown".to_string(),
                format!("reading mmdebstrap's output: {e}"),
            )
        })? {
            if let Some(rest) = line.strip_prefix("I: ") {
                step.detail(rest);
            }
            tracing::trace!("mmdebstrap: {line}");
            log.push_str(&line);
            log.push('\n');
        }
    }
    let status = child.wait().await.map_err(|e| {
        (
            "unknown".to_string(),
            format!("waiting for mmdebstrap: {e}"),
        )
    })?;
    // The group is killed even now: unshare's helper for --map-auto (it runs newuidmap) is
    // left waiting when unshare fails to make the namespace, and nothing else reaps it.
    drop(group);
    if !status.success() {
        return Err((status.to_string(), log));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::cache::{ArtifactCache, Key};
    use crate::progress::Progress;

    #[tokio::test]
    async fn an_unreachable_mirror_falls_back_to_the_last_known_index_or_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().join("images"));
        // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
        let source = DebianSource {
            suite: "bookworm".into(),
            mirror: "http://127.0.0.1:9/debian".into(),
            index: None,
            security_mirror: Some("http://127.0.0.1:9/debian-security".into()),
        };
        let err = pin_index(&cache, &source, &Progress::quiet())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("cannot reach the Debian mirror") && text.contains("none are cached"),
            "{text}"
        );
        let family = Key::new("index", &source.sources()).unwrap();
        std::fs::create_dir_all(cache.root()).unwrap();
        std::fs::write(
            cache.root().join(format!("index-{}.txt", family.hash)),
            "abc123\n",
        )
        .unwrap();
        let pinned = pin_index(&cache, &source, &Progress::quiet())
            .await
            .unwrap();
        assert_eq!(pinned.index.as_deref(), Some("abc123"));
        assert_eq!(pinned.mirror, source.mirror);
    }
}
