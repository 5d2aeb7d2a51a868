//! guestbox-agent: the controller VM's only service (run by tini as PID 1's child).
//!
//! At start it mounts the pseudo filesystems, brings up the private link as 192.168.0.2,
//! starts smbd, then serves the host over the virtio-serial control port.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::{read_frame, write_message, Event, FrameKind, Request, CONTROL_PORT, READY_MARKER};

const ADDRESS: &str = "192.168.0.2/24";
const SMB_CONF: &str = "/run/guestbox/smb.conf";

fn main() {
    if let Err(e) = run() {
        console(&format!("guestbox-agent: {e}"));
        std::process::exit(1);
    }
}

/// Writes a line to the VM's console (the host keeps it as the console log).
fn console(line: &str) {
    if let Ok(mut c) = OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "{line}");
    }
}

fn sh(program: &str, args: &[&str]) -> io::Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {} failed: {status}",
            args.join(" ")
        )))
    }
}

fn mount(kind: &str, target: &str, options: &str) -> io::Result<()> {
    fs::create_dir_all(target)?;
    sh("/bin/mount", &["-t", kind, "-o", options, kind, target])
}

fn run() -> io::Result<()> {
    mount("proc", "/proc", "nosuid,nodev,noexec")?;
    mount("sysfs", "/sys", "nosuid,nodev,noexec")?;
    mount("devpts", "/dev/pts", "gid=5,mode=620")?;
    mount("tmpfs", "/tmp", "mode=1777")?;
    fs::create_dir_all("/run/guestbox")?;
    sh("/bin/hostname", &["guestbox-controller"])?;
    sh("/sbin/ip", &["link", "set", "lo", "up"])?;
    sh("/sbin/ip", &["addr", "add", ADDRESS, "dev", "eth0"])?;
    sh("/sbin/ip", &["link", "set", "eth0", "up"])?;
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

/// Samba's global section. Shares are added per run; nothing is ever open to guests.
fn smb_conf() -> String {
    [
        "[global]",
        "server role = standalone server",
        "map to guest = never",
        "restrict anonymous = 2",
        "interfaces = 192.168.0.2/24",
        "bind interfaces only = yes",
        "smb ports = 445",
        "disable netbios = yes",
        "load printers = no",
        "printing = bsd",
        "printcap name = /dev/null",
        "disable spoolss = yes",
        "wide links = no",
        "unix extensions = no",
        "log level = 1",
        "",
    ]
    .join("\n")
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

fn serve(port: &Path) -> io::Result<()> {
    // A virtio port can be opened once: one read-write handle, cloned for writing.
    let mut reader = OpenOptions::new().read(true).write(true).open(port)?;
    let mut writer = reader.try_clone()?;
    loop {
        let (kind, payload) = match read_frame(&mut reader) {
            Ok(frame) => frame,
            // The host end is not connected (yet, or any more): wait for the next host.
            Err(agent::ProtoError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        if kind != FrameKind::Message {
            continue;
        }
        let reply = match serde_json::from_slice::<Request>(&payload) {
            Ok(Request::Ping) => Event::Pong {
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            Ok(Request::Poweroff) => {
                let _ = sh("/bin/sync", &[]);
                // SAFETY: plain syscall; the host asked for the controller to go away.
                unsafe {
                    libc::reboot(libc::RB_POWER_OFF);
                }
                return Ok(());
            }
            Err(e) => Event::Error {
                message: format!("bad request: {e}"),
            },
        };
        write_message(&mut writer, &reply).map_err(|e| io::Error::other(e.to_string()))?;
    }
}
