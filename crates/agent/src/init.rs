//! The controller's start: pseudo filesystems, the private link as the controller's
//! address, the share root of 9p mount points, smbd; then the control port is found.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use link::{markers, net, proto, shares};

use crate::{console, run_cmd, smb};

pub(crate) fn mount(kind: &str, source: &str, target: &str, options: &str) -> io::Result<()> {
    fs::create_dir_all(target)?;
    run_cmd("/bin/mount", &["-t", kind, "-o", options, source, target])
}

/// Brings the controller up; returns the control port's device once smbd listens.
pub(crate) fn start() -> io::Result<PathBuf> {
    mount("proc", "proc", "/proc", "nosuid,nodev,noexec")?;
    mount("sysfs", "sysfs", "/sys", "nosuid,nodev,noexec")?;
    mount("devpts", "devpts", "/dev/pts", "gid=5,mode=620")?;
    mount("tmpfs", "tmpfs", "/tmp", "mode=1777")?;
    fs::create_dir_all("/run/guestbox")?;
    run_cmd("/bin/hostname", &["guestbox-controller"])?;
    run_cmd("/sbin/ip", &["link", "set", "lo", "up"])?;
    let address = net::with_prefix(net::CONTROLLER_ADDRESS);
    run_cmd("/sbin/ip", &["addr", "add", &address, "dev", "eth0"])?;
    let mtu = net::MTU.to_string();
    run_cmd("/sbin/ip", &["link", "set", "eth0", "mtu", &mtu, "up"])?;
    // The share root is a tmpfs of mount points, one per 9p tag; they stay empty until a
    // run mounts its directories on them.
    mount("tmpfs", "tmpfs", shares::SHARE_ROOT, "mode=755,size=1m")?;
    for tag in shares::all_tags() {
        fs::create_dir_all(Path::new(shares::SHARE_ROOT).join(tag))?;
    }
    // The guest profile's choice, made at bootstrap (see link::shares::Semantics).
    let semantics = shares::Semantics::from_cmdline(&fs::read_to_string("/proc/cmdline")?)
        .map_err(io::Error::other)?;
    smb::start(semantics)?;
    let port = find_port(proto::CONTROL_PORT)?;
    console(markers::CONTROLLER_READY);
    Ok(port)
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

/// Polls /proc/net/tcp for a socket listening on `port`.
pub(crate) fn wait_listening(port: u16, timeout: Duration) -> io::Result<()> {
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
