//! Helpers shared by the integration tests: a QEMU process guard.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use qmp::Qmp;

/// A QEMU process that is killed (and reaped) when dropped, even if the test panics.
pub struct Qemu {
    child: Child,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
}

impl Qemu {
    /// Starts QEMU under TCG with a QMP server socket and `extra` arguments.
    pub fn spawn(extra: &[&str]) -> Qemu {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qmp.sock");
        let log = File::create(dir.path().join("qemu.log")).expect("log file");
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-nodefaults", "-display", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start qemu-system-x86_64");
        Qemu { child, dir, sock }
    }

    /// `-machine none`: the fastest QEMU that answers QMP.
    pub fn none(extra: &[&str]) -> Qemu {
        let mut args = vec!["-machine", "none"];
        args.extend_from_slice(extra);
        Qemu::spawn(&args)
    }

    /// A real but never-started PC: `-machine pc -S -m 64`.
    pub fn pc(extra: &[&str]) -> Qemu {
        let mut args = vec!["-machine", "pc", "-S", "-m", "64"];
        args.extend_from_slice(extra);
        Qemu::spawn(&args)
    }

    pub async fn connect(&self) -> Qmp {
        match Qmp::connect(&self.sock, Duration::from_secs(20)).await {
            Ok(q) => q,
            Err(e) => panic!("connect failed: {e}; qemu log:\n{}", self.log()),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits up to `timeout` for QEMU to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // SIGKILL also ends a SIGSTOPped QEMU; wait() reaps it so no zombie outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails the test instead of hanging forever if something never answers.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

pub fn installed_qemu_version() -> (u32, u32, u32) {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .expect("run qemu --version");
    let text = String::from_utf8_lossy(&out.stdout);
    // "QEMU emulator version 7.2.22 (Debian ...)"
    let ver = text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .expect("version in qemu --version output");
    let nums: Vec<u32> = ver.split('.').map(|n| n.parse().expect("number")).collect();
    (nums[0], nums[1], *nums.get(2).unwrap_or(&0))
}

pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
