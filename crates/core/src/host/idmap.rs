//! User namespaces and idmapped views (Linux 5.12+): what lets a root guestbox start a QEMU
//! that is root only inside a namespace of its own, and serve it root's files.
//!
//! A [`UserNamespace`] maps a range of ids inside (0..count) onto a range outside (a
//! subordinate range of an unprivileged user). A process that joins it and becomes its
//! root holds every capability, but only over files whose owners map into the range; to
//! the rest of the host it is one unprivileged uid. An [`idmapped_view`] is a detached copy
//! of the mounts at a path (a directory or a single file) in which on-disk owner `k`
//! appears as outside id `start + k`, i.e. as `k` inside the namespace: through it, that
//! root sees root's files as its own, chowns within the range land on disk as the ids the
//! guest asked for, and nothing is mounted anywhere (the view lives as long as its
//! descriptor). Ids outside the range appear as the overflow id and cannot be written.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// From <linux/mount.h>; the libc crate has the syscall numbers but not these.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// One range of ids: inside `0..count` is outside `start..start + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

/// A user namespace, held by its descriptor (`/proc/PID/ns/user` of the child it was made
/// in, which is gone).
#[derive(Debug)]
pub struct UserNamespace(OwnedFd);

impl UserNamespace {
    /// A namespace whose uids `0..uids.count` are `uids.start..` outside, and gids alike.
    /// Needs root (writing another process's maps). A namespace needs a process to be
    /// made in: a child is forked for it, which makes only system calls (this process has
    /// threads) and is killed once the namespace is open here. (Killed, not told to exit
    /// through a pipe: a child forked by another thread at the same moment holds copies of
    /// every descriptor, so no end-of-file can be relied on.)
    pub fn new(uids: IdRange, gids: IdRange) -> io::Result<UserNamespace> {
        let (ready_r, ready_w) = pipe()?;
        // SAFETY: the child calls only async-signal-safe functions (unshare, write, pause)
        // and allocates nothing.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
                libc::write(
                    ready_w.as_raw_fd(),
                    &ok as *const u8 as *const libc::c_void,
                    1,
                );
                loop {
                    libc::pause();
                }
            }
        }
        drop(ready_w);
        let result = (|| {
            let mut ok = 0u8;
            // SAFETY: one byte into `ok`.
            let n = unsafe {
                libc::read(
                    ready_r.as_raw_fd(),
                    &mut ok as *mut u8 as *mut libc::c_void,
                    1,
                )
            };
            if n != 1 || ok != 1 {
                return Err(io::Error::other(
                    "could not make a user namespace (unshare(CLONE_NEWUSER) failed)",
                ));
            }
            let proc = format!("/proc/{pid}");
            std::fs::write(
                format!("{proc}/uid_map"),
                format!("0 {} {}\n", uids.start, uids.count),
            )?;
            std::fs::write(
                format!("{proc}/gid_map"),
                format!("0 {} {}\n", gids.start, gids.count),
            )?;
            let ns = std::fs::File::open(format!("{proc}/ns/user"))?;
            Ok(UserNamespace(OwnedFd::from(ns)))
        })();
        // SAFETY: our own child, reaped right after.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        result
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Between fork and exec (async-signal-safe system calls only): keep `groups` as the
    /// supplementary groups (outside ids, e.g. the group of `/dev/kvm`), join the
    /// namespace `fd` and become its root. The process then is `start` of each range to
    /// the host, with capabilities in the namespace only.
    ///
    /// # Safety
    /// Only in a child between fork and exec, single-threaded, `fd` a user namespace.
    pub unsafe fn enter_as_root(fd: RawFd, groups: &[libc::gid_t]) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setns(fd, libc::CLONE_NEWUSER))?;
        check(libc::setresgid(0, 0, 0))?;
        check(libc::setresuid(0, 0, 0))
    }
}

/// A detached, recursive copy of the mounts at `path` (a directory, or a single file), its
/// on-disk ids mapped through `ns` (on-disk `k` appears as inside id `k`), no setuid and no
/// device files honoured in it, read-only if `readonly` (then the kernel refuses writes
/// whatever the process holding it does). Reached only through the descriptor, e.g. as
/// `/proc/self/fd/N`. Needs root (CAP_SYS_ADMIN). Errors: `EINVAL` when a filesystem under
/// `path` cannot be idmapped (NFS, 9p, FUSE, tmpfs before Linux 6.3), `ENOSYS` before 5.12.
pub fn idmapped_view(path: &Path, ns: &UserNamespace, readonly: bool) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: a valid C string; the flags are open_tree(2)'s.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if readonly {
        set |= MOUNT_ATTR_RDONLY;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.0.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: `attr` is a valid mount_attr of the size passed; `tree` is open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 made both descriptors, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;

    fn root() -> bool {
        // SAFETY: no arguments, no failure.
        unsafe { libc::geteuid() == 0 }
    }

    /// Outside ids of the test namespace: far above any real user's.
    const START: u32 = 3_000_000;
    const RANGE: IdRange = IdRange {
        start: START,
        count: 65536,
    };

    /// `sh -c script` as root of `ns` (files passed as fd 10 and 11); its exit status.
    fn in_namespace(ns: &UserNamespace, fds: &[&OwnedFd], script: &str) -> i32 {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let ns_fd = ns.fd().as_raw_fd();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", script]);
        // SAFETY: dup2 and enter_as_root only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &fd) in raw.iter().enumerate() {
                    if libc::dup2(fd, 10 + i as RawFd) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                UserNamespace::enter_as_root(ns_fd, &[])
            });
        }
        cmd.status().unwrap().code().unwrap_or(-1)
    }

    /// Root of the namespace is the range's start to the host, sees root's files through a
    /// view as its own (and another user's as that user's), makes files that land on disk
    /// as root's, chowns them to ids the host sees unchanged, cannot touch root's files
    /// outside the view, and a read-only view refuses writes. (As root only: without it,
    /// making the namespace's maps must fail, which is checked instead.)
    #[test]
    fn a_namespaced_root_serves_roots_files_through_a_view_and_nothing_else() {
        let ns = match UserNamespace::new(RANGE, RANGE) {
            Ok(ns) => ns,
            Err(e) if !root() => {
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("mine"), "x").unwrap();
        std::fs::write(d.join("theirs"), "y").unwrap();
        std::os::unix::fs::chown(d.join("theirs"), Some(1000), Some(1000)).unwrap();
        let secret = d.join("secret");
        std::fs::write(&secret, "z").unwrap();
        let view = idmapped_view(d, &ns, false).unwrap();
        let ro = idmapped_view(d, &ns, true).unwrap();
        let script = format!(
            "set -e
            test \"$(id -u)\" = 0
            test \"$(stat -c %u /proc/self/fd/10/mine)\" = 0
            test \"$(stat -c %u /proc/self/fd/10/theirs)\" = 1000
            echo made > /proc/self/fd/10/made
            chown 1234:1234 /proc/self/fd/10/made
            ! cat {secret} 2>/dev/null
            ! (echo no > /proc/self/fd/11/refused) 2>/dev/null
            cat /proc/self/fd/11/mine >/dev/null
            ",
            secret = secret.display()
        );
        // The secret is root's, mode 0600, and reached by its plain path: refused.
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        assert_eq!(in_namespace(&ns, &[&view, &ro], &script), 0);
        let made = std::fs::metadata(d.join("made")).unwrap();
        assert_eq!((made.uid(), made.gid()), (1234, 1234));
        assert!(!d.join("refused").exists());
        // A view of one file: root's file, writable to the namespace's root through it.
        let file = idmapped_view(&d.join("mine"), &ns, false).unwrap();
        assert_eq!(in_namespace(&ns, &[&file], "echo w >> /proc/self/fd/10"), 0);
        assert_eq!(std::fs::read_to_string(d.join("mine")).unwrap(), "xw\n");
        let who = std::fs::metadata(d.join("mine")).unwrap();
        assert_eq!((who.uid(), who.gid()), (0, 0));
    }
}
