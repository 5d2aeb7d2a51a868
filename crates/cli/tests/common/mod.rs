//! Helpers shared by the `guestbox` command's test files (each file uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The guestbox binary, in the shared test home, with no log filter and no stdin.
pub fn guestbox() -> Command {
    guestbox_in(&test_home())
}

/// The guestbox binary in `home`.
pub fn guestbox_in(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_guestbox"));
    c.env("GUESTBOX_HOME", home)
        .env_remove("GUESTBOX_LOG")
        .stdin(Stdio::null());
    c
}

/// Shared with guestbox-core's tests: images and the default base are built once.
pub fn test_home() -> PathBuf {
    std::env::var_os("GUESTBOX_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                // Deep on purpose: a run's socket paths under it are longer than unix
                // sockets allow, which guestbox must handle (see short_dir.rs).
                "/../../target/guestbox-test-home/deep-on-purpose-to-exceed-the-unix-socket-path-limit"
            ))
        })
}

/// A command's (stdout, stderr) as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The run directories (`run-*`) under `home`.
pub fn run_dirs(home: &Path) -> Vec<String> {
    std::fs::read_dir(home.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("run-"))
        .collect()
}

/// Every process below `root` (children, grandchildren ...), from /proc's parent links.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The parent is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// The command line of a live (not zombie) process.
pub fn live_cmdline(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    {
        return None;
    }
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&cmd).replace('\0', " "))
}

/// The QEMUs (`qemu-system-*`) below guestbox `pid` that name `run_dir` (on the command
/// line, or in the files a namespaced one holds open).
pub fn run_qemus(pid: u32, run_dir: &str) -> Vec<i32> {
    descendants(pid as i32)
        .into_iter()
        .filter(|p| {
            live_cmdline(*p).is_some_and(|c| {
                let program = c.split(' ').next().unwrap_or_default();
                program
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .starts_with("qemu-system")
                    && (c.contains(run_dir) || holds_file_under(*p as u32, run_dir))
            })
        })
        .collect()
}

/// The run directory of guestbox `pid` and the PIDs of its guest and controller QEMUs,
/// once both run (up to two minutes). By parentage: other tests run at the same time in
/// the same home.
pub fn started_run(home: &Path, pid: u32) -> (String, Vec<i32>) {
    let started = Instant::now();
    loop {
        for d in run_dirs(home) {
            let qemus = run_qemus(pid, &d);
            if qemus.len() >= 2 {
                assert_eq!(qemus.len(), 2, "more than two QEMUs in one run: {qemus:?}");
                return (d, qemus);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The id of the base named `name`, as `ls --json` lists it.
pub fn base_id(name: &str) -> String {
    let o = guestbox().args(["ls", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
        .unwrap_or_else(|| panic!("ls lists no base named {name}: {}", text(&o).0));
    row["id"].as_str().unwrap().to_string()
}

/// A tmux server of this test's own, on a private socket, killed when dropped.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn new(name: &str) -> Tmux {
        Tmux {
            socket: format!("guestbox-test-{name}-{}", std::process::id()),
        }
    }
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (scripts/setup --with-tests installs it)")
    }
    /// The visible screen, one string per line, trailing blanks trimmed.
    pub fn screen(&self) -> Vec<String> {
        let o = self.cmd(&["capture-pane", "-p", "-t", "t"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect()
    }
    /// Waits until a line of the screen satisfies `found`; returns the screen.
    pub fn wait_for(&self, what: &str, found: impl Fn(&str) -> bool) -> Vec<String> {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if screen.iter().any(|l| found(l)) {
                return screen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no {what} on the screen:\n{}",
                screen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[path = "../../../core/tests/common/procs.rs"]
mod procs;
#[allow(unused_imports)] // Not every test file looks for processes.
pub use procs::*;
#[path = "../../../core/tests/common/users.rs"]
mod users;
#[allow(unused_imports)] // Not every test file needs the test user.
pub use users::*;
