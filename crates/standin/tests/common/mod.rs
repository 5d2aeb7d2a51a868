//! Shared by the stand-in's VM tests: the ISO and installs (cached across tests), the
//! exact QEMU command lines guestbox produces for a Windows guest, and a test double of
//! the controller on the guest's link (a user-space TCP/IP stack at 192.168.0.2).
#![allow(dead_code)]

pub mod controller;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use guestbox::machine::Accel;
use guestbox::profile::windows::{stage_specs, Hardware, Stage, WindowsPaths};
use media::cygwin::CygwinArch;
use media::windows::{
    build_install_media, Firmware, InstallMedia, Profile, Secret, Win11Requirements,
    WindowsSettings,
};

/// One VM at a time: the machine has two cores, and timings should mean something.
static VM: Mutex<()> = Mutex::new(());

pub fn vm_lock() -> MutexGuard<'static, ()> {
    VM.lock().unwrap_or_else(|e| e.into_inner())
}

/// (guest clock, host clock) in seconds since the epoch, read over SSH.
pub fn clocks(port: u16, key: &Path, user: &str) -> (i64, i64) {
    let (code, out, err) = ssh(port, key, user, &[], "date +%s", b"");
    assert_eq!(code, 0, "{err}");
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (out.trim().parse().unwrap(), host)
}

/// The cache shared by every test run: the ISO, the controller's key, installed disks.
pub fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("standin-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn iso() -> standin::StandinIso {
    let iso = standin::ensure_install_iso(&cache_dir()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "stand-in ISO {} ({}, {:.1} s)",
        iso.path.display(),
        if iso.built { "built" } else { "cached" },
        iso.took.as_secs_f64()
    );
    iso
}

/// A key pair, made once: (private key path, public key line).
///
/// Tests run side by side, so the pair is made in a private directory and renamed into
/// place; a test that loses the race uses the winner's pair (ssh-keygen on an existing
/// path would stop at its "Overwrite (y/n)?" prompt).
pub fn key(name: &str) -> (PathBuf, String) {
    let dir = cache_dir().join(format!("{name}-key"));
    let path = dir.join("id_ed25519");
    if !path.exists() {
        let scratch = tempfile::Builder::new()
            .prefix(&format!(".{name}-key-"))
            .tempdir_in(cache_dir())
            .unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(scratch.path().join("id_ed25519"))
            .output()
            .expect("ssh-keygen runs (apt-get install openssh-client)");
        assert!(out.status.success(), "{out:?}");
        // rename(2) of a directory onto an existing non-empty one fails: the first wins.
        let scratch = scratch.keep();
        if std::fs::rename(&scratch, &dir).is_err() {
            std::fs::remove_dir_all(&scratch).unwrap();
        }
    }
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    (path, public.trim().to_string())
}

/// Which Windows machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `windows`, BIOS (SeaBIOS), Windows 11 bypass keys.
    Bios,
    /// `windows`, UEFI with Secure Boot (Microsoft's keys) and a TPM 2.0 from swtpm.
    UefiTpm,
    /// `windows`, UEFI without Secure Boot, Windows 11 bypass keys.
    Uefi,
    /// `windows-xp`: pc, IDE, rtl8139.
    Xp,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Bios => "windows-bios",
            Flavour::UefiTpm => "windows-uefi-tpm",
            Flavour::Uefi => "windows-uefi",
            Flavour::Xp => "windows-xp",
        }
    }
}

pub fn settings(flavour: Flavour) -> WindowsSettings {
    let (_, public) = key("controller");
    let profile = match flavour {
        Flavour::Xp => Profile::WindowsXp,
        _ => Profile::Windows,
    };
    let mut s = WindowsSettings::new(profile, Secret::new("Stand-in-Pa55"), public);
    match flavour {
        Flavour::Bios => {}
        Flavour::UefiTpm => {
            s.firmware = Firmware::Uefi;
            s.win11 = Win11Requirements::RealTpmUefi;
        }
        Flavour::Uefi => s.firmware = Firmware::Uefi,
        Flavour::Xp => {
            s.product_key = Some("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE".into());
            // Not UTC: guestbox starts the RTC at the host's local time, and Windows reads
            // it as local time of its own zone.
            s.timezone = "W. Europe Standard Time".into();
        }
    }
    s
}

pub fn media(settings: &WindowsSettings, mirror_root: &Path) -> InstallMedia {
    let arch = match settings.profile {
        Profile::Windows => CygwinArch::X86_64,
        Profile::WindowsXp => CygwinArch::X86,
    };
    let mirror = standin::mirror::cygwin_mirror(mirror_root, arch).unwrap();
    build_install_media(settings, &mirror).unwrap()
}

/// A guest directory laid out as `guestbox bootstrap --emit` lays it out: media, disk,
/// firmware variables, TPM state; QEMU runs in it with relative paths.
pub struct Guest {
    pub dir: tempfile::TempDir,
    pub settings: WindowsSettings,
    pub hw: Hardware,
    pub stages: Vec<Stage>,
}

impl Guest {
    pub fn new(flavour: Flavour, iso: &Path) -> Guest {
        let settings = settings(flavour);
        let dir = tempfile::Builder::new()
            .prefix("standin-")
            .tempdir_in("/tmp")
            .unwrap();
        let m = media(&settings, &dir.path().join("mirror"));
        m.write_to_dir(dir.path()).unwrap();
        Guest::with_media(dir, settings, iso)
    }

    pub fn with_media(dir: tempfile::TempDir, settings: WindowsSettings, iso: &Path) -> Guest {
        let hw = Hardware::new(&settings, Accel::Tcg);
        let paths = WindowsPaths::new(Path::new(""), Path::new("run"), iso).unwrap();
        let stages = stage_specs(&settings, &paths, &hw).unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        if let Some(o) = guestbox::profile::windows::ovmf_build(&settings) {
            std::fs::copy(o.vars_template, dir.path().join(&paths.ovmf_vars)).unwrap();
        }
        Guest {
            dir,
            settings,
            hw,
            stages,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn create_disk(&self) {
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "disk.qcow2"])
            .arg(format!("{}G", self.hw.disk_gib))
            .current_dir(self.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// Runs stage `index` (0: install, 1: first boot) with its exact command line.
    pub fn start(&self, index: usize) -> Running {
        let stage = &self.stages[index];
        let _ = std::fs::remove_file(self.path().join(&stage.spec.console_log));
        let swtpm = stage.spec.platform.tpm.as_ref().map(|t| {
            std::fs::create_dir_all(self.path().join(&t.state_dir)).unwrap();
            let _ = std::fs::remove_file(self.path().join(&t.socket));
            let child = Command::new("swtpm")
                .args(guestbox::machine::tpm::argv(t, None).unwrap())
                .current_dir(self.path())
                .stdin(Stdio::null())
                .spawn()
                .expect("swtpm runs (apt-get install swtpm)");
            let sock = self.path().join(&t.socket);
            let until = Instant::now() + Duration::from_secs(10);
            while !sock.exists() {
                assert!(Instant::now() < until, "swtpm did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            child
        });
        let argv = stage.argv().unwrap();
        eprintln!(
            "{} stage: qemu-system-x86_64 {}",
            stage.name,
            argv.join(" ")
        );
        let stderr =
            std::fs::File::create(self.path().join(format!("{}.stderr", stage.name))).unwrap();
        let qemu = Command::new("qemu-system-x86_64")
            .args(&argv)
            // The host's local time (`-rtc base=localtime`) is UTC here, whatever the
            // machine's zone: the clock tests compute with it.
            .env("TZ", "UTC")
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("qemu-system-x86_64 runs (scripts/setup)");
        let keys = stage.boot_keys.clone().map(|k| {
            let qmp = self.path().join(&stage.spec.qmp_socket);
            std::thread::spawn(move || press_keys(&qmp, &k.qcode, k.every, k.during))
        });
        Running {
            qemu,
            swtpm,
            console: self.path().join(&stage.spec.console_log),
            started: Instant::now(),
            _keys: keys,
        }
    }

    pub fn console(&self, index: usize) -> String {
        std::fs::read_to_string(self.path().join(&self.stages[index].spec.console_log))
            .unwrap_or_default()
    }
}

/// Presses a key over QMP every `every` for `during`, as guestbox does for Windows' UEFI
/// CD loader ("Press any key to boot from CD").
fn press_keys(qmp: &Path, qcode: &str, every: Duration, during: Duration) {
    let short = short_link(qmp.parent().unwrap());
    let sock = short.join(qmp.file_name().unwrap());
    let until = Instant::now() + during;
    let mut stream = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        if Instant::now() > until {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let _ = stream.write_all(b"{\"execute\":\"qmp_capabilities\"}\n");
    std::thread::spawn(move || {
        let mut l = String::new();
        while reader.read_line(&mut l).map(|n| n > 0).unwrap_or(false) {
            l.clear();
        }
    });
    while Instant::now() < until {
        let cmd = format!(
            "{{\"execute\":\"send-key\",\"arguments\":{{\"keys\":[{{\"type\":\"qcode\",\"data\":\"{qcode}\"}}]}}}}\n"
        );
        if stream.write_all(cmd.as_bytes()).is_err() {
            return;
        }
        std::thread::sleep(every);
    }
}

/// A short path (a symlink in /tmp) to `dir`, for unix socket names.
pub fn short_link(dir: &Path) -> PathBuf {
    let link = std::env::temp_dir().join(format!(
        "sb-{:x}",
        blake3_like(dir.to_string_lossy().as_bytes())
    ));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir, &link).unwrap();
    link
}

fn blake3_like(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

pub struct Running {
    pub qemu: Child,
    pub swtpm: Option<Child>,
    pub console: PathBuf,
    pub started: Instant,
    _keys: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Waits for QEMU to exit (the guest powered off); panics with the console on timeout.
    /// `timeout` counts from this call; the duration returned, from QEMU's start.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.qemu.try_wait().unwrap() {
                return (status, self.started.elapsed());
            }
            if Instant::now() > until {
                let _ = self.qemu.kill();
                let _ = self.qemu.wait();
                panic!(
                    "the VM did not power off within {timeout:?}; COM1:\n{}",
                    tail(&self.console_text(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for `marker` on COM1; panics (with COM1) if QEMU exits or time runs out.
    pub fn wait_console(&mut self, marker: &str, timeout: Duration) -> Duration {
        loop {
            if self.console_text().contains(marker) {
                return self.started.elapsed();
            }
            if let Some(status) = self.qemu.try_wait().unwrap() {
                panic!(
                    "QEMU exited ({status}) before {marker:?}; COM1:\n{}",
                    tail(&self.console_text(), 60)
                );
            }
            if self.started.elapsed() > timeout {
                panic!(
                    "no {marker:?} within {timeout:?}; COM1:\n{}",
                    tail(&self.console_text(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if let Some(t) = &mut self.swtpm {
            let _ = t.kill();
            let _ = t.wait();
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The bootstrap's verdict on COM1.
pub fn assert_bootstrap_ok(console: &str) {
    assert!(
        !console.contains(standin::SETUP_FAILED)
            && !console.contains(media::windows::BOOTSTRAP_FAILED),
        "the install failed; COM1:\n{}",
        tail(console, 60)
    );
    assert!(
        console.contains(media::windows::BOOTSTRAP_OK),
        "no {} on COM1:\n{}",
        media::windows::BOOTSTRAP_OK,
        tail(console, 60)
    );
}

/// An installed guest of `flavour`, from the cache or installed now: a directory with the
/// installed disk (and firmware variables, TPM state) as the install left them. Returns
/// the cache directory; copy it before booting (`Guest::from_installed`).
pub fn installed(flavour: Flavour) -> PathBuf {
    let iso = iso();
    let dir = installed_dir(flavour, &iso);
    if dir.join("installed.ok").exists() {
        return dir;
    }
    let _vm = vm_lock();
    // Another test of this binary may have installed it while we waited.
    if dir.join("installed.ok").exists() {
        return dir;
    }
    let guest = Guest::new(flavour, &iso.path);
    guest.create_disk();
    let mut run = guest.start(0);
    let (status, took) = run.wait_exit(Duration::from_secs(900));
    drop(run);
    assert_bootstrap_ok(&guest.console(0));
    eprintln!(
        "{} install: {:.1} s ({status})",
        flavour.name(),
        took.as_secs_f64()
    );
    save_installed(&guest, &dir);
    dir
}

/// Where an install of `flavour` from `iso` is cached: keyed by the ISO and the settings.
pub fn installed_dir(flavour: Flavour, iso: &standin::StandinIso) -> PathBuf {
    let settings = format!("{:?}", settings(flavour));
    cache_dir().join(format!(
        "installed-{}-{}{:x}",
        flavour.name(),
        iso.key,
        blake3_like(settings.as_bytes()) & 0xffff_ffff
    ))
}

/// Keeps an installed guest in the cache (renamed into place when complete).
pub fn save_installed(guest: &Guest, dir: &Path) {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["disk.qcow2", "OVMF_VARS.fd"] {
        if guest.path().join(f).exists() {
            std::fs::copy(guest.path().join(f), tmp.join(f)).unwrap();
        }
    }
    if guest.path().join("tpm").exists() {
        let out = Command::new("cp")
            .arg("-a")
            .arg(guest.path().join("tpm"))
            .arg(&tmp)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    std::fs::write(tmp.join("installed.ok"), b"ok\n").unwrap();
    // Installs from older stand-in ISOs are of no use any more.
    // (Names are installed-<flavour>-<key>; flavour names contain '-' themselves.)
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let flavour_of = |n: &str| n.rsplit_once('-').map(|(f, _)| f.to_string());
    for e in std::fs::read_dir(dir.parent().unwrap()).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("installed-")
            && n != name
            && !n.ends_with(".tmp")
            && flavour_of(&n) == flavour_of(&name)
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).unwrap();
}

impl Guest {
    /// A fresh guest directory whose disk is a copy-on-write overlay of a cached install.
    pub fn from_installed(flavour: Flavour, installed: &Path, iso: &Path) -> Guest {
        let settings = settings(flavour);
        let dir = tempfile::Builder::new()
            .prefix("standin-")
            .tempdir_in("/tmp")
            .unwrap();
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(installed.join("disk.qcow2"))
            .arg(dir.path().join("disk.qcow2"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let g = Guest::with_media(dir, settings, iso);
        if installed.join("OVMF_VARS.fd").exists() {
            std::fs::copy(
                installed.join("OVMF_VARS.fd"),
                g.path().join("OVMF_VARS.fd"),
            )
            .unwrap();
        }
        if installed.join("tpm").exists() {
            let out = Command::new("cp")
                .arg("-a")
                .arg(installed.join("tpm"))
                .arg(g.path())
                .output()
                .unwrap();
            assert!(out.status.success());
        }
        g
    }
}

/// `ssh` to the guest through the controller double: (status, stdout, stderr).
pub fn ssh(
    port: u16,
    key: &Path,
    user: &str,
    extra: &[&str],
    cmd: &str,
    stdin: &[u8],
) -> (i32, String, String) {
    let mut c = Command::new("ssh");
    c.args(["-p", &port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=60",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(extra)
        .arg(format!("{user}@127.0.0.1"))
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .expect("ssh runs (apt-get install openssh-client)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Boots the installed guest (first-boot stage, exact argv) next to a controller double;
/// returns when sshd is up, with the boot time.
pub fn boot(
    flavour: Flavour,
    smb: Option<std::net::SocketAddr>,
) -> (Guest, Running, controller::Controller, Duration) {
    let iso = iso();
    let inst = installed(flavour);
    let guest = Guest::from_installed(flavour, &inst, &iso.path);
    let ctl = controller::Controller::start(&guest.path().join("run"), smb);
    let mut run = guest.start(1);
    let took = run.wait_console(standin::SSHD_READY, Duration::from_secs(300));
    eprintln!(
        "{} first boot to sshd: {:.1} s",
        flavour.name(),
        took.as_secs_f64()
    );
    (guest, run, ctl, took)
}

/// The controller's share as its agent lays it out, volume slot 0 holding `hello.txt`,
/// served by the Samba double with `password`: (the share's directory, the server, the
/// slot's tag).
pub fn hello_share(password: &str) -> (tempfile::TempDir, Smb, String) {
    let share = tempfile::tempdir().unwrap();
    let tag = link::shares::all_tags()[1].clone();
    std::fs::create_dir_all(share.path().join(&tag)).unwrap();
    std::fs::write(
        share.path().join(&tag).join("hello.txt"),
        "from the share\n",
    )
    .unwrap();
    let smb = Smb::start(
        link::shares::SMB_SHARE,
        share.path(),
        link::shares::SMB_USER,
        password,
    );
    (share, smb, tag)
}

/// A test double of the controller's Samba: smbd on 127.0.0.1 (a free port), a share
/// `name` over `share`, user `user` (mapped onto root) with `password`; NT1 to SMB3, as
/// guestbox's controller offers.
pub struct Smb {
    pub addr: std::net::SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Smb {
    pub fn start(name: &str, share: &Path, user: &str, password: &str) -> Smb {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for sub in ["private", "lock", "state", "cache", "pid", "ncalrpc"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("users.map"), format!("root = {user}\n")).unwrap();
        let conf = d.join("smb.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]
server role = standalone server
map to guest = never
restrict anonymous = 2
interfaces = 127.0.0.1
bind interfaces only = yes
smb ports = {port}
disable netbios = yes
load printers = no
printing = bsd
printcap name = /dev/null
disable spoolss = yes
unix extensions = no
server min protocol = NT1
ntlm auth = ntlmv2-only
username map = {d}/users.map
private dir = {d}/private
lock directory = {d}/lock
state directory = {d}/state
cache directory = {d}/cache
pid directory = {d}/pid
ncalrpc dir = {d}/ncalrpc
log file = {d}/log.%m
passdb backend = tdbsam:{d}/private/passdb.tdb

[{name}]
path = {share}
valid users = root
force user = root
read only = no
browseable = no
",
                d = d.display(),
                share = share.display()
            ),
        )
        .unwrap();
        let mut pw = Command::new("smbpasswd")
            .arg("-c")
            .arg(&conf)
            .args(["-a", "-s", "root"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("smbpasswd runs (apt-get install samba)");
        pw.stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n{password}\n").as_bytes())
            .unwrap();
        assert!(pw.wait().unwrap().success());
        let child = Command::new("smbd")
            .args(["--foreground", "--no-process-group", "--configfile"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smbd runs (apt-get install samba)");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < until, "smbd did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Smb {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Smb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// guestbox's per-run script (`guestbox::profile::windows::run_script`) for `argv` in /src, with
/// volume slot 0 (the share root's subdirectory `vol0`) bound at /src.
/// guestbox's bootstrap script for a Windows guest: the share root mapped with `net use`
/// (persistently) and mounted in Cygwin, which every later run binds its volumes from.
pub fn setup_script(smb_password: &str) -> String {
    guestbox::profile::windows::run::setup_script(smb_password).unwrap()
}

/// What `net use` says on stdout when it mapped a drive (the setup script leaves it there).
pub const NET_USE_OK: &str = "The command completed successfully.\r\n\r\n";

pub fn run_script(argv: &[&str], smb_password: &str) -> String {
    let tags = link::shares::all_tags();
    let job = guestbox::profile::GuestJob {
        time: None,
        seed: None,
        stdin: false,
        mounts: vec![guestbox::profile::GuestMount {
            tag: tags[1].clone(),
            guest_path: "/src".into(),
            readonly: false,
        }],
        env: vec![("GREETING".into(), "hello from the host".into())],
        workdir: Some("/src".into()),
        argv: argv.iter().map(|s| s.to_string()).collect(),
    };
    guestbox::profile::windows::run_script(&job, smb_password).unwrap()
}
