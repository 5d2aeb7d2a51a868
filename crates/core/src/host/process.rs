//! Supervised child processes (QEMU, image tools).
//!
//! Every child gets its own process group and PR_SET_PDEATHSIG=SIGKILL, so nothing outlives
//! guestbox: not on return, not on a panic, not when guestbox itself is SIGKILLed.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use tokio::process::{Child, Command};

use crate::{Error, IoContext, Result};

/// Prepares `cmd` so that the child dies with us and can be killed as a group.
pub fn supervise(cmd: &mut std::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Runs in a child between fork and exec when the program will change its own user:
/// the kernel clears PR_SET_PDEATHSIG then, so nothing would kill it if guestbox were
/// SIGKILLed. So the child forks a keeper first, which stays root (the program changes only
/// its own ids), dies with the program (its own PDEATHSIG, towards the program), and
/// SIGKILLs the program when guestbox exits (a pidfd of guestbox becomes readable). The
/// keeper closes every other descriptor, or it would hold other children's pipes and
/// sockets open. It is named `gb-keeper` and ignores the signals that ask a process to
/// stop, so that `killall guestbox`, `pkill -f guestbox` or a test harness killing its
/// binary's processes stop guestbox and not the keepers that clean up after it (a fork
/// is named as its parent: killed with it, its QEMU would outlive both). Only
/// async-signal-safe system calls.
fn keep_with_guestbox(guestbox: libc::pid_t) -> std::io::Result<()> {
    const KEEPER_NAME: &[u8] = b"gb-keeper\0";
    // SAFETY: fork, prctl, getppid, syscall, poll, kill and _exit are async-signal-safe;
    // the keeper never returns into Rust code that could allocate.
    unsafe {
        let program = libc::getpid();
        match libc::fork() {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                libc::prctl(libc::PR_SET_NAME, KEEPER_NAME.as_ptr() as libc::c_ulong);
                for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                if libc::getppid() != program {
                    libc::_exit(0);
                }
                let pidfd = libc::syscall(libc::SYS_pidfd_open, guestbox, 0) as libc::c_int;
                if pidfd < 0 {
                    // guestbox is already gone.
                    libc::kill(program, libc::SIGKILL);
                    libc::_exit(0);
                }
                if pidfd > 0 {
                    libc::syscall(libc::SYS_close_range, 0u32, (pidfd - 1) as u32, 0u32);
                }
                libc::syscall(libc::SYS_close_range, (pidfd + 1) as u32, u32::MAX, 0u32);
                let mut p = libc::pollfd {
                    fd: pidfd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                while libc::poll(&mut p, 1, -1) < 0 {}
                libc::kill(program, libc::SIGKILL);
                libc::_exit(0)
            }
            _ => Ok(()),
        }
    }
}

/// Who a child is once it runs, as far as its supervision goes.
#[derive(Debug, Clone, Default)]
pub enum Identity {
    /// guestbox's own user, or whoever the program makes itself without help.
    #[default]
    Same,
    /// The program leaves root by itself (QEMU's `-runas`), which clears its
    /// PR_SET_PDEATHSIG: a keeper then kills it when guestbox dies (`keep_with_guestbox`).
    ChangesItself,
    /// The child becomes, before it runs the program, root of the user namespace `ns`
    /// (an unprivileged uid to the host), keeping `groups` as its supplementary groups
    /// ([`crate::host::idmap::UserNamespace::enter_as_root`]); its parent-death signal is set again
    /// after the change.
    Namespace {
        ns: std::os::fd::RawFd,
        groups: Vec<libc::gid_t>,
    },
}

/// A running child in its own process group; the whole group is SIGKILLed on drop.
#[derive(Debug)]
pub struct Supervised {
    pub name: String,
    child: Child,
    pgid: Option<libc::pid_t>,
    stderr_path: PathBuf,
}

impl Supervised {
    /// Starts `program args` with stdin closed, stdout discarded and stderr kept in
    /// `stderr_path` (for error messages).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[impl AsRef<OsStr>],
        stderr_path: &Path,
    ) -> Result<Self> {
        Self::spawn_with(name, program, args, stderr_path, None, None)
    }

    /// Like [`Self::spawn`], and the child keeps descriptor `inherit` at the same number
    /// and starts in `cwd`.
    pub fn spawn_with(
        name: &str,
        program: &Path,
        args: &[impl AsRef<OsStr>],
        stderr_path: &Path,
        inherit: Option<std::os::fd::RawFd>,
        cwd: Option<&Path>,
    ) -> Result<Self> {
        let fds: Vec<std::os::fd::RawFd> = inherit.into_iter().collect();
        Self::spawn_inheriting(name, program, args, stderr_path, &fds, cwd, Identity::Same)
    }

    /// Like [`Self::spawn`], and the child keeps each descriptor of `inherit` at the same
    /// number, starts in `cwd` and runs as `identity` says.
    pub fn spawn_inheriting(
        name: &str,
        program: &Path,
        args: &[impl AsRef<OsStr>],
        stderr_path: &Path,
        inherit: &[std::os::fd::RawFd],
        cwd: Option<&Path>,
        identity: Identity,
    ) -> Result<Self> {
        let stderr =
            File::create(stderr_path).ctx(|| format!("creating {}", stderr_path.display()))?;
        let mut std_cmd = std::process::Command::new(program);
        std_cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        supervise(&mut std_cmd);
        if let Some(dir) = cwd {
            std_cmd.current_dir(dir);
        }
        if !inherit.is_empty() {
            let fds = inherit.to_vec();
            // SAFETY: fcntl is async-signal-safe. Clearing close-on-exec in the child only
            // leaves our own descriptors untouched.
            unsafe {
                std_cmd.pre_exec(move || {
                    for &fd in &fds {
                        if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let guestbox = std::process::id() as libc::pid_t;
        match identity {
            Identity::Same => {}
            // SAFETY: keep_with_guestbox makes only async-signal-safe calls.
            Identity::ChangesItself => unsafe {
                std_cmd.pre_exec(move || keep_with_guestbox(guestbox));
            },
            // SAFETY: enter_as_root, prctl, getppid and _exit are async-signal-safe; the
            // child of a fork is single-threaded.
            Identity::Namespace { ns, groups } => unsafe {
                std_cmd.pre_exec(move || {
                    crate::host::idmap::UserNamespace::enter_as_root(ns, &groups)?;
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::getppid() != guestbox {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            },
        }
        let mut cmd = Command::from(std_cmd);
        cmd.kill_on_drop(true);
        let child = cmd
            .spawn()
            .ctx(|| format!("starting {} ({})", name, program.display()))?;
        let pgid = child.id().map(|p| p as libc::pid_t);
        tracing::debug!(name, pid = ?pgid, "started");
        Ok(Self {
            name: name.to_string(),
            child,
            pgid,
            stderr_path: stderr_path.to_path_buf(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has ended, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .ctx(|| format!("checking on {}", self.name))
    }

    pub async fn wait(&mut self) -> Result<ExitStatus> {
        let status = self
            .child
            .wait()
            .await
            .ctx(|| format!("waiting for {}", self.name))?;
        self.pgid = None;
        Ok(status)
    }

    /// The last few lines the process wrote to stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail_of_file(&self.stderr_path, lines)
    }

    /// SIGKILLs the process group and reaps the leader.
    pub async fn kill(&mut self) {
        self.kill_group();
        let _ = self.child.wait().await;
        self.pgid = None;
    }

    fn kill_group(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: plain syscall; the group is ours (setpgid in pre_exec).
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// SIGKILLs a process group when dropped: for tools that fork helpers of their own
/// (mmdebstrap runs apt and dpkg), where killing the leader alone would orphan them.
#[derive(Debug)]
pub struct GroupGuard(pub Option<libc::pid_t>);

impl GroupGuard {
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: plain syscall on a group created by `supervise`.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// Last `lines` lines of a text file, lossily decoded; empty if unreadable.
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    tail_of_text(&String::from_utf8_lossy(&bytes), lines)
}

pub fn tail_of_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..]
        .iter()
        .map(|l| format!("    {}", l.trim_end_matches('\r')))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a short-lived tool to completion (supervised), returning stdout; a non-zero exit is
/// an error carrying the tail of stderr.
pub async fn run_tool(what: &str, program: &Path, args: &[impl AsRef<OsStr>]) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut std_cmd = std::process::Command::new(program);
    std_cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    supervise(&mut std_cmd);
    let mut cmd = Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .ctx(|| format!("starting {} ({})", what, program.display()))?;
    let group = GroupGuard(child.id().map(|p| p as libc::pid_t));
    let read = |pipe: Option<tokio::process::ChildStdout>| async move {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf).await;
        }
        buf
    };
    let read_err = |pipe: Option<tokio::process::ChildStderr>| async move {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf).await;
        }
        buf
    };
    let stdout = tokio::spawn(read(child.stdout.take()));
    let stderr = tokio::spawn(read_err(child.stderr.take()));
    let status = child
        .wait()
        .await
        .ctx(|| format!("waiting for {} ({})", what, program.display()))?;
    // Whatever the tool left behind in its group goes with it, before its output is
    // collected: a leftover would hold the pipes open (unshare leaves its --map-auto helper
    // waiting when it cannot make a user namespace).
    drop(group);
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    if !status.success() {
        return Err(Error::Command {
            what: what.to_string(),
            status: status.to_string(),
            detail: tail_of_text(&String::from_utf8_lossy(&stderr), 15),
        });
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let child = Supervised::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c", &script],
            &dir.path().join("stderr"),
        )
        .unwrap();
        let mut grandchild = None;
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    grandchild = Some(pid);
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let grandchild = grandchild.expect("the shell started its background sleep");
        drop(child);
        // kill(pid, 0) fails with ESRCH once the process is gone (it is reaped by init).
        let mut gone = false;
        for _ in 0..200 {
            let alive = unsafe { libc::kill(grandchild, 0) } == 0;
            let zombie = std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
            if !alive || zombie {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            gone,
            "background child {grandchild} survived its supervised parent"
        );
    }

    #[tokio::test]
    async fn failing_tool_reports_its_stderr() {
        let err = run_tool(
            "a test tool",
            Path::new("/bin/sh"),
            &["-c", "echo broken >&2; exit 3"],
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("a test tool failed"), "{text}");
        assert!(text.contains("broken"), "{text}");
    }
}
