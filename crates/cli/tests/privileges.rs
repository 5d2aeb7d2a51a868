//! Least privilege (issue #15), as users meet it: a user without root goes from an empty
//! GUESTBOX_HOME to a run (images built in a user namespace, the guest's files still
//! root's with their modes), and every QEMU guestbox starts — KVM probe, boot check,
//! bootstrap, run — is sandboxed and, when guestbox runs as root, not root.
//!
//! Run as root (as CI does), the tests make their own user without root (`guestbox-test`,
//! with subordinate ids, as `scripts/setup` gives a person) and run guestbox as it.

mod common;
use common::{descendants, guestbox, live_cmdline, test_home, text};

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guestbox::host::users::Ids;

/// (uid, Seccomp, NoNewPrivs) of a process.
type Status = (u32, u32, u32);
/// A QEMU's name (`-name`) and how it last ran.
type Seen = (String, Status);

/// (uid, Seccomp, NoNewPrivs) of a process, None once it is gone.
fn status_of(pid: i32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Seccomp:")?, field("NoNewPrivs:")?))
}

/// Watches every QEMU below a guestbox process while it runs and keeps the last status
/// each had: a QEMU installs its sandbox and leaves root while it starts, so what counts
/// is how it ran, not its first moments.
struct QemuWatch {
    seen: Arc<Mutex<BTreeMap<i32, Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QemuWatch {
    fn new(guestbox_pid: u32) -> QemuWatch {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                for pid in descendants(guestbox_pid as i32) {
                    let Some(cmd) = live_cmdline(pid) else {
                        continue;
                    };
                    let program = cmd.split(' ').next().unwrap_or_default();
                    if !program
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .starts_with("qemu-system")
                    {
                        continue;
                    }
                    // A VM: guestbox names each. (It also asks QEMU `--version` and
                    // `-machine help`, which start no machine and run no guest code.)
                    let Some(name) = cmd
                        .split(' ')
                        .skip_while(|a| *a != "-name")
                        .nth(1)
                        .map(str::to_string)
                    else {
                        continue;
                    };
                    if let Some(status) = status_of(pid) {
                        s.lock().unwrap().insert(pid, (name, status));
                    }
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        QemuWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Every QEMU seen: (name, (uid, Seccomp, NoNewPrivs)) as it last ran.
    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let seen = self.seen.lock().unwrap();
        seen.values().cloned().collect()
    }
}

/// Waits for `child`, watching its QEMUs.
fn watched(mut child: Child) -> (Output, Vec<Seen>) {
    let watch = QemuWatch::new(child.id());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stdout.as_mut() {
            std::io::Read::read_to_end(s, &mut b).unwrap();
        }
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stderr.as_mut() {
            std::io::Read::read_to_end(s, &mut b).unwrap();
        }
        b
    });
    let status = child.wait().unwrap();
    let qemus = watch.finish();
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (output, qemus)
}

fn assert_confined(qemus: &[Seen], want_uid: impl Fn(&str) -> u32, what: &str) {
    for (name, (uid, seccomp, nnp)) in qemus {
        assert_eq!(
            (*seccomp, *nnp),
            (2, 1),
            "{what}: QEMU {name} ran without its seccomp sandbox"
        );
        assert_eq!(*uid, want_uid(name), "{what}: QEMU {name} ran as uid {uid}");
        if Ids::current().is_root() {
            assert_ne!(*uid, 0, "{what}: QEMU {name} ran as root");
        }
    }
}

/// A directory for the user's home that every ancestor lets the user reach (a checkout
/// under /root would not).
fn reachable_dir(name: &str) -> PathBuf {
    let candidates = [
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")),
        PathBuf::from("/var/tmp"),
    ];
    for c in candidates {
        let Ok(c) = c.canonicalize() else { continue };
        let open = c
            .ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 != 0));
        if open {
            return c.join(name);
        }
    }
    panic!("no directory a user without root can reach");
}

/// The user without root the tests run guestbox as: the test user when the tests run as
/// root, else whoever runs them.
fn unprivileged() -> Ids {
    if Ids::current().is_root() {
        common::test_user()
    } else {
        Ids::current()
    }
}

/// The guestbox binary run as `who` in `home`, from a copy `who` can reach.
fn guestbox_as(who: Ids, home: &Path, bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GUESTBOX_HOME", home)
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in ["GUESTBOX_DEBIAN_MIRROR", "GUESTBOX_DEBIAN_SECURITY_MIRROR"] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    if Ids::current().is_root() {
        // std drops root's supplementary groups along with the ids.
        c.uid(who.uid).gid(who.gid);
    }
    c
}

/// Removes what an earlier run of the test left (root: anything; a user: through a user
/// namespace for subordinate ids' files).
fn clean(dir: &Path) {
    if dir.exists() {
        guestbox::host::userns::remove_tree(dir).unwrap();
    }
}

/// What the guest's own files must be, owner:group mode, as a root build makes them (from
/// a root-built image: every entry of it, listed, is the same in a user-namespace build).
const GUEST_FILES: &[(&str, &str)] = &[
    ("/etc/shadow", "0:42 640"),
    ("/etc/gshadow", "0:42 640"),
    ("/usr/bin/passwd", "0:0 4755"),
    ("/usr/bin/su", "0:0 4755"),
    ("/usr/bin/chage", "0:42 2755"),
    ("/usr/lib/openssh/ssh-keysign", "0:0 4755"),
    ("/root", "0:0 700"),
    ("/root/.ssh", "0:0 700"),
    ("/root/.ssh/authorized_keys", "0:0 600"),
    ("/etc/ssh/ssh_host_ed25519_key", "0:0 600"),
    ("/etc/guestbox/rc", "0:0 755"),
    ("/var/mail", "0:8 2775"),
    ("/var/cache/apt/archives/partial", "42:0 700"),
    ("/var/log/wtmp", "0:43 664"),
];

#[test]
fn a_user_without_root_goes_from_an_empty_home_to_a_run() {
    let who = unprivileged();
    let top = reachable_dir("guestbox-rootless-test");
    clean(&top);
    std::fs::create_dir_all(&top).unwrap();
    let (home, bin, src, out) = (
        top.join("home"),
        top.join("bin"),
        top.join("src"),
        top.join("out"),
    );
    for d in [&home, &bin, &src, &out] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_guestbox"), bin.join("guestbox")).unwrap();
    let bin = bin.join("guestbox");
    std::fs::write(src.join("hello.txt"), "hello\n").unwrap();
    if Ids::current().is_root() {
        for p in [&top, &home, &src, &out, &src.join("hello.txt")] {
            guestbox::host::users::chown(p, who).unwrap();
        }
    }

    // The README's main command, with an output directory too, from an empty home: it
    // builds the images and bootstraps the base first.
    let stat: Vec<&str> = GUEST_FILES.iter().map(|(p, _)| *p).collect();
    let script = format!(
        "ls hello.txt; stat -c '%n %u:%g %a' {}; echo made > /out/made.txt; exit 3",
        stat.join(" ")
    );
    let started = Instant::now();
    let child = guestbox_as(who, &home, &bin)
        .args(["run", "-v"])
        .arg(format!("{}:/src:ro", src.display()))
        .arg("-v")
        .arg(format!("{}:/out", out.display()))
        .args(["-w", "/src", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let (o, qemus) = watched(child);
    let (stdout, stderr) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(3),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!(
        "from an empty home to a run: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(stdout.starts_with("hello.txt\n"), "{stdout}");
    for (path, want) in GUEST_FILES {
        let line = format!("{path} {want}");
        assert!(
            stdout.lines().any(|l| l == line),
            "{path}: wanted {want}:\n{stdout}"
        );
    }
    // The output belongs to the user; so does everything guestbox made.
    let made = out.join("made.txt");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "made\n");
    assert_eq!(std::fs::metadata(&made).unwrap().uid(), who.uid);
    let images = home.join("cache/images");
    for e in std::fs::read_dir(&images).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".tmp-"), "a build left {name}");
        assert_eq!(e.metadata().unwrap().uid(), who.uid, "{name}");
    }
    // Bootstrap (a guest and a controller) and the run (both again): four QEMUs at least,
    // every one sandboxed, as the user.
    assert!(qemus.len() >= 4, "QEMUs seen: {qemus:?}");
    assert_confined(&qemus, |_| who.uid, "first run");

    // The same base, asked for by `bootstrap`, and a second run: revived.
    let o = guestbox_as(who, &home, &bin)
        .args(["bootstrap", "--accel", "tcg"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let child = guestbox_as(who, &home, &bin)
        .args(["run", "--", "true"])
        .spawn()
        .unwrap();
    let (o, qemus) = watched(child);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_confined(&qemus, |_| who.uid, "second run");

    // `shell`, in a terminal.
    let tmux = common::Tmux::new("rootless-shell");
    let mut shell = format!(
        "env GUESTBOX_HOME='{}' '{}' shell",
        home.display(),
        bin.display()
    );
    if Ids::current().is_root() {
        shell = format!(
            "setpriv --reuid={} --regid={} --clear-groups {shell}",
            who.uid, who.gid
        );
    }
    let o = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "100",
        "-y",
        "25",
        &shell,
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    tmux.wait_for("shell prompt", |l| l.ends_with('#'));
    tmux.cmd(&["send-keys", "-t", "t", "echo $((6*7))", "Enter"]);
    tmux.wait_for("the answer", |l| l == "42");
    tmux.cmd(&["send-keys", "-t", "t", "exit", "Enter"]);

    let o = guestbox_as(who, &home, &bin).arg("gc").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    clean(&top);
}

/// Every QEMU guestbox starts is sandboxed: the boot check's, a bootstrap's pair and a
/// run's pair. As root none of them is root: the guest's QEMU is the QEMU user, the
/// controller's the owner of the shared directories; otherwise all are the user's.
#[test]
fn every_qemu_of_boot_bootstrap_and_run_is_sandboxed_and_as_root_not_root() {
    let root = Ids::current().is_root();
    let (qemu_user, owner) = if root {
        (
            Ids::of_user(guestbox::machine::confine::QEMU_USER)
                .expect("the QEMU user exists (scripts/setup)"),
            common::test_user(),
        )
    } else {
        (Ids::current(), Ids::current())
    };
    // The default base exists (cheap when it does).
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);

    let piped = |c: &mut Command| {
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (o, qemus) = watched(piped(guestbox().args(["boot", "guest", "--accel", "tcg"])));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(qemus.len(), 1, "{qemus:?}");
    assert_confined(&qemus, |_| qemu_user.uid, "boot");

    // A base of its own (another memory size), removed first so that it is really
    // bootstrapped here.
    let _ = guestbox().args(["rm", "confined"]).output();
    let (o, qemus) = watched(piped(guestbox().args([
        "bootstrap",
        "--name",
        "confined",
        "--memory",
        "384M",
        "--accel",
        "tcg",
    ])));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(qemus.len(), 2, "{qemus:?}");
    assert_confined(&qemus, |_| qemu_user.uid, "bootstrap");

    let dir = tempfile::tempdir_in(test_home()).unwrap();
    if root {
        guestbox::host::users::chown(dir.path(), owner).unwrap();
    }
    let (o, qemus) = watched(piped(
        guestbox()
            .args(["run", "--base", "confined", "-v"])
            .arg(format!("{}:/out", dir.path().display()))
            .args(["--", "sh", "-c", "echo x > /out/f"]),
    ));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(qemus.len(), 2, "{qemus:?}");
    let controller_uid = |name: &str| {
        if name.contains("controller") {
            owner.uid
        } else {
            qemu_user.uid
        }
    };
    assert_confined(&qemus, controller_uid, "run");
    assert_eq!(
        std::fs::metadata(dir.path().join("f")).unwrap().uid(),
        owner.uid
    );
    let o = guestbox().args(["rm", "confined"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

/// Whether anything under `dir` (as far as `uid` can see) belongs to another user.
fn owned_by_another(dir: &Path, uid: u32) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.uid() != uid {
            return true;
        }
        if md.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    false
}

/// A user's image build SIGKILLed while apt and dpkg work in its user namespace: nothing
/// it started survives, and `gc`, run by the same user, removes the half-built tree (which
/// holds files of the user's subordinate ids).
#[test]
fn sigkill_during_a_rootless_image_build_leaves_no_process_and_gc_removes_the_tree() {
    let who = unprivileged();
    let top = reachable_dir("guestbox-rootless-kill-test");
    clean(&top);
    let (home, bin) = (top.join("home"), top.join("bin"));
    for d in [&home, &bin] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_guestbox"), bin.join("guestbox")).unwrap();
    let bin = bin.join("guestbox");
    if Ids::current().is_root() {
        for p in [&top, &home] {
            guestbox::host::users::chown(p, who).unwrap();
        }
    }
    let mut child = guestbox_as(who, &home, &bin)
        .arg("images")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // apt or dpkg at work: mmdebstrap's children, below unshare and mmdebstrap.
    let images = home.join("cache/images");
    let started = Instant::now();
    let tree = loop {
        let build = std::fs::read_dir(&images)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
            });
        let working = descendants(child.id() as i32)
            .iter()
            .any(|p| live_cmdline(*p).is_some_and(|c| c.contains("apt-get") || c.contains("dpkg")));
        // ... and a file of a subordinate id in the tree (apt's _apt owns its downloads).
        if let (Some(b), true) = (build, working) {
            if owned_by_another(&b, who.uid) {
                break b;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no image build started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(3));
    let below = descendants(child.id() as i32);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let alive = || -> Vec<i32> {
        below
            .iter()
            .copied()
            .filter(|p| live_cmdline(*p).is_some())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        alive().is_empty(),
        "processes {:?} outlived a SIGKILLed guestbox",
        alive()
    );
    assert!(tree.exists(), "{} should be left to gc", tree.display());
    let o = guestbox_as(who, &home, &bin).arg("gc").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert!(!tree.exists(), "gc left {}", tree.display());
    clean(&top);
}
