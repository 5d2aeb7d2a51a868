//! guestbox-agent: the controller VM's only service (tini is PID 1 and reaps for it).
//!
//! At start it mounts the pseudo filesystems, brings up the private link as 192.168.0.2,
//! starts smbd, then serves the host over the virtio-serial control port: setup once at
//! bootstrap (SSH connection to the guest, SMB share mounted there), then one job per
//! revive (mount the run's 9p volumes, run the command over SSH, stream its output).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::{
    read_frame, write_frame, write_message, Event, FrameKind, Request, Run, Setup, CONTROL_PORT,
    READY_MARKER, SHARE_ROOT, SMB_SHARE, SMB_USER, VOLUME_SLOTS, XCHG_TAG,
};

mod mux;

const ADDRESS: &str = "192.168.0.2/24";
const GUEST: &str = "192.168.0.1";
const SMB_CONF: &str = "/run/guestbox/smb.conf";
const SSH_DIR: &str = "/run/guestbox/ssh";

fn main() {
    // Before any thread exists, so every thread inherits it: SIGIO (which would terminate
    // us) only ever waits to be taken by `wait_for_host` (children get a clean mask).
    block_sigio();
    if let Err(e) = start() {
        console(&format!("guestbox-agent: {e}"));
        // Keep PID 1 (tini) from panicking the kernel: the host sees the message and times out.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Writes a line to the VM's console (the host keeps it as the console log).
fn console(line: &str) {
    if let Ok(mut c) = OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "{line}");
    }
}

fn run_cmd(program: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn mount(kind: &str, source: &str, target: &str, options: &str) -> io::Result<()> {
    fs::create_dir_all(target)?;
    run_cmd("/bin/mount", &["-t", kind, "-o", options, source, target])
}

fn start() -> io::Result<()> {
    mount("proc", "proc", "/proc", "nosuid,nodev,noexec")?;
    mount("sysfs", "sysfs", "/sys", "nosuid,nodev,noexec")?;
    mount("devpts", "devpts", "/dev/pts", "gid=5,mode=620")?;
    mount("tmpfs", "tmpfs", "/tmp", "mode=1777")?;
    fs::create_dir_all("/run/guestbox")?;
    run_cmd("/bin/hostname", &["guestbox-controller"])?;
    run_cmd("/sbin/ip", &["link", "set", "lo", "up"])?;
    run_cmd("/sbin/ip", &["addr", "add", ADDRESS, "dev", "eth0"])?;
    // Jumbo frames on the private link, as in the guest: fewer packets to emulate.
    run_cmd("/sbin/ip", &["link", "set", "eth0", "mtu", "65520", "up"])?;
    // The share root is a tmpfs of mount points, one per 9p tag; they stay empty until a
    // run mounts its directories on them.
    mount("tmpfs", "tmpfs", SHARE_ROOT, "mode=755,size=1m")?;
    for tag in std::iter::once(XCHG_TAG.to_string()).chain((0..VOLUME_SLOTS).map(agent::volume_tag))
    {
        fs::create_dir_all(Path::new(SHARE_ROOT).join(tag))?;
    }
    let _smbd = start_smbd()?;
    let port = find_port(CONTROL_PORT)?;
    console(READY_MARKER);
    serve(&port)
}

fn start_smbd() -> io::Result<Child> {
    fs::write(SMB_CONF, smb_conf())?;
    for dir in [
        "/run/samba",
        "/var/lib/samba/private",
        "/var/cache/samba",
        "/var/log/samba",
    ] {
        fs::create_dir_all(dir)?;
    }
    let child = Command::new("/usr/sbin/smbd")
        .args([
            "--foreground",
            "--no-process-group",
            "--debug-stdout",
            "--configfile",
            SMB_CONF,
        ])
        .stdin(Stdio::null())
        .stdout(File::create("/run/guestbox/smbd.log")?)
        .stderr(Stdio::inherit())
        .spawn()?;
    wait_listening(445, Duration::from_secs(60))?;
    Ok(child)
}

/// One authenticated share over the directory of mount points. Never open to guests;
/// `wide links = no` keeps symlinks from leading outside what the host exported.
fn smb_conf() -> String {
    format!(
        "[global]
server role = standalone server
map to guest = never
restrict anonymous = 2
interfaces = 192.168.0.2/24
bind interfaces only = yes
smb ports = 445
disable netbios = yes
load printers = no
printing = bsd
printcap name = /dev/null
disable spoolss = yes
unix extensions = no
wide links = no
log level = 1
# Windows XP speaks only SMB1.
server min protocol = NT1
ntlm auth = ntlmv2-only

[{SMB_SHARE}]
path = {SHARE_ROOT}
valid users = {SMB_USER}
force user = root
read only = no
browseable = no
wide links = no
follow symlinks = yes
# Plain Unix modes: no DOS attribute mapping onto execute bits, no xattrs on 9p.
map archive = no
map hidden = no
map system = no
store dos attributes = no
create mask = 0644
directory mask = 0755
"
    )
}

/// Polls /proc/net/tcp for a socket listening on `port`.
fn wait_listening(port: u16, timeout: Duration) -> io::Result<()> {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    let start = Instant::now();
    while start.elapsed() < timeout {
        if fs::read_to_string("/proc/net/tcp").is_ok_and(|t| t.contains(&needle)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::other(format!(
        "nothing listened on port {port} within {timeout:?}"
    )))
}

/// The /dev node of the virtio-serial port called `name` (there is no udev to name it).
fn find_port(name: &str) -> io::Result<PathBuf> {
    let start = Instant::now();
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    return Ok(Path::new("/dev").join(entry.file_name()));
                }
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(io::Error::other(format!(
                "no virtio-serial port named {name}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

type Writer = Arc<Mutex<File>>;

fn send(writer: &Writer, event: &Event) -> io::Result<()> {
    let mut w = writer
        .lock()
        .map_err(|_| io::Error::other("writer poisoned"))?;
    write_message(&mut *w, event).map_err(|e| io::Error::other(e.to_string()))
}

/// Where Stdin frames go while a job reads its stdin.
type StdinSink = Arc<Mutex<Option<File>>>;

fn serve(port: &Path) -> io::Result<()> {
    // A virtio port can be opened once: one read-write handle, cloned for writing.
    let reader = OpenOptions::new().read(true).write(true).open(port)?;
    let writer: Writer = Arc::new(Mutex::new(reader.try_clone()?));
    let stdin_sink: StdinSink = Arc::new(Mutex::new(None));
    // One thread reads every frame: requests go to the loop below, a job's stdin straight
    // into its pipe, so input keeps flowing while a job runs.
    let (requests, incoming) = std::sync::mpsc::channel::<Vec<u8>>();
    let sink = stdin_sink.clone();
    std::thread::spawn(move || read_frames(reader, requests, sink));
    loop {
        let Ok(payload) = incoming.recv() else {
            return Err(io::Error::other("the control port reader stopped"));
        };
        let result = match serde_json::from_slice::<Request>(&payload) {
            Ok(Request::Ping) => send(
                &writer,
                &Event::Pong {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                },
            ),
            Ok(Request::Setup(setup)) => match do_setup(&setup) {
                Ok(()) => send(&writer, &Event::SetupDone),
                Err(e) => send(
                    &writer,
                    &Event::Error {
                        message: format!("setup: {e}"),
                    },
                ),
            },
            Ok(Request::Run(job)) => match do_run(&job, &writer, &stdin_sink) {
                Ok(code) => send(&writer, &Event::Exit { code }),
                Err(e) => send(
                    &writer,
                    &Event::Error {
                        message: e.to_string(),
                    },
                ),
            },
            Ok(Request::Poweroff) => {
                let _ = run_cmd("/bin/sync", &[]);
                // SAFETY: plain syscall; the host asked for the controller to go away.
                unsafe {
                    libc::reboot(libc::RB_POWER_OFF);
                }
                return Ok(());
            }
            Err(e) => send(
                &writer,
                &Event::Error {
                    message: format!("bad request: {e}"),
                },
            ),
        };
        result?;
    }
}

fn sigio_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        set
    }
}

fn block_sigio() {
    let set = sigio_set();
    // SAFETY: changes this thread's signal mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Asks the kernel for SIGIO when the host end of `port` opens or closes. Until a host
/// connects, reads return EOF at once: polling them cost a TCG controller a fifth of a CPU,
/// idle, which parallel revives felt.
fn notify_host_changes(port: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = port.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        if libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits for the host to connect (a SIGIO from the port), at most a quarter second so a
/// lost signal only costs a little latency.
fn wait_for_host() {
    let set = sigio_set();
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 250_000_000,
    };
    // SAFETY: SIGIO is blocked in every thread; this takes a pending one or times out.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
}

fn read_frames(mut reader: File, requests: std::sync::mpsc::Sender<Vec<u8>>, stdin: StdinSink) {
    let notified = notify_host_changes(&reader);
    if let Err(e) = &notified {
        console(&format!(
            "guestbox-agent: no SIGIO from the control port ({e}); polling it"
        ));
    }
    loop {
        match read_frame(&mut reader) {
            Ok((FrameKind::Message, payload)) => {
                if requests.send(payload).is_err() {
                    return;
                }
            }
            Ok((FrameKind::Stdin, data)) => {
                let Ok(mut sink) = stdin.lock() else { return };
                if data.is_empty() {
                    *sink = None;
                } else if let Some(pipe) = sink.as_mut() {
                    // The command may have closed its stdin: then the input has nowhere to go.
                    if pipe.write_all(&data).is_err() {
                        *sink = None;
                    }
                }
            }
            Ok(_) => {}
            // The host end is not connected (yet, or any more): wait for the next host.
            Err(agent::ProtoError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                if notified.is_ok() {
                    wait_for_host();
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Err(e) => {
                console(&format!("guestbox-agent: control channel: {e}"));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn write_secret(path: &str, content: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode_0600()
        .open(path)?;
    f.write_all(content.as_bytes())
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

fn ssh_args() -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-i",
        &format!("{SSH_DIR}/id"),
        "-o",
        &format!("UserKnownHostsFile={SSH_DIR}/known_hosts"),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        &format!("ControlPath={SSH_DIR}/master"),
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ServerAliveInterval=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn do_setup(setup: &Setup) -> io::Result<()> {
    fs::create_dir_all(SSH_DIR)?;
    fs::set_permissions(SSH_DIR, fs::Permissions::from_mode(0o700))?;
    let mut key = setup.client_key.clone();
    if !key.ends_with('\n') {
        key.push('\n');
    }
    write_secret(&format!("{SSH_DIR}/id"), &key)?;
    write_secret(
        &format!("{SSH_DIR}/known_hosts"),
        &format!("{GUEST} {}\n", setup.guest_host_key.trim()),
    )?;
    set_smb_password(&setup.smb_password)?;
    // Like the original's controller: wait until the guest's SSH port answers.
    let addr: SocketAddr = format!("{GUEST}:22").parse().map_err(io::Error::other)?;
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        if start.elapsed() > Duration::from_secs(120) {
            return Err(io::Error::other(
                "the guest's SSH port did not open within 120 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The master connection lives on in the snapshot: a run opens a channel on it and
    // pays no handshake.
    let target = format!("{}@{GUEST}", setup.guest_user);
    let mut args = ssh_args();
    args.extend(
        [
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=yes",
            "-f",
            "-N",
            &target,
        ]
        .map(String::from),
    );
    let out = Command::new("/usr/bin/ssh")
        .args(&args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ssh to the guest failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut args = ssh_args();
    args.extend([target, "sh -s".to_string()]);
    let mut child = Command::new("/usr/bin/ssh")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(setup.guest_script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "the guest's setup script failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn set_smb_password(password: &str) -> io::Result<()> {
    // Samba maps its users to Unix accounts; this one can do nothing but own the share.
    let known = fs::read_to_string("/etc/passwd")?
        .lines()
        .any(|l| l.starts_with(&format!("{SMB_USER}:")));
    if !known {
        run_cmd(
            "/usr/sbin/useradd",
            &[
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SMB_USER,
            ],
        )?;
    }
    let mut child = Command::new("/usr/bin/smbpasswd")
        .args(["-c", SMB_CONF, "-s", "-a", SMB_USER])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("{password}\n{password}\n").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "smbpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// mount(2) directly: a run is on the critical path, and a mount(8) process costs a fork
/// and an exec under emulation.
fn mount_9p(tag: &str, target: &str, readonly: bool) -> io::Result<()> {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let (source, target_c, fstype) = (c(tag)?, c(target)?, c("9p")?);
    let data = c("trans=virtio,version=9p2000.L,msize=1048576,cache=none,access=any")?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if readonly {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_clock(seconds: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: seconds as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall with a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn do_run(job: &Run, writer: &Writer, stdin_sink: &StdinSink) -> io::Result<i32> {
    if let Some(t) = job.time {
        set_clock(t)?;
    }
    for m in &job.mounts {
        let target = format!("{SHARE_ROOT}/{}", m.tag);
        mount_9p(&m.tag, &target, m.readonly)
            .map_err(|e| io::Error::other(format!("mounting {}: {e}", m.tag)))?;
    }
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let stdin = if job.stdin {
        let (read, write) = pipe()?;
        *stdin_sink
            .lock()
            .map_err(|_| io::Error::other("stdin poisoned"))? = Some(File::from(write));
        read
    } else {
        OwnedFd::from(File::open("/dev/null")?)
    };
    let master = format!("{SSH_DIR}/master");
    let mut session = mux::open(
        Path::new(&master),
        &job.script,
        job.tty.as_ref().map(|t| t.term.as_str()),
        &stdin,
        &stdout_write,
        &stderr_write,
    )?;
    // The master holds its own copies now; ours must go or the pipes never reach EOF.
    drop((stdin, stdout_write, stderr_write));
    send(writer, &Event::Started)?;
    let pumps: Vec<_> = [
        (stdout_read, FrameKind::Stdout),
        (stderr_read, FrameKind::Stderr),
    ]
    .into_iter()
    .map(|(fd, kind)| {
        let writer = writer.clone();
        let mut stream = File::from(fd);
        std::thread::spawn(move || -> io::Result<()> {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                let mut w = writer
                    .lock()
                    .map_err(|_| io::Error::other("writer poisoned"))?;
                write_frame(&mut *w, kind, &buf[..n])
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
        })
    })
    .collect();
    let code = session.wait();
    if let Ok(mut sink) = stdin_sink.lock() {
        *sink = None;
    }
    for pump in pumps {
        pump.join()
            .map_err(|_| io::Error::other("output pump panicked"))??;
    }
    // Only now: the master has written all output (see Session::wait).
    drop(session);
    let code = code?;
    // As in the original: the exit code also lands in the exchange directory.
    if job.mounts.iter().any(|m| m.tag == XCHG_TAG) {
        fs::write(
            format!("{SHARE_ROOT}/{XCHG_TAG}/in-vm-exit"),
            format!("{code}\n"),
        )?;
    }
    Ok(code)
}
