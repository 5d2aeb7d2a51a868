//! Starting a QEMU as root of a user namespace of its own
//! ([`super::confine::Confinement::namespace`]): how a root guestbox serves directories of
//! root (or of several users) without a root QEMU. To the host, QEMU is then one of the
//! QEMU user's subordinate uids from its first instruction; so nothing it opens by path may
//! need more than that uid has. Every path of its command line is therefore handed over
//! first, as what guestbox opened:
//!
//! - kernel and initrd: descriptors opened read-only (`/proc/self/fd/N`);
//! - the RAM file, the console log and each shared directory: idmapped views
//!   ([`crate::host::idmap::idmapped_view`]), in which root's files are the namespace
//!   root's, so QEMU can open them as it would as root, and another user's files keep
//!   their owner (the guest sees the true owners, chown lands as asked); read-only shares
//!   are read-only views, so the kernel refuses their writes whatever QEMU does;
//! - its sockets (QMP, the control port), which QEMU makes itself: in a directory of
//!   their own, seen through a view, with a symbolic link from the usual name to each so
//!   that guestbox connects where it always does;
//! - disks and the link are descriptors already.
//!
//! Nothing is mounted anywhere: a view lives as long as its descriptor, QEMU's copy
//! included. The rest of the host is closed to QEMU: the run directory and
//! `GUESTBOX_HOME` are root's, and QEMU's capabilities count only over files whose owners
//! map into its namespace, which only the views make of root's.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::host::idmap::{idmapped_view, IdRange, UserNamespace};

use super::confine::{SubIds, NAMESPACE_IDS};
use super::spec::{Accel, Boot, Memory, VmSpec};
use crate::host::process::Identity;
use crate::{Error, IoContext, Result};

/// What a namespaced QEMU is started with: its command line's spec (every path a
/// descriptor or a view), the namespace, and the descriptors it must inherit (held here
/// until it has started).
pub struct Prepared {
    pub spec: VmSpec,
    ns: UserNamespace,
    held: Vec<OwnedFd>,
    groups: Vec<libc::gid_t>,
}

impl Prepared {
    pub fn inherited_fds(&self) -> Vec<RawFd> {
        self.held.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// How the child enters the namespace (the descriptor stays valid while self lives).
    pub fn identity(&self) -> Identity {
        Identity::Namespace {
            ns: self.ns.fd().as_raw_fd(),
            groups: self.groups.clone(),
        }
    }
}

/// `spec` rewritten for a QEMU that is root of a namespace over `sub` (see the module).
pub fn prepare(spec: &VmSpec, sub: SubIds) -> Result<Prepared> {
    if spec.platform.tpm.is_some() || spec.cwd.is_some() {
        return Err(Error::Usage(format!(
            "the {} VM cannot run in a user namespace: it has a TPM or a working directory \
             (only the controller, which has neither, is started so)",
            spec.name
        )));
    }
    let range = |start| IdRange {
        start,
        count: NAMESPACE_IDS,
    };
    let ns = UserNamespace::new(range(sub.uid), range(sub.gid))
        .ctx(|| format!("making a user namespace for the {} VM's QEMU", spec.name))?;
    let mut p = Prepared {
        spec: spec.clone(),
        ns,
        held: Vec::new(),
        groups: Vec::new(),
    };
    let s = &mut p.spec;
    if let Boot::Kernel { kernel, initrd, .. } = &mut s.boot {
        *kernel = hand(&mut p.held, open_read(kernel)?);
        *initrd = hand(&mut p.held, open_read(initrd)?);
    }
    if let Memory::File { path, readonly, .. } = &mut s.memory {
        let v = view(&p.ns, path, *readonly)?;
        *path = hand(&mut p.held, v);
    }
    for share in &mut s.shares {
        let v = view(&p.ns, &share.path, share.readonly)?;
        share.path = hand(&mut p.held, v);
    }
    // The console: made here (as QEMU would, truncated), written through a view.
    File::create(&s.console_log).ctx(|| format!("creating {}", s.console_log.display()))?;
    let v = view(&p.ns, &s.console_log, false)?;
    s.console_log = hand(&mut p.held, v);
    let (name, short) = (s.name.clone(), s.inherit.clone());
    let Some(short) = short else {
        return Err(Error::Usage(format!(
            "the {name} VM names its sockets by path; a namespaced QEMU needs them in a run \
             directory"
        )));
    };
    let sub_dir = format!("{name}-sockets");
    let sockets = short.real().join(&sub_dir);
    // (Made again if this VM is started again in the same directory.)
    std::fs::create_dir_all(&sockets).ctx(|| format!("creating {}", sockets.display()))?;
    let dir = hand(&mut p.held, view(&p.ns, &sockets, false)?);
    let mut moved = vec![&mut s.qmp_socket];
    moved.extend(s.ports.iter_mut().map(|port| &mut port.socket));
    for socket in moved {
        let Some(file) = socket.file_name().map(PathBuf::from) else {
            continue;
        };
        let usual = short.real_path(socket);
        let target = Path::new(&sub_dir).join(&file);
        if usual.is_symlink() {
            let _ = std::fs::remove_file(&usual);
        }
        std::os::unix::fs::symlink(&target, &usual)
            .ctx(|| format!("linking {} to {}", usual.display(), target.display()))?;
        *socket = dir.join(&file);
    }
    // /dev/kvm is root's and its group's: QEMU keeps that group.
    if s.accel == Accel::Kvm {
        if let Ok(m) = std::fs::metadata("/dev/kvm") {
            if m.mode() & 0o006 != 0o006 {
                p.groups.push(m.gid());
            }
        }
    }
    Ok(p)
}

/// `/proc/self/fd/N` for a descriptor QEMU inherits at N.
fn hand(held: &mut Vec<OwnedFd>, fd: OwnedFd) -> PathBuf {
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    held.push(fd);
    path
}

fn open_read(path: &Path) -> Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .ctx(|| format!("opening {}", path.display()))?;
    Ok(f.into())
}

fn view(ns: &UserNamespace, path: &Path, readonly: bool) -> Result<OwnedFd> {
    idmapped_view(path, ns, readonly).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            Error::Usage(format!(
                "{} is on a filesystem that cannot be idmapped (NFS, 9p, FUSE, tmpfs before \
                 Linux 6.3), which a root guestbox needs to serve root's directories without \
                 a root QEMU: share a directory on a local disk filesystem, or one that an \
                 unprivileged user owns",
                path.display()
            ))
        } else {
            Error::Io {
                context: format!("making an idmapped view of {}", path.display()),
                source: e,
            }
        }
    })
}
