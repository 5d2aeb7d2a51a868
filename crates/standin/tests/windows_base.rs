//! guestbox's whole Windows path on the **stand-in** (a small Linux playing Windows +
//! Cygwin, see the crate's README; never real Windows): `bootstrap --profile windows`
//! through guestbox's own code — install with its media, first boot next to the real
//! controller VM, SSH, the share mapped with `net use` and mounted in Cygwin, both VMs
//! frozen into a sealed base — then `run` on that base, and the failure path of an install
//! that never ends. One base is bootstrapped for the whole file (it is expensive) and kept
//! between runs of it (bases are content-addressed).
mod common;
// Debian's docker-registry on loopback, as the registry client's own tests start it.
#[path = "../../core/tests/common/procs.rs"]
#[allow(dead_code)] // Only its open-file check is used here.
mod procs;
#[path = "../../oci/tests/common/registry.rs"]
mod registry;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use guestbox::bootstrap::{bootstrap, BootstrapOptions};
use guestbox::host::Dirs;
use guestbox::machine::accel::AccelChoice;
use guestbox::profile::windows::{Sources, WindowsProfile};
use guestbox::profile::Profile;
use guestbox::progress::Progress;
use guestbox::run::{RunOptions, Streams, Volume};
use guestbox::store::{self, files, import, Base, Store};
use media::cygwin::CygwinArch;
use media::windows::{Profile as WinKind, Secret, WindowsSettings};

use common::{cache_dir, iso, vm_lock};

/// The images cache of guestbox's own VM tests (the controller's kernel and disk), so that
/// this lane does not build them again; bases and failures go to a home of this file's.
fn dirs() -> Dirs {
    // The same home as guestbox-core's tests/common.
    let shared = std::env::var_os("GUESTBOX_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/guestbox-test-home/deep-on-purpose-to-exceed-the-unix-socket-path-limit"
            ))
        });
    Dirs {
        cache: shared.join("cache"),
        data: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("standin-windows-home"),
    }
}

fn store() -> Store {
    Store::new(&dirs())
}

/// A public key that parses: the profile records only choices, the install makes the
/// controller's real key.
const PLACEHOLDER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVudXNlZHVudXNlZHVudXNlZHVudXNlZHVudXNl unused";

/// The `windows` profile on UEFI without a TPM (q35, AHCI, e1000e, OVMF without Secure
/// Boot, Windows 11 bypass keys) with the stand-in ISO and mirror; `computer_name` makes
/// other install inputs. (BIOS is the windows_bios tests'.)
fn profile(computer_name: &str, install_timeout: Duration) -> Profile {
    profile_with(computer_name, install_timeout, false)
}

/// `tpm`: Secure Boot (Microsoft's keys) and a TPM 2.0 from swtpm instead of the keys.
fn profile_with(computer_name: &str, install_timeout: Duration, tpm: bool) -> Profile {
    let mut s = WindowsSettings::new(WinKind::Windows, Secret::new("unused"), PLACEHOLDER_KEY);
    s.computer_name = computer_name.into();
    s.firmware = media::windows::Firmware::Uefi;
    if tpm {
        s.win11 = media::windows::Win11Requirements::RealTpmUefi;
    }
    let mirror =
        standin::mirror::cygwin_mirror(&cache_dir().join("mirror-x86_64"), CygwinArch::X86_64)
            .unwrap();
    let hw = guestbox::profile::windows::Hardware::new(&s, guestbox::machine::Accel::Tcg);
    Profile::Windows(WindowsProfile::new(
        &s,
        hw.disk_gib,
        Some(Sources {
            iso: iso().path,
            mirror,
            admin_password: Some(Secret::new("Stand-in-Pa55")),
            product_key: None,
            install_timeout,
        }),
    ))
}

fn options(profile: Profile, name: Option<&str>) -> BootstrapOptions {
    BootstrapOptions {
        profile,
        name: name.map(str::to_string),
        // The least 64-bit Windows takes (the stand-in checks for 4 GiB only without the
        // bypass keys): less RAM file in the base.
        memory_mib: 2048,
        cpus: 1,
        accel: AccelChoice::Tcg,
        timeout: Duration::from_secs(600),
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The stand-in Windows base, bootstrapped once (install ~1-3 min, first boot ~0.5-1 min
/// under TCG) or found in this file's home.
fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let started = Instant::now();
        let opts = options(
            profile("STANDIN-BASE", Duration::from_secs(1200)),
            Some("standin-windows"),
        );
        // Two at once, as two CI jobs would: one builds, the other waits for it and finds
        // the base (had both built it, the second's rename onto the first would fail).
        let (d, q) = (dirs(), Progress::quiet());
        let (a, b) =
            block_on(async { tokio::join!(bootstrap(&d, &opts, &q), bootstrap(&d, &opts, &q)) });
        let base =
            a.unwrap_or_else(|e| panic!("bootstrapping the stand-in Windows base failed: {e}"));
        let other = b.unwrap_or_else(|e| panic!("the second, concurrent bootstrap failed: {e}"));
        assert_eq!(
            (&other.manifest.id, &other.manifest.created),
            (&base.manifest.id, &base.manifest.created)
        );
        eprintln!(
            "stand-in windows base {} in {:.1} s; stages: {:?}",
            &base.manifest.id[..12],
            started.elapsed().as_secs_f64(),
            base.manifest.timings
        );
        base
    })
}

/// The `windows-xp` profile (pc, IDE, rtl8139, winnt.sif, SMB1) base, bootstrapped once.
fn xp_base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut s =
            WindowsSettings::new(WinKind::WindowsXp, Secret::new("unused"), PLACEHOLDER_KEY);
        s.computer_name = "STANDIN-XP".into();
        s.product_key = Some("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE".into());
        let mirror =
            standin::mirror::cygwin_mirror(&cache_dir().join("mirror-x86"), CygwinArch::X86)
                .unwrap();
        let hw = guestbox::profile::windows::Hardware::new(&s, guestbox::machine::Accel::Tcg);
        let profile = Profile::WindowsXp(WindowsProfile::new(
            &s,
            hw.disk_gib,
            Some(Sources {
                iso: iso().path,
                mirror,
                admin_password: Some(Secret::new("Stand-in-Pa55")),
                product_key: s.product_key.clone(),
                install_timeout: Duration::from_secs(1500),
            }),
        ));
        let mut opts = options(profile, Some("standin-windows-xp"));
        opts.memory_mib = hw.memory_mib;
        bootstrapped("windows-xp", &opts)
    })
}

/// The UEFI + Secure Boot + TPM base (4 GiB, 2 CPUs: what Windows 11 checks for without
/// the bypass keys), bootstrapped once.
fn tpm_base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut opts = options(
            profile_with("STANDIN-TPM", Duration::from_secs(1500), true),
            Some("standin-windows-tpm"),
        );
        opts.memory_mib = 4096;
        opts.cpus = 2;
        bootstrapped("windows UEFI + TPM", &opts)
    })
}

/// The stand-in base of `opts`, bootstrapped (or found in this file's home), and what it
/// took.
fn bootstrapped(what: &str, opts: &BootstrapOptions) -> Base {
    let started = Instant::now();
    let base = block_on(bootstrap(&dirs(), opts, &Progress::quiet()))
        .unwrap_or_else(|e| panic!("bootstrapping the stand-in {what} base failed: {e}"));
    eprintln!(
        "stand-in {what} base {} in {:.1} s; stages: {:?}",
        &base.manifest.id[..12],
        started.elapsed().as_secs_f64(),
        base.manifest.timings
    );
    base
}

struct RunResult {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cmd(argv: &[&str]) -> RunOptions {
    let mut opts = RunOptions::default();
    opts.command.argv = argv.iter().map(|s| s.to_string()).collect();
    opts.session.boot_timeout = Duration::from_secs(300);
    opts
}

fn run(opts: RunOptions) -> guestbox::Result<RunResult> {
    run_on(base(), opts)
}

fn run_on(base: &Base, opts: RunOptions) -> guestbox::Result<RunResult> {
    run_with_stdin(base, opts, None)
}

/// A run on `base` of `store` (another home's).
fn run_in(store: &Store, base: &Base, opts: RunOptions) -> guestbox::Result<RunResult> {
    run_io(store, base, opts, None)
}

/// A run whose stdin is `input`, or nothing. With a terminal (`shell`) stdin is then held
/// open until the run is over, as a user's terminal is; otherwise it ends after `input`.
fn run_with_stdin(
    base: &Base,
    opts: RunOptions,
    input: Option<&[u8]>,
) -> guestbox::Result<RunResult> {
    run_io(&store(), base, opts, input)
}

fn run_io(
    store: &Store,
    base: &Base,
    opts: RunOptions,
    input: Option<&[u8]>,
) -> guestbox::Result<RunResult> {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let outcome = block_on(async {
        use tokio::io::AsyncWriteExt;
        let (mut typing, held) = tokio::io::duplex(1 << 16);
        let mut ended: &[u8] = input.unwrap_or_default();
        let mut held = held;
        let stdin: Option<&mut (dyn tokio::io::AsyncRead + Unpin + Send)> = match input {
            None => None,
            Some(bytes) if opts.command.tty.is_some() => {
                typing.write_all(bytes).await.unwrap();
                Some(&mut held)
            }
            Some(_) => Some(&mut ended),
        };
        let mut streams = Streams {
            stdin,
            stdout: &mut out,
            stderr: &mut err,
            window: None,
        };
        let r = guestbox::run::run(store, base, &opts, &mut streams).await;
        drop(typing);
        r
    })?;
    eprintln!(
        "run {:?}: revive {:.2} s, done {:.2} s",
        opts.command.argv,
        outcome.timings.revive.as_secs_f64(),
        outcome.timings.command_done.as_secs_f64()
    );
    Ok(RunResult {
        code: outcome.exit_code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

fn bash(script: &str) -> RunOptions {
    cmd(&["bash", "-c", script])
}

#[test]
fn standin_windows_bootstrap_makes_a_sealed_listed_verifiable_base_once() {
    let _vm = vm_lock();
    let base = base();
    let m = &base.manifest;
    assert_eq!(m.profile, "windows");
    assert_eq!(m.inputs["profile"], "windows");
    assert_eq!(m.inputs["choices"]["computer_name"], "STANDIN-BASE");
    assert!(!m.inputs["iso_blake3"].as_str().unwrap().is_empty());
    assert!(!m.inputs["mirror_blake3"].as_str().unwrap().is_empty());
    // Nothing of the media's whereabouts or secrets is recorded.
    let inputs = m.inputs.to_string();
    assert!(
        !inputs.contains("Stand-in-Pa55") && !inputs.contains(".iso"),
        "{inputs}"
    );
    let guest = m.pair.guest.as_ref().expect("a firmware guest");
    assert!(guest.machine.starts_with("pc-q35-"), "{}", guest.machine);
    assert!(
        guest.uefi.as_ref().is_some_and(|u| !u.secure_boot) && !guest.tpm,
        "OVMF without Secure Boot, no TPM: {guest:?}"
    );
    assert!(
        m.files.contains_key(files::GUEST_VARS),
        "{:?}",
        m.files.keys()
    );
    // The host key the controller trusted on first use is recorded for the revives.
    assert!(m.guest_host_key.starts_with("ssh-"), "{}", m.guest_host_key);
    for stage in ["install", "boot", "setup", "snapshot"] {
        assert!(
            m.timings.contains_key(stage),
            "no {stage} in {:?}",
            m.timings
        );
    }
    for f in [files::GUEST_DISK, files::GUEST_RAM, files::GUEST_STATE] {
        assert!(
            m.files.contains_key(f),
            "{f} missing from {:?}",
            m.files.keys()
        );
    }
    assert!(store::verify(base).unwrap().is_empty());
    let listed = store().list().unwrap();
    assert!(listed.iter().any(|b| b.manifest.id == m.id));
    assert_eq!(
        store().resolve("standin-windows").unwrap().manifest.id,
        m.id
    );
    // The same ISO, mirror and choices are the same base: found, not built again.
    let t = Instant::now();
    let again = block_on(bootstrap(
        &dirs(),
        &options(profile("STANDIN-BASE", Duration::from_secs(1200)), None),
        &Progress::quiet(),
    ))
    .unwrap();
    assert_eq!(again.manifest.id, m.id);
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
}

#[test]
fn standin_windows_run_exit_codes_and_split_streams() {
    let _vm = vm_lock();
    let r = run(bash("echo to-out; echo to-err >&2; echo more-out; exit 3")).unwrap();
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, "to-out\nmore-out\n");
    assert_eq!(r.stderr, "to-err\n");
    // Cygwin's bash, as the user the answer file made: cygpath knows the Cygwin root.
    let r = run(cmd(&["cygpath", "-w", "/usr/bin"])).unwrap();
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "C:\\cygwin\\bin\n"),
        "{}",
        r.stderr
    );
    let r = run(cmd(&["no-such-command-here"])).unwrap();
    assert_eq!(r.code, 127, "{}", r.stderr);
    // The clock of the revived snapshot is set to host time (it stood still while frozen).
    let r = run(cmd(&["date", "+%s"])).unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let guest: i64 = r.stdout.trim().parse().unwrap();
    assert!((host - guest).abs() <= 3, "guest {guest}, host {host}");
}

#[test]
fn standin_windows_run_env_workdir_timeout_and_signals() {
    let _vm = vm_lock();
    let mut o = bash("pwd; printf '%s|' \"$GREETING\" \"$1\"; echo");
    o.command.argv.extend(["sh".into(), "it's a $test".into()]);
    o.command.env = vec![("GREETING".into(), "hello world; $(false)".into())];
    o.command.workdir = Some("/tmp/work dir".into());
    let r = run(o).unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "/tmp/work dir\nhello world; $(false)|it's a $test|\n"
    );

    let r = run(bash("kill -TERM $$")).unwrap();
    assert_eq!(r.code, 128 + 15, "{}", r.stderr);
    assert!(r.stderr.contains("SIGTERM"), "{}", r.stderr);

    let mut o = bash("echo started; sleep 600");
    o.command.timeout = Some(Duration::from_secs(5));
    let t = Instant::now();
    let r = run(o).unwrap();
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(t.elapsed() < Duration::from_secs(120), "{:?}", t.elapsed());
}

/// `--xchg` as in the original (the exit code in `in-vm-exit`), `-i` (stdin forwarded;
/// without it the command reads EOF at once), and `shell`: Cygwin's login bash on a
/// terminal.
#[test]
fn standin_windows_run_xchg_stdin_and_shell() {
    let _vm = vm_lock();
    let xchg = tempfile::tempdir().unwrap();
    let mut o = bash("echo ran; exit 7");
    o.session.xchg = Some(xchg.path().into());
    let r = run(o).unwrap();
    assert_eq!((r.code, r.stdout.as_str()), (7, "ran\n"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(xchg.path().join("in-vm-exit")).unwrap(),
        "7\n"
    );

    let counting = "n=0; while read l; do n=$((n+1)); echo \"$n:$l\"; done; echo done";
    let r = run_with_stdin(
        base(),
        bash(counting),
        Some(b"alpha\nbeta gamma\n".as_slice()),
    )
    .unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "1:alpha\n2:beta gamma\ndone\n");
    let r = run(bash("cat; echo eof")).unwrap();
    assert_eq!(r.stdout, "eof\n", "{}", r.stderr);

    let mut o = cmd(&guestbox::run::LOGIN_SHELL);
    o.command.tty = Some(guestbox::run::Terminal {
        term: "vt100".into(),
        rows: 24,
        cols: 80,
    });
    let r = run_with_stdin(
        base(),
        o,
        Some(b"echo answer-$((6*7)) in $(pwd); tty; exit 3\n".as_slice()),
    )
    .unwrap();
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("answer-42 in /home/"), "{}", r.stdout);
    assert!(
        r.stdout.contains("/dev/pts/") || r.stdout.contains("/dev/cons"),
        "the shell has no terminal: {}",
        r.stdout
    );
}

#[test]
fn standin_windows_run_volumes_as_cygwin_paths_and_drive_letters() {
    let _vm = vm_lock();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("input.txt"), "from the host\n").unwrap();
    let mut o = bash(
        "cat /src/input.txt; cat /cygdrive/s/input.txt; \
         echo made-in-guest > /cygdrive/o/result.txt; \
         echo into-ro > /src/nope.txt 2>/dev/null && echo ro-writable; true",
    );
    o.session.volumes = vec![
        Volume {
            host: src.path().into(),
            guest: "/src".into(),
            readonly: true,
        },
        Volume {
            host: src.path().into(),
            guest: "S:".into(),
            readonly: true,
        },
        Volume {
            host: out.path().into(),
            guest: "O:".into(),
            readonly: false,
        },
    ];
    o.command.workdir = Some("/src".into());
    let r = run(o).unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "from the host\nfrom the host\n");
    assert_eq!(
        std::fs::read_to_string(out.path().join("result.txt")).unwrap(),
        "made-in-guest\n"
    );
    assert!(!src.path().join("nope.txt").exists());

    // Paths Windows cannot take are refused before anything starts.
    let mut o = bash("true");
    o.session.volumes = vec![Volume {
        host: src.path().into(),
        guest: "G:".into(),
        readonly: false,
    }];
    let e = run(o).err().expect("G: holds the controller's share");
    assert!(e.to_string().contains("controller's share"), "{e}");
}

#[test]
fn standin_windows_uefi_tpm_base_keeps_its_variables_and_tpm_state_and_revives() {
    let _vm = vm_lock();
    let base = tpm_base();
    let m = &base.manifest;
    let guest = m.pair.guest.as_ref().expect("a firmware guest");
    assert!(guest.tpm && guest.uefi.as_ref().is_some_and(|u| u.secure_boot));
    assert!(
        m.files.contains_key(files::GUEST_VARS),
        "{:?}",
        m.files.keys()
    );
    let tpm: Vec<&String> = m
        .files
        .keys()
        .filter(|k| k.starts_with(&format!("{}/", files::GUEST_TPM)))
        .collect();
    assert!(!tpm.is_empty(), "no TPM state in {:?}", m.files.keys());
    assert!(store::verify(base).unwrap().is_empty());
    // A revive restores the TPM from the base's state (swtpm on a copy of it): the guest
    // sees its TPM 2.0 and the run works.
    let r = run_on(
        base,
        bash("cat /sys/class/tpm/tpm0/tpm_version_major; cygpath -w /"),
    )
    .unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "2\nC:\\cygwin\n");
    // The base's TPM state and variables are untouched by the run.
    assert!(store::verify(base).unwrap().is_empty());
    let left = left_after_a_while(&base.manifest.id);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn standin_windows_xp_base_runs_with_a_drive_letter_and_a_cygwin_path_over_smb1() {
    let _vm = vm_lock();
    let base = xp_base();
    let m = &base.manifest;
    assert_eq!(m.profile, "windows-xp");
    let guest = m.pair.guest.as_ref().expect("a firmware guest");
    assert!(guest.machine.starts_with("pc-i440fx-"), "{}", guest.machine);
    assert!(guest.uefi.is_none() && !guest.tpm && !guest.generation_id);
    assert!(store::verify(base).unwrap().is_empty());
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("in.txt"), "xp input\n").unwrap();
    let mut o = bash("id -un; cat /cygdrive/t/in.txt; echo out > /work/made.txt; exit 4");
    o.session.volumes = vec![
        Volume {
            host: src.path().into(),
            guest: "T:".into(),
            readonly: true,
        },
        Volume {
            host: src.path().into(),
            guest: "/work".into(),
            readonly: false,
        },
    ];
    let r = run_on(base, o).unwrap();
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(r.stdout, "Administrator\nxp input\n");
    assert_eq!(
        std::fs::read_to_string(src.path().join("made.txt")).unwrap(),
        "out\n"
    );
}

/// An install that never reaches its end marker: 125, the stage named, the console log
/// and a screenshot kept under the store's failures (named in the message), no QEMU or
/// swtpm left, no base registered; `gc` removes what was kept.
#[test]
fn standin_windows_install_timeout_fails_with_125_and_keeps_console_and_screenshot() {
    let _vm = vm_lock();
    let home = dirs();
    let before = store().list().map(|l| l.len()).unwrap_or(0);
    let opts = options(profile("STANDIN-SLOW", Duration::from_secs(20)), None);
    let e = block_on(bootstrap(&home, &opts, &Progress::quiet()))
        .expect_err("an install cannot end within 20 s");
    assert_eq!(e.exit_code(), 125, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("install stage"), "{msg}");
    let (dir, names) = kept_in_failures(&msg);
    let shot = names
        .iter()
        .find(|n| n.ends_with(".ppm"))
        .expect("a screenshot");
    let ppm = std::fs::read(dir.join(shot)).unwrap();
    assert!(ppm.starts_with(b"P6"), "not a PPM image");
    assert_eq!(
        store().list().unwrap().len(),
        before,
        "a base was registered"
    );
    let left = left_after_a_while("windows-install-");
    assert!(
        left.is_empty(),
        "a QEMU or swtpm of the install was left: {left:?}"
    );
    let report = guestbox::store::gc::collect(&home).unwrap();
    assert!(!dir.exists(), "gc left {}", dir.display());
    assert!(report.removed.iter().any(|r| r == &*dir.to_string_lossy()));
}

/// A first boot whose SSH never answers in time (here: a bootstrap timeout shorter than
/// the stand-in's boot to sshd, on the install the base was made from): 125, the stage
/// named, the guest's console and a screenshot kept and named, no QEMU left, no base.
#[test]
fn standin_windows_first_boot_without_ssh_fails_with_125_and_keeps_console_and_screenshot() {
    let _vm = vm_lock();
    // The install is the base's, from the cache: only the first boot is at stake here.
    base();
    let home = dirs();
    let before = store().list().unwrap().len();
    let mut opts = options(profile("STANDIN-BASE", Duration::from_secs(1200)), None);
    // Another base (RAM is not an input of the install) whose SSH wait ends before the
    // stand-in's sshd listens (17-35 s after power-on under TCG).
    opts.memory_mib = 2304;
    opts.timeout = Duration::from_secs(6);
    let e = block_on(bootstrap(&home, &opts, &Progress::quiet()))
        .expect_err("no SSH within 6 s of power-on");
    assert_eq!(e.exit_code(), 125, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("first-boot"), "{msg}");
    assert!(msg.contains("SSH"), "{msg}");
    let (_, kept) = kept_in_failures(&msg);
    assert!(
        kept.iter().filter(|n| n.ends_with(".log")).count() >= 2,
        "the guest's and the controller's consoles: {kept:?}"
    );
    assert_eq!(
        store().list().unwrap().len(),
        before,
        "a base was registered"
    );
    let left = left_after_a_while(&format!("{}/.tmp-", store().bases.display()));
    assert!(
        left.is_empty(),
        "a QEMU of the first boot was left: {left:?}"
    );
}

/// A bootstrap stopped midway (its future dropped, as Ctrl-C or a cancelled CI job stops
/// it) while the install runs: nothing registered, no QEMU left, no half-made install or
/// base directory left behind.
#[test]
fn standin_windows_bootstrap_stopped_midway_leaves_nothing() {
    let _vm = vm_lock();
    let home = dirs();
    let before = store().list().map(|l| l.len()).unwrap_or(0);
    let opts = options(profile("STANDIN-STOPPED", Duration::from_secs(1200)), None);
    // What was there while it ran, so that what is gone afterwards means something.
    let watcher = std::thread::spawn(|| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(18) {
            if !processes_with("windows-install-").is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    let stopped = block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            bootstrap(&home, &opts, &Progress::quiet()),
        )
        .await
    });
    assert!(
        stopped.is_err(),
        "an install cannot end within 20 s: {stopped:?}"
    );
    assert!(watcher.join().unwrap(), "the install's QEMU never ran");
    assert_eq!(
        store().list().unwrap().len(),
        before,
        "a base was registered"
    );
    let left = left_after_a_while("windows-install-");
    assert!(left.is_empty(), "the install's QEMU was left: {left:?}");
    for dir in [store().bases, home.images()] {
        let half: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-") && n.contains("windows-install"))
            .collect();
        assert!(half.is_empty(), "left in {}: {half:?}", dir.display());
    }
}

/// The failure directory that `msg` names and the files in it; the message names a console
/// log and a screenshot there (the stage's VM; a first boot keeps the controller's log too).
fn kept_in_failures(msg: &str) -> (PathBuf, Vec<String>) {
    let kept: Vec<PathBuf> = std::fs::read_dir(store().failures)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let dir = kept
        .iter()
        .find(|d| msg.contains(&*d.to_string_lossy()))
        .unwrap_or_else(|| panic!("the message names none of {kept:?}: {msg}"));
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for ext in [".log", ".ppm"] {
        assert!(
            names
                .iter()
                .any(|n| n.ends_with(ext) && msg.contains(n.as_str())),
            "no {ext} of {names:?} is named: {msg}"
        );
    }
    (dir.clone(), names)
}

/// [`processes_with`] once they had up to 10 s to go: a failed stage SIGKILLs its QEMU and
/// returns, and a QEMU of a few GiB takes a moment to be torn down.
fn left_after_a_while(needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = processes_with(needle);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_with(needle);
    }
    left
}

/// Command lines of QEMU or swtpm processes that mention `needle` (a QEMU also by the files
/// it holds open: a namespaced one names no path).
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let pid = e.file_name().to_string_lossy().parse().unwrap_or(0);
        let ours = line.contains(needle)
            || (line.contains("qemu-system") && procs::holds_file_under(pid, needle));
        if ours && (line.contains("qemu-system") || line.contains("swtpm")) {
            out.push(line);
        }
    }
    out
}

/// A Windows base through a registry (Debian's docker-registry on loopback), as `guestbox
/// push` and `pull` move it: the UEFI + TPM base pushed whole — its UEFI variable store
/// and its TPM's state directory (`tpm/...`) among the parts — pulled into another home,
/// checked against its sealed manifest and registered, and revived there with its TPM.
#[test]
fn standin_windows_tpm_base_moves_through_a_registry_and_revives_there() {
    let _vm = vm_lock();
    let base = tpm_base();
    let registry = registry::anonymous();
    let files = import::transported_files(&base.manifest);
    assert!(
        files.iter().any(|f| f == files::GUEST_VARS)
            && files
                .iter()
                .any(|f| f.starts_with(&format!("{}/", files::GUEST_TPM))),
        "{files:?}"
    );
    let reference: oci::Reference = format!("{}/standin/windows-tpm:v1", registry.addr)
        .parse()
        .unwrap();
    let client = oci::Client::new(oci::Options {
        lookup_credentials: false,
        ..oci::Options::default()
    })
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let to_push = oci::Base::from_dir(&base.dir, store::MANIFEST, &files).unwrap();
    let pushed = block_on(client.push(
        &reference,
        &to_push,
        &oci::PushOptions::new(state.path().join("push")),
        &oci::NoProgress,
    ))
    .unwrap();
    // A fresh repository: every blob sent, but the repeats (a RAM file's zero parts).
    assert!(pushed.bytes_transferred > 0, "{pushed:?}");
    assert_eq!(
        pushed.blobs_transferred + pushed.blobs_skipped,
        pushed.blobs,
        "{pushed:?}"
    );

    // Into an empty home (the images cache shared, as it holds nothing a base needs).
    let data = tempfile::tempdir().unwrap();
    let other = Store::new(&Dirs {
        cache: dirs().cache,
        data: data.path().to_path_buf(),
    });
    let pulled = block_on(async {
        let found = client.inspect(&reference).await.unwrap();
        let import::Begun::Started(import) = other.begin_import(&found.config).await.unwrap()
        else {
            panic!("the empty home has the base already");
        };
        let opts = oci::PullOptions::new(state.path().join("pull"), import.dir().to_path_buf());
        client
            .pull(
                &reference.with_digest(&found.digest),
                &opts,
                &oci::NoProgress,
            )
            .await
            .unwrap();
        import::check(import.dir(), import.manifest()).unwrap();
        import
            .register(&guestbox::store::Origin::pulled(
                &reference.to_string(),
                &found.digest,
            ))
            .unwrap()
    });
    assert_eq!(pulled.manifest.id, base.manifest.id);
    assert!(store::verify(&pulled).unwrap().is_empty());
    let r = run_in(
        &other,
        &pulled,
        bash("cat /sys/class/tpm/tpm0/tpm_version_major; cygpath -w /"),
    )
    .unwrap();
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "2\nC:\\cygwin\n"),
        "{}",
        r.stderr
    );
}
