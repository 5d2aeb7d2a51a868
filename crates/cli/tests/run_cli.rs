//! `guestbox run` as a script meets it: signals and timeouts stop both VMs and leave no run
//! directory, output is live, the SMB share takes only its own credentials, `--packages`
//! reaches its base and only it, and bad input starts nothing.
//!
//! Shares the test home (and its default base) with every other test of the workspace.

mod common;
use common::{
    base_id, descendants, guestbox, holds_file_under, live_cmdline, started_run, test_home, text,
};

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Makes sure the default base exists (cheap when it does): later runs only revive it.
fn default_base_ready() {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

/// Fails unless every one of `qemus` (PIDs of the run in `run_dir`) is gone within a few
/// seconds, and the run directory with them. A PID reused by another process does not
/// count: it must still name the run (or hold it open, as a namespaced QEMU does).
fn assert_gone(qemus: &[i32], run_dir: &str, what: &str) {
    let left = || -> Vec<i32> {
        qemus
            .iter()
            .copied()
            .filter(|p| {
                live_cmdline(*p)
                    .is_some_and(|c| c.contains(run_dir) || holds_file_under(*p as u32, run_dir))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        left().is_empty(),
        "{what}: QEMU processes {:?} of {run_dir} outlived guestbox",
        left()
    );
    assert!(
        !test_home().join("runs").join(run_dir).exists(),
        "{what}: run directory {run_dir} was left behind"
    );
}

#[test]
fn sigterm_stops_both_vms_and_removes_the_run_directory() {
    default_base_ready();
    let home = test_home();
    let child = guestbox()
        .args(["run", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (run_dir, qemus) = started_run(&home, child.id());
    // Let the job reach the guest: the signal must stop a running command, not a revive.
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let o = child.wait_with_output().unwrap();
    let (_, err) = text(&o);
    // The code base gives SIGTERM the same 130 as SIGINT (README: "130 interrupted").
    assert_eq!(o.status.code(), Some(130), "{:?}: {err}", o.status);
    assert!(err.contains("terminated"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "guestbox took {:?} to stop",
        started.elapsed()
    );
    assert_gone(&qemus, &run_dir, "SIGTERM");
}

#[test]
fn timeout_stops_both_vms_and_removes_the_run_directory() {
    default_base_ready();
    let home = test_home();
    let spawned = Instant::now();
    let child = guestbox()
        .args(["run", "--timeout", "15s", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (run_dir, qemus) = started_run(&home, child.id());
    let o = child.wait_with_output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(124), "{:?}: {err}", o.status);
    assert!(err.contains("did not finish within 15 s"), "{err}");
    assert!(spawned.elapsed() >= Duration::from_secs(15));
    assert_gone(&qemus, &run_dir, "--timeout");
}

#[test]
fn output_arrives_while_the_command_still_runs() {
    default_base_ready();
    let mut child = guestbox()
        .args(["run", "--", "sh", "-c", "echo first; sleep 8; echo second"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().map(|l| l.unwrap());
    let first_at = Instant::now();
    // The command sleeps 8 s after its first line: guestbox must still be running it.
    let still_running = child.try_wait().unwrap().is_none();
    let second = lines.next().map(|l| l.unwrap());
    let gap = first_at.elapsed();
    assert!(lines.next().is_none(), "more output than the command wrote");
    let status = child.wait().unwrap();
    let err = err.join().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(first.as_deref(), Some("first"), "{err}");
    assert_eq!(second.as_deref(), Some("second"), "{err}");
    assert!(
        still_running,
        "guestbox had exited when the first line arrived"
    );
    assert!(
        gap >= Duration::from_secs(5),
        "\"second\" came {gap:?} after \"first\": the output was held back, not live"
    );
}

#[test]
fn the_smb_share_takes_only_its_own_credentials() {
    default_base_ready();
    // Each attempt on a connection of its own (nosharesock), so the guest's existing
    // authenticated session cannot be reused; in SMB3 and in SMB1, which the controller
    // also speaks (for XP). The attempts with the credentials the guest was given at
    // bootstrap prove the others fail for want of credentials only.
    let script = r#"
try() {
  d=/mnt/try-$1; shift
  mkdir -p "$d"
  if mount -t cifs //192.168.0.2/guestbox "$d" -o "$1,nosharesock" 2>/tmp/mount.err; then
    echo "$d MOUNTED: $(ls "$d" | tr '\n' ' ')"; umount "$d"
  else
    echo "$d REFUSED: $(tr '\n' ' ' </tmp/mount.err)"
  fi
}
for v in 3.1.1 1.0; do
  try guest-$v guest,vers=$v
  try nobody-$v username=nobody,password=,vers=$v
  try wrong-$v username=guestbox,password=not-the-password,vers=$v
  try right-$v credentials=/run/guestbox/smb.cred,vers=$v
done
"#;
    let o = guestbox()
        .args(["run", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("/mnt/try-{name} ")))
            .unwrap_or_else(|| panic!("no result for {name}: {out}{err}"))
            .to_string()
    };
    for v in ["3.1.1", "1.0"] {
        // The control: the share's own user and password mount it, and it holds the
        // run's exchange directory.
        let right = line(&format!("right-{v}"));
        assert!(
            right.contains("MOUNTED") && right.contains("xchg"),
            "{right}"
        );
        for who in ["guest", "nobody", "wrong"] {
            let l = line(&format!("{who}-{v}"));
            assert!(l.contains("REFUSED"), "a {who} mount was accepted: {l}");
            // Refused for its credentials (EACCES), not for a reason that would hide a
            // share open to anyone (no route, no such share, a bad option).
            assert!(l.contains("error(13)"), "{l}");
        }
    }
}

fn smb_password(id: &str) -> String {
    let path = test_home().join("bases").join(id).join("secrets.json");
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    secrets["smb_password"].as_str().unwrap().to_string()
}

#[test]
fn packages_reach_their_base_only_and_each_base_has_its_own_smb_password() {
    default_base_ready();
    // Builds one more guest image (with make) the first time; found in the cache later.
    let o = guestbox()
        .args(["bootstrap", "--name", "pkgtest", "--packages", "make"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let o = guestbox()
        .args(["run", "--base", "pkgtest", "--", "make", "--version"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.starts_with("GNU Make"), "{out}");
    // The default base was not given make.
    let o = guestbox()
        .args(["run", "--", "make", "--version"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(127), "{out}{err}");

    let (default, pkg) = (base_id("default"), base_id("pkgtest"));
    assert_ne!(default, pkg, "--packages made no base of its own");
    let (a, b) = (smb_password(&default), smb_password(&pkg));
    for p in [&a, &b] {
        assert!(
            p.len() >= 32 && p.chars().all(|c| c.is_ascii_hexdigit()),
            "a weak SMB password: {} characters",
            p.len()
        );
    }
    assert_ne!(a, b, "two bases share one SMB password");
}

/// A stand-in for `program` that logs each call to `log` and runs the real one.
fn logging_wrapper(dir: &Path, program: &str, log: &Path) {
    let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is installed (scripts/setup)"));
    let path = dir.join(program);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"{program} $*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn bad_input_starts_nothing_and_leaves_the_base_unchanged() {
    default_base_ready();
    let id = base_id("default");
    let manifest = test_home().join("bases").join(&id).join("manifest.json");
    let manifest_before = std::fs::read(&manifest).unwrap();

    // A home of its own for runs (the shared bases and images behind symlinks): any run
    // directory in it is this test's. QEMU and qemu-img are wrapped to log every call.
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    for d in ["bases", "cache"] {
        std::os::unix::fs::symlink(test_home().join(d), home.join(d)).unwrap();
    }
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = tmp.path().join("qemu-calls.log");
    for program in ["qemu-system-x86_64", "qemu-img"] {
        logging_wrapper(&bin, program, &log);
    }
    let path = std::env::join_paths(
        std::iter::once(bin.clone())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();

    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "-v", "/no/such/dir/anywhere:/x", "--", "true"],
            "/no/such/dir/anywhere",
        ),
        (
            &[
                "run",
                "--base",
                "default",
                "-v",
                "/no/such/dir/anywhere:/x",
                "--",
                "true",
            ],
            "/no/such/dir/anywhere",
        ),
        (
            &["run", "-v", "/tmp:relative/x", "--", "true"],
            "must be absolute",
        ),
        (
            &["run", "--base", "no-such-base-anywhere", "--", "true"],
            "no base named",
        ),
        (
            &["run", "-e", "1BAD=x", "--", "true"],
            "not a valid variable name",
        ),
        (
            &["run", "-e", "NOEQUALS", "--", "true"],
            "expected NAME=VALUE",
        ),
    ];
    for (args, needle) in cases {
        let mut child = Command::new(env!("CARGO_BIN_EXE_guestbox"))
            .env("GUESTBOX_HOME", &home)
            .env("PATH", &path)
            .env_remove("GUESTBOX_LOG")
            .args(*args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Watch for children for as long as it lives.
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            for p in descendants(child.id() as i32) {
                if let Some(c) = live_cmdline(p) {
                    seen.push(c);
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?}: still running after a minute; started {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let o = child.wait_with_output().unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
        assert!(seen.is_empty(), "{args:?}: guestbox started {seen:?}");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(calls.is_empty(), "{args:?}: QEMU tools ran:\n{calls}");
        let runs: Vec<_> = std::fs::read_dir(home.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(runs.is_empty(), "{args:?}: run directories made: {runs:?}");
    }

    // Nothing written to the base: its files still match their sealed checksums, and it
    // is still the default.
    assert_eq!(std::fs::read(&manifest).unwrap(), manifest_before);
    assert_eq!(base_id("default"), id);
    let o = guestbox().args(["verify", &id]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o).0, text(&o).1);
}

#[test]
fn a_bad_volume_is_refused_before_a_first_run_bootstraps_anything() {
    // A home without images or bases: the first run would build and bootstrap for minutes.
    let home = tempfile::tempdir().unwrap();
    let o = common::guestbox_in(home.path())
        .args(["run", "-v", "/no/such/dir/anywhere:/x", "--", "true"])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("/no/such/dir/anywhere"), "{err}");
    assert!(
        !err.contains("bootstrapping"),
        "it bootstrapped first: {err}"
    );
    for made in ["bases", "cache/images"] {
        let dir = home.path().join(made);
        let entries = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(entries, 0, "{} was filled", dir.display());
    }
}
