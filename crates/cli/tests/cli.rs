//! The `guestbox` command as a user meets it: exit codes, messages, cleanup.

mod common;
use common::{
    base_id, descendants, guestbox, guestbox_in, pids_matching, started_run, test_home, text, Tmux,
};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[test]
fn help_and_version() {
    let o = guestbox().arg("--help").output().unwrap();
    let (out, _) = text(&o);
    assert!(o.status.success());
    for word in [
        "bootstrap",
        "run",
        "ls",
        "inspect",
        "rm",
        "gc",
        "shell",
        "bench",
    ] {
        assert!(out.contains(word), "--help lacks {word}: {out}");
    }
    let o = guestbox().arg("--version").output().unwrap();
    assert!(text(&o).0.starts_with("guestbox "));
}

#[test]
fn usage_errors_exit_2_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["shell", "--base", "no-such-base-anywhere"],
            "no base named",
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
            &["run", "-v", "/tmp:relative", "--", "true"],
            "must be absolute",
        ),
        (&["run", "--"], "no command given"),
        (
            &["bootstrap", "--profile", "beos"],
            "possible values: debian, windows, windows-xp",
        ),
        (&["bootstrap", "--memory", "lots"], "not a size"),
        (&["bootstrap", "--name", "../x"], "not a valid base name"),
        (&["inspect", "no-such-base-anywhere"], "no base named"),
        (
            &["bench", "--only", "windows"],
            "needs --windows-base BASE[,BIGGER_BASE]",
        ),
        (
            &["bench", "--windows-base", "no-such-base-anywhere"],
            "no base named",
        ),
    ];
    for (args, needle) in cases {
        let o = guestbox().args(*args).output().unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    }
}

#[test]
fn a_missing_host_program_is_named_with_its_package() {
    let empty = tempfile::tempdir().unwrap();
    let o = guestbox()
        .env("PATH", empty.path())
        .args(["images"])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("apt-get install"), "{err}");
}

#[test]
fn the_default_base_runs_commands_and_sigint_cleans_up() {
    // First use bootstraps the default base (or finds it): a real run end to end.
    let o = guestbox()
        .args(["run", "--", "sh", "-c", "echo hi; exit 3"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_eq!(out, "hi\n");

    let o = guestbox()
        .args(["run", "--timeout", "2s", "--", "sleep", "100"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(124), "{}", text(&o).1);

    let home = test_home();
    let mut child = guestbox()
        .args(["run", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until its run directory and QEMUs exist.
    let (run_dir, _) = started_run(&home, child.id());
    std::thread::sleep(Duration::from_secs(2));
    let qemus = pids_matching(&run_dir);
    assert!(
        qemus.len() >= 2,
        "expected guest and controller QEMUs, found {qemus:?}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<_> = qemus
        .iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        left.is_empty(),
        "QEMU processes {left:?} outlived the interrupted run"
    );
    assert!(
        !home.join("runs").join(&run_dir).exists(),
        "run directory {run_dir} was left behind"
    );
}

/// The id of the base named "default", as `ls --json` lists it.
fn default_base_id() -> String {
    base_id("default")
}

#[test]
fn settings_a_frozen_base_cannot_take_are_refused_not_ignored() {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let id = default_base_id();
    for (args, says) in [
        (
            &["--memory", "2G"][..],
            "--memory 2048 MiB (it has 1024 MiB)",
        ),
        (&["--cpus", "2"][..], "--cpus 2 (it has 1)"),
        (&["--packages", "make"][..], "--packages make"),
    ] {
        let o = guestbox()
            .args(["run", "--base", &id])
            .args(args)
            .args(["--", "true"])
            .output()
            .unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // What the base already has is fine to say.
    let o = guestbox()
        .args([
            "run", "--base", &id, "--memory", "1G", "--cpus", "1", "--", "true",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

#[test]
fn ls_and_inspect_show_the_base() {
    // Make sure the default base exists (cheap when it does).
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let id = default_base_id();
    let id = id.as_str();
    let o = guestbox().args(["inspect", &id[..10]]).output().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["id"], id);
    assert_eq!(m["profile"], "debian");
    assert!(m["pair"]["machine"]
        .as_str()
        .unwrap()
        .starts_with("pc-q35-"));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("smb_password"),
        "inspect leaks secrets"
    );
    let o = guestbox().args(["ls"]).output().unwrap();
    assert!(text(&o).0.contains(&id[..12]));
}

/// One damaged manifest does not hide the other bases: `ls` lists the healthy ones, marks
/// the damaged one with the reason and the command that removes it, and `ls --json` too.
#[test]
fn ls_lists_the_healthy_bases_beside_a_damaged_one() {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let id = default_base_id();
    let home = tempfile::tempdir().unwrap();
    let bases = home.path().join("bases");
    std::fs::create_dir_all(bases.join("names")).unwrap();
    // The healthy base: the shared one's manifest, which is all `ls` reads.
    let healthy = bases.join(&id);
    std::fs::create_dir(&healthy).unwrap();
    let shared = test_home().join("bases").join(&id);
    std::fs::copy(shared.join("manifest.json"), healthy.join("manifest.json")).unwrap();
    let damaged_id = "0123456789abcdef01234567";
    let damaged = bases.join(damaged_id);
    std::fs::create_dir(&damaged).unwrap();
    std::fs::write(damaged.join("manifest.json"), b"{\"format\": 3, \"id\"").unwrap();
    // A name longer than the NAMES heading: the columns widen to it.
    let long = "a-name-longer-than-any-column-width";
    std::os::unix::fs::symlink(format!("../{id}"), bases.join("names").join(long)).unwrap();
    let o = guestbox_in(home.path()).arg("ls").output().unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains(&id[..12]), "{out}");
    let row = out
        .lines()
        .find(|l| l.contains(long))
        .expect("the named base");
    let header = out.lines().next().unwrap();
    assert_eq!(
        row.find("debian"),
        header.find("PROFILE"),
        "columns misaligned:\n{out}"
    );
    assert!(
        out.contains(&damaged_id[..12]) && out.contains("DAMAGED"),
        "{out}"
    );
    assert!(
        err.contains("manifest") && err.contains(&format!("guestbox rm {damaged_id}")),
        "{err}"
    );
    let o = guestbox_in(home.path())
        .args(["ls", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().any(|r| r["id"] == id && r["damaged"].is_null()));
    assert!(rows.iter().any(|r| r["id"] == damaged_id
        && r["damaged"]
            .as_str()
            .is_some_and(|d| d.contains("manifest"))));
}

/// `guestbox images` in the empty home `home` with `TMPDIR` set to `tmpdir`, and the build
/// directory it works in, once `busy` says its tools are at work there.
// The child goes to the caller, who waits for it: clippy cannot see through the return.
#[allow(clippy::zombie_processes)]
fn image_build_started(
    home: &Path,
    tmpdir: &Path,
    stderr: Stdio,
    within: Duration,
    busy: impl Fn(&std::process::Child, &Path) -> bool,
) -> (std::process::Child, PathBuf) {
    let images = home.join("cache/images");
    let child = Command::new(env!("CARGO_BIN_EXE_guestbox"))
        .env("GUESTBOX_HOME", home)
        .env("TMPDIR", tmpdir)
        .args(["images"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let found = std::fs::read_dir(&images)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
            });
        if let Some(t) = found {
            if busy(&child, &t) {
                return (child, t);
            }
        }
        if started.elapsed() >= within {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            panic!("no image build started within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_interrupted_image_build_leaves_nothing_behind() {
    let home = tempfile::tempdir().unwrap();
    let tmpdir = tempfile::tempdir().unwrap();
    let images = home.path().join("cache/images");
    // Wait until a build directory exists and mmdebstrap is working in it.
    let (child, tmp) = image_build_started(
        home.path(),
        tmpdir.path(),
        Stdio::piped(),
        Duration::from_secs(60),
        |_, t| !pids_matching(&t.to_string_lossy()).is_empty(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!tmp.exists(), "{} was left behind", tmp.display());
    let left = pids_matching(&tmp.to_string_lossy());
    assert!(
        left.is_empty(),
        "build processes {left:?} outlived guestbox"
    );
    // Artifacts are directories (the index-*.txt pointer is a record of the mirror's index).
    let registered: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(
        registered.is_empty(),
        "half-made artifacts registered: {registered:?}"
    );
    assert_empty(tmpdir.path());
}

/// Fails naming what a command left in `dir` (its TMPDIR).
fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

#[test]
fn forcing_kvm_where_it_cannot_run_guests_fails_clearly_and_auto_falls_back() {
    // `auto` must settle on an accelerator that boots (TCG here, KVM where it works).
    let o = guestbox()
        .args(["boot", "guest", "--accel", "auto", "--timeout", "300"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("guest ready in"), "{out}");
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let o = guestbox()
        .args(["boot", "guest", "--accel", "kvm", "--timeout", "20"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    if out.contains("ready in") {
        assert!(kvm_usable);
        assert!(out.contains("(kvm)"), "{out}");
    } else if kvm_usable {
        // A KVM that aborts or hangs the guest: a clear error, not a hang.
        assert_eq!(o.status.code(), Some(125), "{err}");
        assert!(
            err.contains("stopped before it was ready") || err.contains("did not become ready"),
            "{err}"
        );
    } else {
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("/dev/kvm"), "{err}");
    }
}

#[test]
fn windows_bootstrap_emits_media_and_stage_scripts_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = fake_cygwin_mirror_for(tmp.path(), "x86_64");
    let iso = tmp.path().join("win.iso");
    std::fs::write(&iso, vec![0u8; 4096]).unwrap();
    let out = tmp.path().join("emit");
    let o = guestbox()
        .args([
            "bootstrap",
            "--profile",
            "windows",
            "--edition",
            "Windows 11 Pro",
        ])
        .arg("--iso")
        .arg(&iso)
        .arg("--cygwin-mirror")
        .arg(&mirror)
        .arg("--emit")
        .arg(&out)
        .env("GUESTBOX_WINDOWS_PASSWORD", "Secret-Pa55word")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    for f in [
        "floppy.img",
        "cygwin.iso",
        "Autounattend.xml",
        "1-install.sh",
        "2-first-boot.sh",
        "controller-key",
    ] {
        assert!(out.join(f).is_file(), "{f} missing; wrote: {stdout}");
    }
    let answer = std::fs::read_to_string(out.join("Autounattend.xml")).unwrap();
    assert!(answer.contains("Windows 11 Pro"));
    let public = std::fs::read_to_string(out.join("controller-key.pub")).unwrap();
    let key_body = public.split_whitespace().nth(1).unwrap();
    let floppy = std::fs::read(out.join("floppy.img")).unwrap();
    assert!(
        floppy
            .windows(key_body.len())
            .any(|w| w == key_body.as_bytes()),
        "the controller key is not on the floppy"
    );
    assert!(
        !stdout.contains("Secret-Pa55word") && !stderr.contains("Secret-Pa55word"),
        "the password was printed"
    );
    let install = std::fs::read_to_string(out.join("1-install.sh")).unwrap();
    assert!(install.contains("qemu-system-x86_64"), "{install}");
    let check = Command::new("bash")
        .arg("-n")
        .arg(out.join("1-install.sh"))
        .output()
        .unwrap();
    assert!(check.status.success());
    // It started nothing.
    assert!(pids_matching(&out.to_string_lossy()).is_empty());

    // Without --emit the bootstrap goes all the way (the stand-in tests run it); only
    // --run-install needs --emit, and it says so before starting anything.
    let o = guestbox()
        .args(["bootstrap", "--profile", "windows", "--run-install"])
        .arg("--iso")
        .arg(&iso)
        .arg("--cygwin-mirror")
        .arg(&mirror)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--emit"), "{}", text(&o).1);
    let o = guestbox()
        .args(["bootstrap", "--profile", "windows-xp", "--emit", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--iso"));
    let o = guestbox()
        .args([
            "bootstrap",
            "--profile",
            "windows",
            "--cygwin-mirror",
            "/no/mirror",
            "--emit",
        ])
        .arg(tmp.path().join("e2"))
        .arg("--iso")
        .arg(&iso)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("/no/mirror"), "{}", text(&o).1);
}

#[test]
fn shell_gives_a_terminal_and_returns_its_exit_code() {
    // Make sure the default base exists, then drive `guestbox shell` through a pty.
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("{} shell", env!("CARGO_BIN_EXE_guestbox")),
            "/dev/null",
        ])
        .env("GUESTBOX_HOME", test_home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(Duration::from_secs(5));
        stdin
            .write_all(b"echo answer-$((6*7)); tty; exit 3\n")
            .unwrap();
        std::thread::sleep(Duration::from_secs(5));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("answer-42"), "{stdout}");
    assert!(
        stdout.contains("/dev/pts/"),
        "the guest shell has no terminal: {stdout}"
    );
}

fn alive(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILLs `child` (no chance to clean up) and checks that everything it started dies
/// with it.
fn kill_and_check_orphans(child: &mut std::process::Child, what: &str) {
    let below = descendants(child.id() as i32);
    assert!(
        !below.is_empty(),
        "{what}: guestbox had started nothing yet"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive(&below).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        alive(&below).is_empty(),
        "{what}: processes {:?} outlived a SIGKILLed guestbox",
        alive(&below)
    );
}

fn gc_removes(home: &Path, leftover: &Path) {
    assert!(
        leftover.exists(),
        "{} should be left to gc",
        leftover.display()
    );
    let o = Command::new(env!("CARGO_BIN_EXE_guestbox"))
        .env("GUESTBOX_HOME", home)
        .args(["gc"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert!(!leftover.exists(), "gc left {}", leftover.display());
}

/// `guestbox run -- sleep 300` in `home`, once its run has started (the default base made
/// first, so that it revives): the process and its run directory's name.
fn sleeping_run(home: &Path) -> (std::process::Child, String) {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let child = guestbox()
        .args(["run", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (run_dir, _) = started_run(home, child.id());
    std::thread::sleep(Duration::from_secs(2));
    (child, run_dir)
}

#[test]
fn sigkill_during_a_run_leaves_no_process_and_gc_cleans_up() {
    let home = test_home();
    let (mut child, run_dir) = sleeping_run(&home);
    kill_and_check_orphans(&mut child, "run");
    assert!(pids_matching(&run_dir).is_empty());
    gc_removes(&home, &home.join("runs").join(&run_dir));
    let o = guestbox()
        .args(["run", "--", "echo", "again"])
        .output()
        .unwrap();
    assert_eq!(text(&o).0, "again\n", "{}", text(&o).1);
}

/// `killall -9 guestbox` (every process named guestbox at once, as a user or a CI
/// runner's cleanup does), and SIGTERM first to everything whose command line names
/// guestbox (`pkill -f`): the keepers of QEMUs that left root are not named guestbox and
/// ignore SIGTERM, so no QEMU outlives them.
#[test]
fn killall_guestbox_leaves_no_qemu() {
    let home = test_home();
    let (mut child, run_dir) = sleeping_run(&home);
    let mut ours = descendants(child.id() as i32);
    ours.push(child.id() as i32);
    let comm = |p: i32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let exe = env!("CARGO_BIN_EXE_guestbox");
    for &p in &ours {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(exe) && p != child.id() as i32 {
            // SAFETY: a signal to a process this test started (or its descendant).
            unsafe { libc::kill(p, libc::SIGTERM) };
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for &p in &ours {
        if comm(p).trim() == "guestbox" {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive(&ours).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<String> = alive(&ours)
        .into_iter()
        .map(|p| format!("{p} {}", comm(p).trim()))
        .collect();
    assert!(left.is_empty(), "outlived killall guestbox: {left:?}");
    assert!(pids_matching(&run_dir).is_empty());
}

#[test]
fn sigkill_during_bootstrap_registers_nothing_and_gc_cleans_up() {
    let home = test_home();
    // Inputs of their own (memory), so this bootstrap builds a new base; killed while the
    // guest boots, then again while the pair is frozen into the base.
    for (stage, delay) in [("booting the guest", 3000), ("freezing both VMs", 0)] {
        let mut child = guestbox()
            .args([
                "bootstrap",
                "--memory",
                "1040M",
                "--name",
                "killed-bootstrap",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let mut seen = String::new();
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.contains(stage) {
                        break;
                    }
                }
                _ => panic!("bootstrap never reached {stage:?}:\n{seen}"),
            }
        }
        std::thread::sleep(Duration::from_millis(delay));
        let tmp: Vec<PathBuf> = std::fs::read_dir(home.join("bases"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .collect();
        kill_and_check_orphans(&mut child, stage);
        assert_eq!(
            tmp.len(),
            1,
            "{stage}: expected one base in the making: {tmp:?}"
        );
        let o = guestbox().args(["ls", "--json"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        assert!(
            !text(&o).0.contains("killed-bootstrap"),
            "{stage}: a killed bootstrap registered a base: {}",
            text(&o).0
        );
        gc_removes(&home, &tmp[0]);
    }
}

#[test]
fn sigkill_during_an_image_build_leaves_no_process_or_mount() {
    let home = tempfile::tempdir().unwrap();
    let tmpdir = tempfile::tempdir().unwrap();
    // Wait until apt or dpkg works inside a build directory (mmdebstrap's grandchildren).
    let (mut child, tmp) = image_build_started(
        home.path(),
        tmpdir.path(),
        Stdio::null(),
        Duration::from_secs(120),
        |c, _| descendants(c.id() as i32).len() >= 3,
    );
    std::thread::sleep(Duration::from_secs(3));
    kill_and_check_orphans(&mut child, "image build");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*tmp.to_string_lossy()),
        "mounts under {} outlived guestbox",
        tmp.display()
    );
    gc_removes(home.path(), &tmp);
    // SIGKILL leaves no chance to clean up: nothing may have been put in TMPDIR to begin with.
    assert_empty(tmpdir.path());
}

/// Peak resident memory of a live process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_gigabyte_of_output_streams_through_in_bounded_memory() {
    const SIZE: u64 = 1 << 30;
    let mut child = guestbox()
        .args(["run", "--", "head", "-c", "1G", "/dev/zero"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let mut total = 0u64;
    let mut nonzero = false;
    let mut peak = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        nonzero |= buf[..n].iter().any(|b| *b != 0);
        total += n as u64;
        // Sample as it goes; the last sample before exit is the process's peak so far.
        if total % (32 << 20) < n as u64 {
            peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        }
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(total, SIZE, "bytes lost or added");
    assert!(!nonzero, "output corrupted");
    assert!(peak > 0, "never sampled guestbox's memory");
    assert!(
        peak < 64 * 1024,
        "guestbox's peak memory was {peak} KiB while streaming 1 GiB"
    );
}

#[test]
fn the_most_verbose_log_carries_no_secret() {
    // A cold run sends the base's secrets to the controller (setup): the path most likely
    // to log them.
    let o = guestbox()
        .env("GUESTBOX_LOG", "trace")
        .args(["run", "--cold", "--", "true"])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("qemu command line"),
        "not the verbose log: {err}"
    );
    let id = default_base_id();
    let secrets: serde_json::Value = serde_json::from_slice(
        &std::fs::read(test_home().join("bases").join(id).join("secrets.json")).unwrap(),
    )
    .unwrap();
    let password = secrets["smb_password"].as_str().unwrap();
    let key_line = secrets["client_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap();
    assert!(password.len() >= 16 && key_line.len() >= 20);
    assert!(!err.contains(password), "the SMB password is in the log");
    assert!(!err.contains(key_line), "the client key is in the log");
}

/// A bootable stand-in for a Windows ISO (El Torito, no emulation, made by xorriso): its
/// 16-bit boot program prints `message` on COM1 and powers the q35 machine off through
/// the ACPI PM1a control register, whose base it reads from the ICH9 LPC's PMBASE.
fn fake_windows_iso(root: &Path, message: &str) -> PathBuf {
    let mut code: Vec<u8> = vec![
        0x0E, // push cs
        0x1F, // pop ds
        0xE8, 0x00, 0x00, // call next
        0x5E, // next: pop si
        0x83, 0xC6, 0x00, // add si, msg - next (patched below)
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8 (COM1)
        0xAC, // print: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp print
        0x66, 0xB8, 0x40, 0xF8, 0x00, 0x80, // done: mov eax, 0x8000f840 (00:1f.0 reg 0x40)
        0xBA, 0xF8, 0x0C, // mov dx, 0xcf8
        0x66, 0xEF, // out dx, eax
        0xBA, 0xFC, 0x0C, // mov dx, 0xcfc
        0xED, // in ax, dx (PMBASE | 1)
        0x25, 0xFE, 0xFF, // and ax, 0xfffe
        0x05, 0x04, 0x00, // add ax, 4 (PM1a_CNT)
        0x89, 0xC2, // mov dx, ax
        0xB8, 0x00, 0x20, // mov ax, 0x2000 (SLP_EN, type 0: soft off)
        0xEF, // out dx, ax
        0xF4, // hlt
        0xEB, 0xFD, // jmp hlt
    ];
    code[8] = (code.len() - 5) as u8;
    code.extend_from_slice(message.as_bytes());
    code.extend_from_slice(b"\r\n\0");
    code.resize(2048, 0);
    let tree = root.join("iso-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("boot.bin"), &code).unwrap();
    let iso = root.join("fake-windows.iso");
    let o = Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-b",
            "boot.bin",
            "-no-emul-boot",
        ])
        .args(["-boot-load-size", "4", "-o"])
        .arg(&iso)
        .arg(&tree)
        .output()
        .expect("xorriso (scripts/setup --with-tests)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    iso
}

fn windows_install(root: &Path, iso: &Path) -> Output {
    let mirror = fake_cygwin_mirror_for(root, "x86_64");
    guestbox()
        .args(["bootstrap", "--profile", "windows", "--accel", "tcg"])
        .arg("--iso")
        .arg(iso)
        .arg("--cygwin-mirror")
        .arg(&mirror)
        .arg("--emit")
        .arg(root.join("emit"))
        .args(["--run-install", "--install-timeout", "120s"])
        .output()
        .unwrap()
}

#[test]
fn the_install_stage_runs_from_guestbox_and_reads_its_end_from_com1() {
    // Success: the boot program says what the real bootstrap says at its end.
    let tmp = tempfile::tempdir().unwrap();
    let iso = fake_windows_iso(tmp.path(), "GUESTBOX-BOOTSTRAP-OK");
    let o = windows_install(tmp.path(), &iso);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("install stage done"), "{out}");
    assert!(
        tmp.path().join("emit/disk.qcow2").is_file(),
        "no Windows disk made"
    );
    let com1 = std::fs::read_to_string(tmp.path().join("emit/run/install.console.log")).unwrap();
    assert!(com1.contains("GUESTBOX-BOOTSTRAP-OK"), "{com1}");
    assert!(pids_matching(&tmp.path().to_string_lossy()).is_empty());

    // Failure at a step: named.
    let tmp = tempfile::tempdir().unwrap();
    let iso = fake_windows_iso(tmp.path(), "GUESTBOX-BOOTSTRAP-FAILED: cygwin-setup");
    let o = windows_install(tmp.path(), &iso);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("failed at step \"cygwin-setup\""), "{err}");

    // Powered off without a word: said so.
    let tmp = tempfile::tempdir().unwrap();
    let iso = fake_windows_iso(tmp.path(), "something else");
    let o = windows_install(tmp.path(), &iso);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("without GUESTBOX-BOOTSTRAP-OK"), "{err}");
}

/// A hand-made Cygwin mirror (Base + openssh + cygrunsrv, real sizes and SHA-512s) for
/// `arch` ("x86" or "x86_64"), with the setup program named as guestbox looks for it next
/// to the mirror.
fn fake_cygwin_mirror_for(root: &Path, arch: &str) -> PathBuf {
    let dir = root.join("https%3a%2f%2fmirror.example%2fcygwin%2f");
    let mut ini = format!("release: cygwin\narch: {arch}\nsetup-timestamp: 1717243200\n\n");
    for (name, category) in [
        ("base-cygwin", "Base"),
        ("openssh", "Net"),
        ("cygrunsrv", "Admin"),
    ] {
        let rel = format!("{arch}/release/{name}/{name}-1.0-1.tar.xz");
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("fake {name} {arch}").repeat(20)).unwrap();
        let sum = Command::new("sha512sum").arg(&path).output().unwrap();
        let sum = String::from_utf8(sum.stdout).unwrap()[..128].to_string();
        let size = std::fs::metadata(&path).unwrap().len();
        ini.push_str(&format!(
            "@ {name}\nsdesc: \"{name}\"\ncategory: {category}\nversion: 1.0-1\ninstall: {rel} {size} {sum}\n\n"
        ));
    }
    std::fs::write(dir.join(arch).join("setup.ini"), ini).unwrap();
    std::fs::write(root.join(format!("setup-{arch}.exe")), b"MZ fake setup").unwrap();
    dir
}

/// `guestbox bootstrap --profile PROFILE --emit OUT` with a stand-in ISO and mirror in
/// `root`; `password` None leaves GUESTBOX_WINDOWS_PASSWORD unset.
fn windows_emit(
    root: &Path,
    profile: &str,
    out: &Path,
    password: Option<&str>,
    extra: &[&str],
) -> Output {
    let arch = if profile == "windows-xp" {
        "x86"
    } else {
        "x86_64"
    };
    let mirror = fake_cygwin_mirror_for(root, arch);
    let iso = root.join("win.iso");
    std::fs::write(&iso, vec![0u8; 4096]).unwrap();
    let mut c = guestbox();
    c.args(["bootstrap", "--profile", profile])
        .arg("--iso")
        .arg(&iso)
        .arg("--cygwin-mirror")
        .arg(&mirror)
        .arg("--emit")
        .arg(out)
        .args(extra)
        .env_remove("GUESTBOX_WINDOWS_PASSWORD");
    if profile == "windows-xp" {
        c.args(["--product-key", "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"]);
    }
    if let Some(p) = password {
        c.env("GUESTBOX_WINDOWS_PASSWORD", p);
    }
    c.output().unwrap()
}

#[test]
fn windows_xp_bootstrap_emits_its_files_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("xp");
    let o = windows_emit(
        tmp.path(),
        "windows-xp",
        &out,
        Some("Xp-Secret-77"),
        &[
            "--timezone",
            "W. Europe Standard Time",
            "--locale",
            "de-DE",
            "--memory",
            "1G",
        ],
    );
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    for f in [
        "floppy.img",
        "cygwin.iso",
        "winnt.sif",
        "bootstrap.cmd",
        "bootstrap.sh",
        "authorized_keys",
        "1-install.sh",
        "2-first-boot.sh",
        "controller-key",
        "controller-key.pub",
        "admin-password",
    ] {
        assert!(out.join(f).is_file(), "{f} missing; wrote: {stdout}");
    }
    assert!(!out.join("Autounattend.xml").exists());
    assert!(!out.join("OVMF_VARS.fd").exists());
    let sif = std::fs::read_to_string(out.join("winnt.sif")).unwrap();
    for line in [
        "TimeZone=110\r\n",
        "Language=00000407\r\n",
        "AdminPassword=\"Xp-Secret-77\"\r\n",
        "UnattendMode=FullUnattended\r\n",
    ] {
        assert!(sif.contains(line), "{line:?} not in:\n{sif}");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("admin-password")).unwrap(),
        "Xp-Secret-77"
    );
    let install = std::fs::read_to_string(out.join("1-install.sh")).unwrap();
    // --memory 1G is taken as given, not as "not given" (XP's default is 512M).
    assert!(install.contains("\n  -m \\\n  1024M \\\n"), "{install}");
    assert!(install.contains("rtl8139"), "{install}");
    // auto means tcg in emitted scripts, and the output says how to get KVM.
    assert!(install.contains("\n  -accel \\\n  tcg \\\n"), "{install}");
    assert!(stdout.contains("--accel kvm"), "{stdout}");
    assert!(!stdout.contains("Xp-Secret-77") && !stderr.contains("Xp-Secret-77"));
    assert!(pids_matching(&out.to_string_lossy()).is_empty());

    // --accel kvm gives KVM command lines (emit starts nothing, so needs no /dev/kvm).
    let kvm = tmp.path().join("xp-kvm");
    let o = windows_emit(tmp.path(), "windows-xp", &kvm, None, &["--accel", "kvm"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let install = std::fs::read_to_string(kvm.join("1-install.sh")).unwrap();
    assert!(install.contains("\n  -accel \\\n  kvm \\\n"), "{install}");
    assert!(install.contains("\n  -m \\\n  512M \\\n"), "{install}");

    // XP knows numbers, not names: what cannot be mapped is refused, with the list.
    for (flag, value, listed) in [
        ("--timezone", "Europe/Berlin", "W. Europe Standard Time"),
        ("--locale", "pt-BR", "ja-JP"),
    ] {
        let bad = tmp.path().join("bad");
        let o = windows_emit(tmp.path(), "windows-xp", &bad, None, &[flag, value]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(flag) && err.contains(value) && err.contains(listed),
            "{err}"
        );
        assert!(!bad.exists(), "a refused emit wrote {}", bad.display());
    }
}

#[test]
fn windows_generated_password_is_kept_owner_only_reused_and_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("win");
    let o = windows_emit(tmp.path(), "windows", &out, None, &[]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let file = out.join("admin-password");
    let password = std::fs::read_to_string(&file).unwrap();
    assert!(password.len() >= 12, "{password:?}");
    // Windows' default complexity rules: three of upper, lower, digit, symbol.
    assert!(password.chars().any(|c| c.is_ascii_uppercase()));
    assert!(password.chars().any(|c| c.is_ascii_lowercase()));
    assert!(password.chars().any(|c| c.is_ascii_digit()));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !stdout.contains(&password) && !stderr.contains(&password),
        "the generated password was printed"
    );
    assert!(stdout.contains("admin-password"), "{stdout}");
    let answer = std::fs::read_to_string(out.join("Autounattend.xml")).unwrap();
    assert!(answer.contains(&format!("<Value>{password}</Value>")));
    let floppy = std::fs::read(out.join("floppy.img")).unwrap();
    let iso = std::fs::read(out.join("cygwin.iso")).unwrap();

    // Again into the same directory, no password given: the kept one, the same bytes.
    let o = windows_emit(tmp.path(), "windows", &out, None, &[]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains(&password) && !stderr.contains(&password));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), password);
    assert!(std::fs::read(out.join("floppy.img")).unwrap() == floppy);
    assert!(std::fs::read(out.join("cygwin.iso")).unwrap() == iso);

    // Another directory gets another password.
    let other = tmp.path().join("other");
    let o = windows_emit(tmp.path(), "windows", &other, None, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_ne!(
        std::fs::read_to_string(other.join("admin-password")).unwrap(),
        password
    );

    // GUESTBOX_WINDOWS_PASSWORD set but empty: a usage error, nothing rewritten.
    let o = windows_emit(tmp.path(), "windows", &out, Some(""), &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("GUESTBOX_WINDOWS_PASSWORD") && err.contains("empty"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), password);
    assert!(std::fs::read(out.join("floppy.img")).unwrap() == floppy);
}

#[test]
fn windows_emit_gives_identical_floppy_and_iso_for_the_same_inputs() {
    for profile in ["windows", "windows-xp"] {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        let o = windows_emit(tmp.path(), profile, &a, Some("Same-Pa55"), &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        // The same inputs include the controller's key, which is made per directory.
        std::fs::create_dir_all(&b).unwrap();
        for k in ["controller-key", "controller-key.pub"] {
            std::fs::copy(a.join(k), b.join(k)).unwrap();
        }
        // Cross a FAT/ISO timestamp tick: a leaked clock would show.
        std::thread::sleep(Duration::from_millis(2100));
        let o = windows_emit(tmp.path(), profile, &b, Some("Same-Pa55"), &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        for f in ["floppy.img", "cygwin.iso"] {
            let (x, y) = (
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
            );
            assert!(x == y, "{profile}: {f} differs between two emits");
        }
        // And a different password gives a different floppy (the check can fail).
        let c = tmp.path().join("c");
        std::fs::create_dir_all(&c).unwrap();
        for k in ["controller-key", "controller-key.pub"] {
            std::fs::copy(a.join(k), c.join(k)).unwrap();
        }
        let o = windows_emit(tmp.path(), profile, &c, Some("Other-Pa55"), &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        assert!(
            std::fs::read(a.join("floppy.img")).unwrap()
                != std::fs::read(c.join("floppy.img")).unwrap()
        );
    }
}

/// `guestbox shell` as a person uses it, in a real 120x30 terminal (tmux): each output line
/// starts in the first column (the guest's terminal does its own output processing and the
/// host passes bytes through), the guest sees the terminal's size, and follows a resize.
#[test]
fn shell_in_a_real_terminal_draws_no_staircase_and_follows_resizes() {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let tmux = Tmux::new("shell");
    let shell = format!(
        "env GUESTBOX_HOME='{}' '{}' shell",
        test_home().display(),
        env!("CARGO_BIN_EXE_guestbox")
    );
    let o = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "30",
        &shell,
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    tmux.wait_for("shell prompt", |l| l.ends_with('#'));
    tmux.cmd(&[
        "send-keys",
        "-t",
        "t",
        "echo $((6*7)); tty; stty size",
        "Enter",
    ]);
    let screen = tmux.wait_for("stty size", |l| l == "30 120");
    let at = |want: &dyn Fn(&str) -> bool| screen.iter().position(|l| want(l));
    let (answer, tty, size) = (
        at(&|l| l == "42"),
        at(&|l| l.starts_with("/dev/pts/")),
        at(&|l| l == "30 120"),
    );
    assert!(
        answer.is_some() && tty.is_some() && size.is_some() && answer < tty && tty < size,
        "each line must start in the first column:\n{}",
        screen.join("\n")
    );
    tmux.cmd(&["resize-window", "-t", "t", "-x", "100", "-y", "25"]);
    std::thread::sleep(Duration::from_secs(1));
    tmux.cmd(&["send-keys", "-t", "t", "clear; stty size", "Enter"]);
    tmux.wait_for("the new size", |l| l == "25 100");
    tmux.cmd(&["send-keys", "-t", "t", "exit", "Enter"]);
}

/// `guestbox doctor` checks the host and the default base and says so in a table; a
/// qemu-img of another QEMU release than qemu-system-x86_64 is named, and fails it.
#[test]
fn doctor_checks_the_host_and_the_base_and_names_what_fails() {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let o = guestbox().arg("doctor").output().unwrap();
    let (out, err) = text(&o);
    for (name, verdict) in [
        ("qemu-system-x86_64", "ok"),
        ("QEMU release", "ok"),
        ("free space", "ok"),
        ("unique randomness", "ok"),
        ("guest clock", "ok"),
        ("no route out", "ok"),
        ("share fidelity", "ok"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(name) && l[name.len()..].trim_start().starts_with(verdict)),
            "{name} not {verdict}:\n{out}"
        );
    }
    // Nothing fails on a host set up by scripts/setup with the default base.
    assert!(!out.lines().any(|l| l.contains(" FAIL ")), "{out}");
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    // A qemu-img of QEMU 10 beside qemu-system-x86_64 7.2: what a half-done set-up leaves.
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("qemu-img");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'qemu-img version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = guestbox()
        .args(["doctor", "--revives", "2"])
        .env("PATH", path)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("QEMU release") && l.contains("FAIL") && l.contains("10.0")),
        "{out}"
    );
    assert!(err.contains("QEMU release"), "{err}");
}
