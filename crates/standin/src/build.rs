//! Building the stand-in install ISO: a Debian root filesystem from mmdebstrap (cached by
//! its package list), the stand-in's own files laid over a hard-linked copy of it, and the
//! ISO assembled inside that copy by its own tools (GRUB, shim, squashfs-tools, xorriso),
//! so the host needs only mmdebstrap. Each artifact is built in a temporary directory of
//! the cache and renamed into place when complete; one lock file serialises builders, so
//! parallel tests build it once and the others reuse it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{IoContext, StandinError};

/// Bumped when the recipe changes in a way the hashed inputs do not show.
pub const RECIPE_VERSION: u32 = 1;

/// Debian packages of the stand-in's root filesystem, on top of the essential set.
pub const PACKAGES: &[&str] = &[
    // The kernel (signed for Secure Boot; ahci, ata_piix, e1000e, 8139too, floppy, isofs,
    // vfat, cifs as modules; TPM TIS/CRB built in) and what the initramfs is made of.
    "linux-image-amd64",
    "busybox-static",
    "kmod",
    // Boot loaders the installer puts on the disk, and the ISO's: BIOS GRUB, Debian's
    // signed shim and GRUB for UEFI (with and without Secure Boot).
    "grub-pc-bin",
    "grub-efi-amd64-signed",
    "shim-signed",
    // Partitioning and file systems for the "install".
    "gdisk",
    "dosfstools",
    "e2fsprogs",
    "mtools",
    // The installed system: a shell, the network, sshd, the SMB client, the clock.
    "bash",
    "iproute2",
    "openssh-server",
    "cifs-utils",
    "util-linux",
    "mount",
    "procps",
    "tzdata",
    // PID 1 of the stand-in: reaps what sshd sessions leave.
    "tini",
    // The strict checkers and command stand-ins are Python (xml.etree is expat).
    "python3-minimal",
    "libpython3.11-stdlib",
    // Cygwin's package archives (.tar.xz, .tar.zst, .tar.bz2) are unpacked to check them.
    "xz-utils",
    "zstd",
    "bzip2",
    // Only to build the ISO, inside the build's copy of this root.
    "squashfs-tools",
    "xorriso",
];

/// Files of the stand-in laid over the Debian root: (path in the root, contents, mode).
pub const GUEST_FILES: &[(&str, &str, u32)] = &[
    (
        "usr/local/lib/standin/standin.py",
        include_str!("../guest/standin.py"),
        0o755,
    ),
    (
        "usr/local/lib/standin/init",
        include_str!("../guest/init"),
        0o755,
    ),
    (
        "usr/local/lib/standin/initrd-init",
        include_str!("../guest/initrd-init"),
        0o755,
    ),
    (
        "usr/local/lib/standin/build-iso.sh",
        include_str!("../guest/build-iso.sh"),
        0o755,
    ),
];

/// Where the ISO ends up, and what making it cost.
#[derive(Debug, Clone)]
pub struct StandinIso {
    /// `<cache>/standin/install-<hash>.iso`.
    pub path: PathBuf,
    /// The hash of every input (packages, sources, the stand-in's files, the recipe).
    pub key: String,
    /// True if this call built it (false: it was in the cache).
    pub built: bool,
    /// Time spent in this call, waiting for another builder included.
    pub took: Duration,
}

struct Sources {
    mirror: String,
    security: Option<String>,
}

impl Sources {
    /// bookworm from deb.debian.org and its security updates; the same variables as
    /// guestbox's own image builds pick other mirrors.
    fn from_env() -> Self {
        Sources {
            mirror: std::env::var("GUESTBOX_DEBIAN_MIRROR")
                .unwrap_or_else(|_| "http://deb.debian.org/debian".into()),
            security: match std::env::var("GUESTBOX_DEBIAN_SECURITY_MIRROR") {
                Ok(s) if s.is_empty() => None,
                Ok(s) => Some(s),
                Err(_) => Some("http://deb.debian.org/debian-security".into()),
            },
        }
    }

    fn lines(&self) -> Vec<String> {
        let m = self.mirror.trim_end_matches('/');
        let mut v = vec![
            format!("deb {m} bookworm main"),
            format!("deb {m} bookworm-updates main"),
        ];
        if let Some(s) = &self.security {
            v.push(format!(
                "deb {} bookworm-security main",
                s.trim_end_matches('/')
            ));
        }
        v
    }
}

/// The mmdebstrap hooks, hashed with the packages. update-initramfs is diverted to `true`:
/// the stand-in makes its own small initramfs, and initramfs-tools' would take a minute.
/// The host keys openssh-server's postinst made are removed: `ssh-host-config` makes them
/// at "install" time, as on Cygwin.
const HOOKS: &[&str] = &[
    "--essential-hook=chroot \"$1\" dpkg-divert --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true \"$1/usr/sbin/update-initramfs\"",
    "--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*",
];

const PATH_EXCLUDES: &[&str] = &[
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
];

fn hash_of(parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().to_hex()[..24].to_string()
}

fn rootfs_key(sources: &Sources) -> String {
    let mut parts: Vec<Vec<u8>> = vec![format!("rootfs v{RECIPE_VERSION}").into_bytes()];
    parts.extend(PACKAGES.iter().map(|p| p.as_bytes().to_vec()));
    parts.extend(sources.lines().into_iter().map(String::into_bytes));
    parts.extend(
        HOOKS
            .iter()
            .chain(PATH_EXCLUDES)
            .map(|h| h.as_bytes().to_vec()),
    );
    hash_of(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

fn iso_key(rootfs: &str) -> String {
    let mut parts: Vec<Vec<u8>> = vec![
        format!("iso v{RECIPE_VERSION}").into_bytes(),
        rootfs.as_bytes().to_vec(),
    ];
    for (path, text, mode) in GUEST_FILES {
        parts.push(format!("{path} {mode:o}").into_bytes());
        parts.push(text.as_bytes().to_vec());
    }
    hash_of(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

/// Held while building: an exclusive `flock` on `<cache>/standin/lock`.
struct Lock(File);

impl Lock {
    fn take(path: &Path) -> Result<Lock, StandinError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .ctx(|| format!("opening {}", path.display()))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(Lock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).ctx(|| format!("locking {}", path.display()));
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn which(
    program: &'static str,
    package: &'static str,
    why: &'static str,
) -> Result<PathBuf, StandinError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(StandinError::MissingProgram {
            program,
            package,
            why,
        })
}

/// Runs `cmd` with stdout and stderr into `log`; on failure the log's tail is the error.
fn run_logged(what: &str, cmd: &mut Command, log: &Path) -> Result<(), StandinError> {
    let out = File::create(log).ctx(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .ctx(|| format!("opening {}", log.display()))?;
    tracing::debug!(?cmd, "standin build step");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .ctx(|| format!("starting {what}"))?;
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    if let Ok(mut f) = File::open(log) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
    Err(StandinError::Command {
        what: what.to_string(),
        status: status.to_string(),
        tail,
    })
}

fn remove_dir_if_exists(p: &Path) -> Result<(), StandinError> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing {}", p.display())),
    }
}

/// The stand-in install ISO for guestbox's `windows` and `windows-xp` profiles (one ISO:
/// it tells the profile from the floppy's answer file), built into `cache_dir` once per
/// input hash, or taken from there. Needs root and mmdebstrap, and reaches the Debian
/// mirror on the first build (a few minutes).
pub fn ensure_install_iso(cache_dir: &Path) -> Result<StandinIso, StandinError> {
    let started = Instant::now();
    let dir = cache_dir.join("standin");
    fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let sources = Sources::from_env();
    let rkey = rootfs_key(&sources);
    let key = iso_key(&rkey);
    let iso = dir.join(format!("install-{key}.iso"));
    let _lock = Lock::take(&dir.join("lock"))?;
    if iso.is_file() {
        return Ok(StandinIso {
            path: iso,
            key,
            built: false,
            took: started.elapsed(),
        });
    }
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Err(StandinError::NeedsRoot);
    }
    // Under the lock nobody else builds: a tmp-* left here is a killed build's.
    for entry in fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
        let entry = entry.ctx(|| format!("reading {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with("tmp-") {
            remove_dir_if_exists(&entry.path())?;
        }
    }
    let rootfs = dir.join(format!("rootfs-{rkey}"));
    if !rootfs.join("usr/bin/bash").exists() {
        build_rootfs(&dir, &rootfs, &sources)?;
    }
    build_iso(&dir, &rootfs, &iso)?;
    // Older recipes' artifacts are never used again; a rootfs is ~700 MB.
    for entry in fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
        let entry = entry.ctx(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("install-") && path != iso {
            fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
        } else if name.starts_with("rootfs-") && path != rootfs {
            remove_dir_if_exists(&path)?;
        }
    }
    tracing::info!(iso = %iso.display(), secs = started.elapsed().as_secs(), "stand-in ISO built");
    Ok(StandinIso {
        path: iso,
        key,
        built: true,
        took: started.elapsed(),
    })
}

fn build_rootfs(dir: &Path, rootfs: &Path, sources: &Sources) -> Result<(), StandinError> {
    let mmdebstrap = which(
        "mmdebstrap",
        "mmdebstrap",
        "build the stand-in's root filesystem",
    )?;
    let unshare = which(
        "unshare",
        "util-linux",
        "run mmdebstrap in its own namespaces",
    )?;
    let tmp = dir.join(format!("tmp-rootfs-{}", std::process::id()));
    remove_dir_if_exists(&tmp)?;
    let tmpdir = tmp.join("tmp");
    fs::create_dir_all(&tmpdir).ctx(|| format!("creating {}", tmpdir.display()))?;
    let target = tmp.join("root");
    let mut cmd = Command::new(&unshare);
    // mmdebstrap as PID 1 of its own namespaces: if we die, it and its mounts go too.
    cmd.args(["--pid", "--mount", "--fork", "--kill-child", "--"])
        .arg(&mmdebstrap)
        .args([
            "--variant=essential",
            "--mode=root",
            "--aptopt=Acquire::Retries \"3\"",
        ])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .args(PATH_EXCLUDES)
        .args(HOOKS)
        .arg("bookworm")
        .arg(&target)
        .args(sources.lines())
        // Its gpg home and apt lists inside the build's own directory, not /tmp.
        .env("TMPDIR", &tmpdir)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_logged(
        "mmdebstrap (the stand-in's root filesystem)",
        &mut cmd,
        &tmp.join("mmdebstrap.log"),
    )?;
    fs::rename(&target, rootfs)
        .ctx(|| format!("renaming {} to {}", target.display(), rootfs.display()))?;
    remove_dir_if_exists(&tmp)
}

fn build_iso(dir: &Path, rootfs: &Path, iso: &Path) -> Result<(), StandinError> {
    let tmp = dir.join(format!("tmp-iso-{}", std::process::id()));
    remove_dir_if_exists(&tmp)?;
    fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let staging = tmp.join("root");
    // A hard-linked copy: instant, and the cached root stays untouched as long as files
    // are replaced (unlinked first), never written in place.
    run_logged(
        "copying the stand-in's root filesystem (hard links)",
        Command::new("cp").arg("-al").arg(rootfs).arg(&staging),
        &tmp.join("cp.log"),
    )?;
    for (path, text, mode) in GUEST_FILES {
        let dst = staging.join(path);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        let _ = fs::remove_file(&dst);
        let mut f = File::create(&dst).ctx(|| format!("writing {}", dst.display()))?;
        f.write_all(text.as_bytes())
            .ctx(|| format!("writing {}", dst.display()))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(*mode))
            .ctx(|| format!("setting the mode of {}", dst.display()))?;
    }
    let mut cmd = Command::new("chroot");
    cmd.arg(&staging)
        .args(["/bin/sh", "/usr/local/lib/standin/build-iso.sh"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C.UTF-8");
    run_logged(
        "assembling the stand-in ISO (build-iso.sh in the stand-in's root)",
        &mut cmd,
        &tmp.join("build-iso.log"),
    )?;
    let out = staging.join(".standin-build/standin.iso");
    if !out.is_file() {
        return Err(StandinError::Missing {
            what: "ISO",
            path: out,
        });
    }
    fs::rename(&out, iso).ctx(|| format!("renaming {} to {}", out.display(), iso.display()))?;
    remove_dir_if_exists(&tmp)
}
