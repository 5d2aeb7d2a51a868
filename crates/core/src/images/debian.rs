//! Running mmdebstrap, Debian's own tool for making a root filesystem from packages.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::DebianSource;
use crate::hostcheck;
use crate::process::{supervise, tail_of_text, GroupGuard};
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

/// Image builds create root-owned files and device nodes: they need root.
pub fn require_root() -> Result<()> {
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Usage(
            "building guest images needs root (mmdebstrap and mkfs.ext4 create root-owned files): \
             run the first `guestbox bootstrap` (or `guestbox images build`) with sudo, or use \
             images that are already in the cache"
                .into(),
        ));
    }
    Ok(())
}

/// Makes `target` (an empty or absent directory) a root filesystem with `packages`.
pub async fn mmdebstrap(
    source: &DebianSource,
    variant: Variant,
    packages: &[String],
    target: &Path,
    step: &Step,
) -> Result<()> {
    require_root()?;
    let program = hostcheck::path_of(hostcheck::MMDEBSTRAP)?;
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
    args.push(source.mirror.clone());

    let mut std_cmd = std::process::Command::new(&program);
    std_cmd
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // mmdebstrap reads no config from the environment that we want; keep apt quiet.
        .env("DEBIAN_FRONTEND", "noninteractive");
    supervise(&mut std_cmd);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    tracing::debug!(?args, "mmdebstrap");
    let mut child = cmd
        .spawn()
        .ctx(|| format!("starting {}", program.display()))?;
    let mut group = GroupGuard(child.id().map(|p| p as libc::pid_t));
    let mut log = String::new();
    if let Some(stderr) = child.stderr.take() {
        let mut lines = BufReader::new(stderr).lines();
        while let Some(line) = lines
            .next_line()
            .await
            .ctx(|| "reading mmdebstrap's output")?
        {
            if let Some(rest) = line.strip_prefix("I: ") {
                step.detail(rest);
            }
            tracing::trace!("mmdebstrap: {line}");
            log.push_str(&line);
            log.push('\n');
        }
    }
    let status = child.wait().await.ctx(|| "waiting for mmdebstrap")?;
    group.disarm();
    if !status.success() {
        return Err(Error::Command {
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
            status: status.to_string(),
            detail: tail_of_text(&log, 20),
        });
    }
    Ok(())
}
