//! Faults a base or a run must survive: damaged base files, guests that panic or are
//! killed, output floods, full disks, hostile symlinks, many runs at once. One base (the
//! shared test base) for the whole file; damage is only ever done to copies.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{cmd, run};
use guestbox::run::Volume;
use guestbox::store::{files, Base, Manifest, Store, MANIFEST};

/// A copy of the test base in a store of its own: every file hard-linked (the base is
/// read-only, so that is safe) except `own`, which is a real copy that may be damaged.
struct Copy {
    _home: tempfile::TempDir,
    store: Store,
    base: Base,
}

fn copy_base(own: &str) -> Copy {
    let base = common::base();
    // Beside the test home, so hard links work (same filesystem).
    let home = tempfile::tempdir_in(common::test_home()).unwrap();
    let dirs = guestbox::host::Dirs::under(home.path().to_path_buf());
    let store = Store::new(&dirs);
    let dest = store.base_dir(&base.manifest.id);
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(&base.dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let to = dest.join(&name);
        if name == own {
            let st = std::process::Command::new("cp")
                .arg("--sparse=always")
                .arg(entry.path())
                .arg(&to)
                .status()
                .unwrap();
            assert!(st.success());
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
        } else {
            std::fs::hard_link(entry.path(), &to).unwrap();
        }
    }
    let base = store.load(&base.manifest.id).unwrap();
    Copy {
        _home: home,
        store,
        base,
    }
}

fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x20;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
}

fn truncate(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

fn run_dirs(store: &Store) -> Vec<PathBuf> {
    std::fs::read_dir(&store.runs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Run directories nobody holds: left behind by a run that is over. (Other tests' runs
/// in the shared store hold their locks.)
fn abandoned_runs(store: &Store) -> Vec<PathBuf> {
    run_dirs(store)
        .into_iter()
        .filter(|d| d.is_dir())
        .filter(|d| std::fs::File::open(d.join("lock")).map_or(true, |f| f.try_lock().is_ok()))
        .collect()
}

/// Waits (up to two minutes) for a run directory not in `before` in which `found` finds
/// what it looks for.
async fn in_new_run<T>(store: &Store, before: &[PathBuf], found: impl Fn(&Path) -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        let new = run_dirs(store).into_iter().filter(|d| !before.contains(d));
        if let Some(t) = new.into_iter().find_map(|d| found(&d)) {
            return t;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `true` on `base` in `store`; the error a damaged base must give.
async fn revive_error(store: &Store, base: &Base) -> guestbox::Error {
    match common::run_on(store, base, &cmd(&["true"])).await {
        Ok(o) => panic!("a damaged base revived (exit {})", o.code),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_truncated_base_file_is_refused_before_qemu_starts_naming_it() {
    for name in [
        files::GUEST_DISK,
        files::CONTROLLER_DISK,
        files::GUEST_RAM,
        files::CONTROLLER_RAM,
        files::GUEST_STATE,
        files::CONTROLLER_STATE,
    ] {
        let c = copy_base(name);
        truncate(&c.base.file(name));
        let e = revive_error(&c.store, &c.base).await;
        let msg = e.to_string();
        assert!(
            msg.contains(name) && msg.contains("damaged"),
            "{name}: {msg}"
        );
        assert_eq!(e.exit_code(), 125, "{msg}");
        // Refused by the cheap checks: no run directory, so no QEMU, was ever made.
        assert!(run_dirs(&c.store).is_empty(), "{name}: a run was started");
    }
}

#[tokio::test]
async fn a_flipped_byte_is_caught_cheaply_where_it_can_be_and_by_verify_everywhere() {
    // Device state: checksummed on every revive (small, and what QEMU would choke on).
    for name in [files::GUEST_STATE, files::CONTROLLER_STATE] {
        let c = copy_base(name);
        let len = std::fs::metadata(c.base.file(name)).unwrap().len();
        flip_byte(&c.base.file(name), len / 3);
        let msg = revive_error(&c.store, &c.base).await.to_string();
        assert!(msg.contains(name) && msg.contains("checksum"), "{msg}");
        assert!(run_dirs(&c.store).is_empty());
    }
    // A disk's header.
    let c = copy_base(files::GUEST_DISK);
    flip_byte(&c.base.file(files::GUEST_DISK), 1);
    let msg = revive_error(&c.store, &c.base).await.to_string();
    assert!(
        msg.contains(files::GUEST_DISK) && msg.contains("qcow2"),
        "{msg}"
    );
    // Disk and RAM contents are too big to hash per run: `verify` finds them.
    for name in [files::CONTROLLER_DISK, files::GUEST_RAM] {
        let c = copy_base(name);
        let len = std::fs::metadata(c.base.file(name)).unwrap().len();
        flip_byte(&c.base.file(name), len / 2 + 12345);
        let problems = guestbox::store::verify(&c.base).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains(name), "{problems:?}");
    }
}

#[tokio::test]
async fn a_damaged_manifest_is_refused_naming_it() {
    let id = common::base().manifest.id.clone();
    // Truncated: no longer JSON.
    let c = copy_base(MANIFEST);
    truncate(&c.base.dir.join(MANIFEST));
    let msg = c.store.load(&id).unwrap_err().to_string();
    assert!(msg.contains(MANIFEST) && msg.contains("damaged"), "{msg}");
    // One changed value that still parses: the seal catches it.
    let c = copy_base(MANIFEST);
    let path = c.base.dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replacen(
        "\"guest_memory_mib\": 1024",
        "\"guest_memory_mib\": 1025",
        1,
    );
    assert_ne!(text, changed, "the manifest records the guest's memory");
    std::fs::write(&path, changed).unwrap();
    let msg = c.store.load(&id).unwrap_err().to_string();
    assert!(msg.contains(MANIFEST) && msg.contains("seal"), "{msg}");
    // What the message advises works: the base goes by its id alone.
    c.store.remove_id(&id).unwrap();
    assert!(!c.store.base_dir(&id).exists());
    // The copy's hard links were removed, not the shared base's files or their modes.
    let secrets = common::base().dir.join(guestbox::store::SECRETS);
    assert_eq!(
        std::fs::metadata(secrets).unwrap().permissions().mode() & 0o777,
        0o400
    );
}

#[tokio::test]
async fn qemu_failing_to_load_a_state_the_checks_pass_is_reported_with_its_words() {
    // A truncated state whose manifest was (wrongly) updated to match: only QEMU can tell.
    let c = copy_base(files::GUEST_STATE);
    let state = c.base.file(files::GUEST_STATE);
    truncate(&state);
    let mut manifest: Manifest = c.base.manifest.clone();
    manifest.files.insert(
        files::GUEST_STATE.into(),
        guestbox::store::checksum(&state).unwrap(),
    );
    let manifest = manifest.sealed().unwrap();
    let path = c.base.dir.join(MANIFEST);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let base = c.store.load(&manifest.id).unwrap();
    let e = revive_error(&c.store, &base).await;
    let msg = e.to_string();
    assert_eq!(e.exit_code(), 125, "{msg}");
    assert!(
        msg.contains("reviving the guest failed") && msg.contains("QEMU said"),
        "{msg}"
    );
    // Nothing left running or on disk.
    assert!(run_dirs(&c.store).is_empty(), "{:?}", run_dirs(&c.store));
}

#[tokio::test]
async fn a_guest_kernel_panic_ends_the_run_with_125_and_the_panic_on_screen() {
    let started = Instant::now();
    let e = run(cmd(&[
        "sh",
        "-c",
        "echo c > /proc/sysrq-trigger; sleep 100",
    ]))
    .await
    .expect_err("a panicking guest cannot finish the job");
    let msg = e.to_string();
    assert_eq!(e.exit_code(), 125, "{msg}");
    assert!(msg.contains("guest VM stopped"), "{msg}");
    assert!(msg.contains("Kernel panic"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(90), "noticed late");
    let left = abandoned_runs(&common::store());
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn qemu_killed_from_outside_mid_run_ends_it_with_125() {
    let store = common::store();
    let before = run_dirs(&store);
    // An exchange directory of its own marks this run's controller among the other tests'
    // runs (on its command line: as root the directory is given to a user, whom that QEMU
    // becomes; root's own would be handed over as a descriptor); the guest QEMU, which
    // names its console file (its disk comes as a descriptor), is in the same run.
    let xchg = tempfile::tempdir().unwrap();
    if guestbox::host::users::Ids::current().is_root() {
        guestbox::host::users::chown(xchg.path(), common::test_user()).unwrap();
    }
    let mut o = cmd(&["sleep", "300"]);
    o.session.xchg = Some(xchg.path().to_path_buf());
    let job = tokio::spawn(run(o));
    let pid = in_new_run(&store, &before, |d| {
        let with_xchg = common::pids_matching(&xchg.path().to_string_lossy());
        let ours = common::pids_matching(&d.to_string_lossy())
            .iter()
            .any(|p| with_xchg.contains(p));
        if !ours {
            return None;
        }
        common::pids_matching(&d.join("guest.console.log").to_string_lossy())
            .into_iter()
            .find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
            })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SAFETY: plain syscall on a pid we found.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let e = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the run noticed the dead guest")
        .unwrap()
        .expect_err("the run failed");
    let msg = e.to_string();
    assert_eq!(e.exit_code(), 125, "{msg}");
    assert!(
        msg.contains("guest VM stopped") && msg.contains("signal: 9"),
        "{msg}"
    );
    let left = abandoned_runs(&store);
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn filling_the_guest_disk_fails_the_command_not_guestbox() {
    // The disk is 8 GiB: reserve all but a few MiB without writing it (fallocate), then
    // write until the filesystem says no.
    let r = run(cmd(&[
        "sh",
        "-c",
        "free=$(df --output=avail -k / | tail -n 1); \
         fallocate -l $(( (free - 4096) * 1024 )) /fill && \
         dd if=/dev/zero of=/fill2 bs=1M 2>&1 | grep -o 'No space left on device'",
    ]))
    .await
    .unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("No space left on device"), "{}", r.stdout);
    // The next run starts from the base again: the disk has room.
    let r = run(cmd(&[
        "sh",
        "-c",
        "test ! -e /fill && test ! -e /fill2 && echo clean",
    ]))
    .await
    .unwrap();
    assert_eq!(r.stdout.trim(), "clean", "{}", r.stderr);
}

#[tokio::test]
async fn a_symlink_out_of_a_share_does_not_reach_host_files() {
    let dir = tempfile::tempdir().unwrap();
    // A host file outside the share, and links to it and to its directory inside.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "HOST-SECRET").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("abs")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("absdir")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../../../etc/hostname",
        dir.path().join("rel"),
    )
    .unwrap();
    let volume = Volume {
        host: dir.path().to_path_buf(),
        guest: "/work".into(),
        readonly: false,
    };
    // Reads every planted link; the first run also plants the guest's own escapes.
    const READ: &str = "for f in abs absdir/secret rel guest-made/hostname root/etc/hostname; do \
           echo \"$f: $(cat /work/$f 2>&1 | head -c 60)\"; done";
    let plant = format!("ln -s /etc /work/guest-made 2>&1; ln -s / /work/root 2>&1; {READ}");
    let mut o = cmd(&["sh", "-c", &plant]);
    o.session.volumes = vec![volume.clone()];
    let first = run(o).await.unwrap();
    let mut o = cmd(&["sh", "-c", READ]);
    o.session.volumes = vec![volume];
    let second = run(o).await.unwrap();
    let host_name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    for out in [&first.stdout, &second.stdout] {
        assert!(!out.contains("HOST-SECRET"), "{out}");
        if !host_name.trim().is_empty() {
            for line in out.lines().filter(|l| l.contains("hostname")) {
                assert!(!line.ends_with(host_name.trim()), "{out}");
            }
        }
    }
    // Whatever the guest made in the share is at most a link, never a copy of host data.
    for name in ["guest-made", "root"] {
        let p = dir.path().join(name);
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            assert!(md.file_type().is_symlink() || md.is_file() && md.len() < 4096);
        }
    }
}

#[tokio::test]
async fn the_guest_sees_only_its_own_run() {
    let a = tempfile::tempdir().unwrap();
    std::fs::write(a.path().join("a-only"), "RUN-A-SECRET").unwrap();
    let mut oa = cmd(&["sh", "-c", "sleep 8; cat /in/a-only"]);
    oa.session.volumes = vec![Volume {
        host: a.path().to_path_buf(),
        guest: "/in".into(),
        readonly: true,
    }];
    let mut ob = cmd(&[
        "sh",
        "-c",
        "sleep 2; grep -rs RUN-A-SECRET /in /run /mnt /srv /tmp /home /root; \
         cat /proc/mounts; ls /dev | grep -c '^vd'",
    ]);
    let b = tempfile::tempdir().unwrap();
    ob.session.volumes = vec![Volume {
        host: b.path().to_path_buf(),
        guest: "/in".into(),
        readonly: false,
    }];
    let (ra, rb) = tokio::join!(run(oa), run(ob));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.stdout, "RUN-A-SECRET", "{}", ra.stderr);
    assert!(!rb.stdout.contains("RUN-A-SECRET"), "{}", rb.stdout);
    // One disk (its own overlay); network filesystems only from its own controller.
    assert!(rb.stdout.trim_end().ends_with('1'), "{}", rb.stdout);
    for line in rb
        .stdout
        .lines()
        .filter(|l| l.contains(" cifs ") || l.contains("nfs") || l.contains(" 9p "))
    {
        assert!(line.starts_with("//192.168.0.2/guestbox "), "{line}");
    }
}

#[tokio::test]
async fn secrets_are_private_and_never_in_process_arguments() {
    let base = common::base();
    let md = std::fs::metadata(base.dir.join(guestbox::store::SECRETS)).unwrap();
    assert_eq!(
        md.permissions().mode() & 0o077,
        0,
        "secrets readable by others"
    );
    let secrets = base.secrets().unwrap();
    let key_body: String = secrets
        .client_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .take(1)
        .collect();
    assert!(key_body.len() > 20);
    let store = common::store();
    let before = run_dirs(&store);
    let job = tokio::spawn(run(cmd(&["sleep", "6"])));
    let dir = in_new_run(&store, &before, |d| {
        (common::pids_matching(&d.to_string_lossy()).len() >= 2).then(|| d.to_path_buf())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every process's arguments and environment, and every file of the run.
    let mut seen = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        for f in ["cmdline", "environ"] {
            if let Ok(b) = std::fs::read(entry.path().join(f)) {
                seen.push((entry.path().join(f), b));
            }
        }
    }
    for entry in walk(&dir) {
        if entry.is_file()
            && std::fs::metadata(&entry)
                .map(|m| m.len() < 1 << 20)
                .unwrap_or(false)
        {
            seen.push((entry.clone(), std::fs::read(&entry).unwrap_or_default()));
        }
    }
    for (what, bytes) in &seen {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains(&secrets.smb_password),
            "the SMB password is in {}",
            what.display()
        );
        assert!(
            !text.contains(&key_body),
            "the client key is in {}",
            what.display()
        );
    }
    assert_eq!(job.await.unwrap().unwrap().code, 0);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn eight_parallel_runs_from_one_base_each_get_their_own_outputs() {
    let dirs: Vec<_> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    let jobs = dirs.iter().enumerate().map(|(i, d)| {
        let mut o = cmd(&[
            "sh",
            "-c",
            &format!(
                "echo run-{i} > /out/who; seq 1 {} > /out/seq; echo run-{i}",
                1000 + i
            ),
        ]);
        o.session.volumes = vec![Volume {
            host: d.path().to_path_buf(),
            guest: "/out".into(),
            readonly: false,
        }];
        run(o)
    });
    let results = futures::future::join_all(jobs).await;
    for (i, (r, d)) in results.into_iter().zip(&dirs).enumerate() {
        let r = r.unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert_eq!(r.code, 0, "run {i}: {}", r.stderr);
        assert_eq!(r.stdout.trim(), format!("run-{i}"));
        let who = std::fs::read_to_string(d.path().join("who")).unwrap();
        assert_eq!(who.trim(), format!("run-{i}"));
        let seq = std::fs::read_to_string(d.path().join("seq")).unwrap();
        assert_eq!(seq.lines().count(), 1000 + i);
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(
            names.len(),
            2,
            "run {i} wrote elsewhere or got another's files"
        );
    }
}

/// A tmpfs of `mib` MiB mounted on a fresh directory; unmounted on drop.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn new(mib: u64) -> TinyFs {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (as image builds do)"
        );
        TinyFs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn used_kib(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["-k", "--output=used"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_during_bootstrap_registers_nothing_and_gives_space_back() {
    common::images();
    let fs = TinyFs::new(96);
    // The image cache stays where it is; the base is made on the tiny filesystem.
    std::os::unix::fs::symlink(common::dirs().cache, fs.path().join("cache")).unwrap();
    let dirs = guestbox::host::Dirs::under(fs.path().to_path_buf());
    let used_before = fs.used_kib();
    let opts = guestbox::bootstrap::BootstrapOptions {
        profile: guestbox::profile::Profile::Debian(guestbox::images::GuestRecipe::new(vec![])),
        name: Some("full".into()),
        memory_mib: 1024,
        cpus: 1,
        accel: guestbox::machine::accel::AccelChoice::Tcg,
        timeout: Duration::from_secs(300),
    };
    let e = guestbox::bootstrap::bootstrap(&dirs, &opts, &guestbox::progress::Progress::quiet())
        .await
        .expect_err("a base does not fit in 96 MiB");
    let msg = e.to_string();
    assert!(msg.contains("No space left on device"), "{msg}");
    let store = Store::new(&dirs);
    assert!(store.list().unwrap().is_empty(), "a base was registered");
    let left: Vec<_> = std::fs::read_dir(&store.bases)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(left.is_empty(), "half-made base left: {left:?}");
    assert!(
        fs.used_kib() <= used_before + 64,
        "space not given back: {} KiB used, {used_before} before",
        fs.used_kib()
    );
}

/// A run whose overlays fill the host filesystem: a clear error, exit 125, nothing left.
/// `cold`: the pair cold-boots instead of reviving (QMP is connected on that path too, so
/// QEMU's I/O error events are seen).
async fn full_disk_during_a_run(cold: bool) {
    let base = common::base();
    let fs = TinyFs::new(48);
    // Bases from the shared store; the run's overlays on the tiny filesystem.
    std::fs::create_dir(fs.path().join("runs")).unwrap();
    let store = Store {
        runs: fs.path().join("runs"),
        ..common::store()
    };
    let used_before = fs.used_kib();
    let mut o = cmd(&[
        "sh",
        "-c",
        "dd if=/dev/urandom of=/big bs=1M count=120 conv=fsync",
    ]);
    o.command.timeout = Some(Duration::from_secs(180));
    o.session.cold = cold;
    let e = common::run_on(&store, base, &o)
        .await
        .expect_err("writing 120 MiB cannot fit in 48");
    let msg = e.to_string();
    assert!(msg.contains("ran out of space"), "cold {cold}: {msg}");
    assert_eq!(e.exit_code(), 125);
    assert!(run_dirs(&store).is_empty(), "{:?}", run_dirs(&store));
    assert!(
        fs.used_kib() <= used_before + 64,
        "space not given back: {} KiB used",
        fs.used_kib()
    );
}

#[tokio::test]
async fn a_full_disk_during_a_run_is_a_clear_error_and_gives_space_back() {
    full_disk_during_a_run(false).await;
}

#[tokio::test]
async fn a_full_disk_during_a_cold_run_is_reported_too() {
    full_disk_during_a_run(true).await;
}
