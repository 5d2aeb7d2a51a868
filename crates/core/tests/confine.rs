//! Every QEMU guestbox starts is confined (issue #15): a seccomp sandbox that kills a QEMU
//! trying to start a process, and, when guestbox runs as root, an unprivileged user; a
//! revived pair confined so still gets its shares, its output and its exit code.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use guestbox::host::users::Ids;
use guestbox::machine::confine::{Policy, QEMU_USER};
use guestbox::machine::spec::{Accel, Boot, Memory, Rtc, VmSpec};
use guestbox::machine::Vm;
use guestbox::run::{Session, SessionOptions, Volume};

/// (uid, Seccomp, NoNewPrivs) from /proc/PID/status.
fn status_of(pid: u32) -> (u32, u32, u32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u32 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the status of {pid}:\n{text}"))
    };
    (field("Uid:"), field("Seccomp:"), field("NoNewPrivs:"))
}

fn running_as_root() -> bool {
    Ids::current().is_root()
}

/// The user the guest's QEMU runs as: the QEMU user as root, ourselves otherwise.
fn expected_guest_uid() -> u32 {
    if running_as_root() {
        Ids::of_user(QEMU_USER)
            .expect("the QEMU user exists (scripts/setup)")
            .uid
    } else {
        Ids::current().uid
    }
}

/// A user that is not root and not the QEMU user, to own shared directories (root only).
fn share_owner() -> Ids {
    common::test_user()
}

/// The run directory of a QEMU: where its console file is (it is named on its command line).
fn run_dir_of(pid: u32) -> std::path::PathBuf {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let console = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .find_map(|a| {
            a.strip_prefix("file,id=console,path=")
                .map(|p| p.replace(",,", ","))
        })
        .expect("a console file on QEMU's command line");
    Path::new(&console).parent().unwrap().to_path_buf()
}

/// A revive that shares `src` read-only at /src and `out` writable at /out.
fn src_and_out(src: &Path, out: &Path) -> SessionOptions {
    let volume = |host: &Path, guest: &str, readonly| Volume {
        host: host.into(),
        guest: guest.into(),
        readonly,
    };
    SessionOptions {
        volumes: vec![volume(src, "/src", true), volume(out, "/out", false)],
        boot_timeout: Duration::from_secs(300),
        ..SessionOptions::default()
    }
}

#[tokio::test]
async fn a_qemu_that_tries_to_start_a_process_is_killed_by_its_sandbox() {
    let images = common::images();
    let dirs = common::dirs();
    let qemu = common::qemu();
    let scratch = tempfile::tempdir().unwrap();
    let short = guestbox::host::ShortDir::open(scratch.path()).unwrap();
    let spec = VmSpec {
        name: "sandbox-probe".into(),
        accel: Accel::Tcg,
        machine: "q35".into(),
        cpu: Accel::Tcg.cpu_model().into(),
        cpus: 1,
        memory_mib: 128,
        memory: Memory::Anonymous,
        boot: Boot::Kernel {
            kernel: images.kernel.vmlinuz.clone(),
            initrd: images.guest_initrd.clone(),
            append: "console=ttyS0 panic=-1 guestbox.probe".into(),
        },
        drives: vec![],
        nics: vec![],
        ports: vec![],
        shares: vec![],
        console_log: scratch.path().join("console.log"),
        qmp_socket: short.join("qmp.sock"),
        rtc: Rtc::default(),
        generation_id: None,
        incoming: false,
        platform: Default::default(),
        inherit: Some(short.clone()),
        cwd: None,
        confinement: Policy::for_host(&dirs.cache, &qemu).await.unwrap().plain(),
    };
    let mut vm = Vm::start(&qemu, spec).await.unwrap();
    vm.qmp().await.unwrap();
    let pid = vm.process.pid().unwrap();
    let (uid, seccomp, nnp) = status_of(pid);
    assert_eq!((seccomp, nnp), (2, 1), "QEMU {pid} is not sandboxed");
    assert_eq!(uid, expected_guest_uid());
    if running_as_root() {
        assert_ne!(uid, 0);
    }
    // The original's migration: a shell started by QEMU. Here it must never run.
    let marker = scratch.path().join("spawned");
    let uri = format!("exec:touch {}", marker.display());
    let q = vm.qmp().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), q.migrate(&uri)).await;
    assert!(
        !matches!(answer, Ok(Ok(()))),
        "QEMU accepted an exec: migration"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), vm.process.wait())
        .await
        .expect("QEMU was not killed")
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "QEMU should die of SIGSYS: {status}"
    );
    assert!(!marker.exists(), "the process QEMU tried to start ran");
}

#[tokio::test]
async fn a_confined_revived_pair_gets_its_shares_output_and_exit_code() {
    let store = common::store();
    let base = common::base();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("in.txt"), "input\n").unwrap();
    // As root: the directories belong to a user, whom the controller's QEMU becomes.
    let owner = if running_as_root() {
        let o = share_owner();
        for d in [src.path(), out.path()] {
            guestbox::host::users::chown(d, o).unwrap();
        }
        guestbox::host::users::chown(&src.path().join("in.txt"), o).unwrap();
        o
    } else {
        Ids::current()
    };
    let opts = src_and_out(src.path(), out.path());
    let session = Session::revive(&store, base, &opts).await.unwrap();
    let (g, c) = session.pids();
    let (g, c) = (g.unwrap(), c.unwrap());
    let (guid, gsec, gnnp) = status_of(g);
    let (cuid, csec, cnnp) = status_of(c);
    assert_eq!((gsec, gnnp, csec, cnnp), (2, 1, 2, 1), "not sandboxed");
    assert_eq!(guid, expected_guest_uid(), "guest QEMU's user");
    assert_eq!(cuid, owner.uid, "controller QEMU's user");
    if running_as_root() {
        // The guest's QEMU, which serves no share, is shut in an empty directory.
        let root = std::fs::read_link(format!("/proc/{g}/root")).unwrap();
        assert!(
            root.ends_with("empty"),
            "guest QEMU's root: {}",
            root.display()
        );
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        let root = std::fs::read_link(format!("/proc/{c}/root")).unwrap();
        assert_eq!(
            root,
            Path::new("/"),
            "the controller serves its shares by path"
        );
    }
    // Neither can reach the run directory by path: its disks and sockets were handed over.
    let run_dir = run_dir_of(g);
    assert_eq!(
        std::fs::metadata(&run_dir).unwrap().mode() & 0o777,
        0o700,
        "{}",
        run_dir.display()
    );

    let r = common::exec(
        session,
        &[
            "sh",
            "-c",
            "cat /src/in.txt; echo made > /out/made.txt; mkdir /out/d; echo oops >&2; exit 42",
        ],
    )
    .await;
    assert_eq!(r.code, 42, "stderr {}", r.stderr);
    assert_eq!(r.stdout, "input\n");
    assert_eq!(r.stderr, "oops\n");
    let made = out.path().join("made.txt");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "made\n");
    // What the job made belongs to the directory's owner, not root, not the QEMU user.
    for p in [made.as_path(), &out.path().join("d")] {
        let md = std::fs::metadata(p).unwrap();
        assert_eq!(md.uid(), owner.uid, "{}", p.display());
    }
    assert!(!Path::new(&run_dir).exists(), "the run directory stayed");
}

/// As root, directories of root and of another user (which no one user can serve) are
/// served by a controller QEMU that is root only in a user namespace: to the host it is the
/// QEMU user's first subordinate uid, sandboxed, with no groups; the guest sees the files'
/// true owners, what the job makes is root's on the host, a chown lands as asked, a
/// read-only share refuses writes, and QEMU reaches nothing by its plain paths. (Without
/// root there is no such case: the controller runs as the user, checked above.)
#[tokio::test]
async fn root_owned_shares_are_served_by_a_namespaced_qemu_with_true_owners() {
    if !running_as_root() {
        return;
    }
    let qemu_user = Ids::of_user(QEMU_USER).expect("the QEMU user exists (scripts/setup)");
    let sub = guestbox::machine::confine::SubIds::of_user(QEMU_USER, qemu_user.uid)
        .expect("scripts/setup gives the QEMU user subordinate ids");
    let store = common::store();
    let base = common::base();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("roots"), "r\n").unwrap();
    std::fs::write(src.path().join("users"), "u\n").unwrap();
    let user = share_owner();
    guestbox::host::users::chown(&src.path().join("users"), user).unwrap();
    let opts = src_and_out(src.path(), out.path());
    let session = Session::revive(&store, base, &opts).await.unwrap();
    let (_, c) = session.pids();
    let c = c.unwrap();
    let (cuid, csec, cnnp) = status_of(c);
    assert_eq!((cuid, csec, cnnp), (sub.uid, 2, 1), "controller QEMU");
    let status = std::fs::read_to_string(format!("/proc/{c}/status")).unwrap();
    let line = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    // No groups, but /dev/kvm's where QEMU uses KVM.
    let kvm_group = std::fs::metadata("/dev/kvm").map(|m| m.gid().to_string());
    assert!(
        line("Groups:")
            .split_whitespace()
            .skip(1)
            .all(|g| kvm_group.as_deref().is_ok_and(|k| k == g)),
        "{status}"
    );
    assert!(line("Gid:").contains(&sub.gid.to_string()), "{status}");
    // Every path on its command line is a descriptor it was handed.
    let cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        !cmdline.contains(&*store.bases.to_string_lossy())
            && !cmdline.contains(&*store.runs.to_string_lossy()),
        "a path into GUESTBOX_HOME: {cmdline}"
    );
    let user_ids = format!("{}:{}", user.uid, user.gid);
    let script = format!(
        "stat -c '%n %u:%g' /src/roots /src/users; echo made > /out/made; mkdir /out/d; \
         echo c > /out/given; chown 1234:4321 /out/given; \
         if echo no > /src/refused 2>/dev/null; then echo wrote; fi; \
         test \"$(stat -c %u:%g /src/users)\" = {user_ids}"
    );
    let r = common::exec(session, &["sh", "-c", &script]).await;
    assert_eq!(r.code, 0, "stderr {}", r.stderr);
    assert_eq!(r.stdout, format!("/src/roots 0:0\n/src/users {user_ids}\n"));
    for (name, owner) in [("made", (0, 0)), ("d", (0, 0)), ("given", (1234, 4321))] {
        let md = std::fs::metadata(out.path().join(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), owner, "{name}");
    }
    assert!(!src.path().join("refused").exists());
}

/// swtpm, as a guestbox that starts it hands it its socket and log: under its seccomp
/// profile, as root no longer root, and serving the socket QEMU connects to by path.
#[tokio::test]
async fn swtpm_handed_its_socket_is_sandboxed_and_serves() {
    use guestbox::machine::spec::Tpm;
    use guestbox::machine::tpm::{argv_handed, Handles};
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let swtpm = guestbox::host::programs::find("swtpm").expect("swtpm (scripts/setup)");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("tpm");
    std::fs::create_dir(&state).unwrap();
    let policy = Policy::for_host(&common::dirs().cache, &common::qemu())
        .await
        .unwrap();
    let runas = policy.user_name().map(str::to_string);
    if let Some(user) = &runas {
        guestbox::host::users::chown(&state, Ids::of_user(user).unwrap()).unwrap();
    }
    let socket = dir.path().join("swtpm.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let log = std::fs::File::create(dir.path().join("swtpm.log")).unwrap();
    // Its state by descriptor: the directory above it, owner-only like a run directory,
    // is closed to the user swtpm becomes.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let state_dir = std::fs::File::open(&state).unwrap();
    let t = Tpm {
        state_dir: state.clone(),
        socket: socket.clone(),
        log: dir.path().join("swtpm.log"),
    };
    let args = argv_handed(
        &t,
        &Handles {
            ctrl_fd: listener.as_raw_fd(),
            log_fd: log.as_raw_fd(),
            runas: runas.clone(),
            state_fd: Some(state_dir.as_raw_fd()),
        },
    )
    .unwrap();
    assert!(args.windows(2).any(|w| w == ["--seccomp", "action=kill"]));
    let mut child = guestbox::host::process::Supervised::spawn_inheriting(
        "swtpm",
        &swtpm,
        &args,
        &dir.path().join("swtpm.stderr"),
        &[listener.as_raw_fd(), log.as_raw_fd(), state_dir.as_raw_fd()],
        None,
        if runas.is_some() {
            guestbox::host::process::Identity::ChangesItself
        } else {
            guestbox::host::process::Identity::Same
        },
    )
    .unwrap();
    // CMD_GET_CAPABILITY on the control channel: a 4-byte result (0: success) and the
    // capability bits.
    let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(&[0, 0, 0, 1]).unwrap();
    let mut answer = [0u8; 8];
    c.read_exact(&mut answer).unwrap_or_else(|e| {
        panic!(
            "swtpm did not answer ({e}); its log: {}",
            std::fs::read_to_string(dir.path().join("swtpm.log")).unwrap_or_default()
        )
    });
    assert_eq!(&answer[..4], [0, 0, 0, 0], "swtpm answered {answer:?}");
    // CMD_INIT (no flags): the TPM starts, and writes its new permanent state into the
    // state directory, as the user it became.
    c.write_all(&[0, 0, 0, 2, 0, 0, 0, 0]).unwrap();
    let mut result = [0u8; 4];
    c.read_exact(&mut result).unwrap();
    assert_eq!(
        result,
        [0, 0, 0, 0],
        "CMD_INIT failed; swtpm's log: {}",
        std::fs::read_to_string(dir.path().join("swtpm.log")).unwrap_or_default()
    );
    let permall = state.join("tpm2-00.permall");
    assert!(permall.is_file(), "swtpm wrote no state");
    if let Some(user) = &runas {
        assert_eq!(
            Ids::owner_of(&permall).unwrap().uid,
            Ids::of_user(user).unwrap().uid
        );
    }
    let pid = child.pid().unwrap();
    let (uid, seccomp, nnp) = status_of(pid);
    assert_eq!((seccomp, nnp), (2, 1), "swtpm is not sandboxed");
    match &runas {
        Some(user) => assert_eq!(uid, Ids::of_user(user).unwrap().uid),
        None => assert_eq!(uid, Ids::current().uid),
    }
    if running_as_root() {
        assert_ne!(uid, 0);
    }
    child.kill().await;
}
