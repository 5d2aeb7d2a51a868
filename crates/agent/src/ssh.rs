//! The controller's SSH connection to the guest: a ControlMaster made once at bootstrap,
//! which lives on in the snapshot, so a run opens a session on it ([`crate::mux`]) and
//! pays no handshake.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use link::{net, proto::Setup};

use crate::{mux, smb, write_secret};

pub(crate) const SSH_DIR: &str = "/run/guestbox/ssh";
/// The master's control socket, which [`crate::mux`] connects to.
pub(crate) const MASTER: &str = "/run/guestbox/ssh/master";

/// `ssh`'s options for the guest. `host_keys`: `yes` (only the known key) or `accept-new`
/// (the first key seen, at a bootstrap that does not know it yet); ssh takes the first
/// value given for an option, so it is chosen here.
fn ssh_args(host_keys: &str) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-i",
        &format!("{SSH_DIR}/id"),
        "-o",
        &format!("UserKnownHostsFile={SSH_DIR}/known_hosts"),
        "-o",
        &format!("StrictHostKeyChecking={host_keys}"),
        "-o",
        "BatchMode=yes",
        "-o",
        &format!("ControlPath={MASTER}"),
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ServerAliveInterval=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The guest's resident job server: a session opened at setup that runs guestbox's exec
/// helper as [`link::job::SERVE_COMMAND`], with the agent's ends of its stdin and stdout.
/// Frozen with both VMs, it lets a revived pair run a job with no SSH session to open and
/// no shell to start in the guest: only data on a channel that is already there.
pub(crate) struct Server {
    pub to_guest: File,
    pub from_guest: File,
    /// The session's control connection: closing it would end the session.
    _session: mux::Session,
}

/// Opens the job server's session on the master.
fn open_server() -> io::Result<Server> {
    let (stdin_read, stdin_write) = crate::job::pipe()?;
    let (stdout_read, stdout_write) = crate::job::pipe()?;
    // What the server says outside its frames (it has nothing to say unless it fails).
    let console = OwnedFd::from(fs::OpenOptions::new().write(true).open("/dev/console")?);
    let session = mux::open(
        std::path::Path::new(MASTER),
        link::job::SERVE_COMMAND,
        None,
        &stdin_read,
        &stdout_write,
        &console,
    )?;
    Ok(Server {
        to_guest: File::from(stdin_write),
        from_guest: File::from(stdout_read),
        _session: session,
    })
}

/// What setup leaves: the guest's job server (None if there is none: jobs then open a
/// session each), and the guest's host key the connection trusted.
pub(crate) struct SetUp {
    pub server: Option<Server>,
    pub host_key: String,
}

/// Once, at bootstrap: credentials, the master connection, the guest's setup script, then
/// the guest's job server if asked for.
pub(crate) fn setup(setup: &Setup) -> io::Result<SetUp> {
    fs::create_dir_all(SSH_DIR)?;
    fs::set_permissions(SSH_DIR, fs::Permissions::from_mode(0o700))?;
    let mut key = setup.client_key.clone();
    if !key.ends_with('\n') {
        key.push('\n');
    }
    write_secret(&format!("{SSH_DIR}/id"), &key)?;
    let known_hosts = format!("{SSH_DIR}/known_hosts");
    let host_keys = if setup.guest_host_key.trim().is_empty() {
        // Trust on first use, on a link that has nothing but the guest on it.
        write_secret(&known_hosts, "")?;
        "accept-new"
    } else {
        write_secret(
            &known_hosts,
            &format!("{} {}\n", net::GUEST_ADDRESS, setup.guest_host_key.trim()),
        )?;
        "yes"
    };
    smb::set_password(&setup.smb_password)?;
    // Like the original's controller: wait until the guest's SSH port answers.
    let addr = SocketAddr::from((net::GUEST_ADDRESS, net::SSH_PORT));
    let start = Instant::now();
    let wait = Duration::from_secs(setup.ssh_wait_secs);
    while TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        if start.elapsed() > wait {
            return Err(io::Error::other(format!(
                "the guest's SSH port did not open within {} s",
                wait.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let target = format!("{}@{}", setup.guest_user, net::GUEST_ADDRESS);
    let mut args = ssh_args(host_keys);
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
    // `192.168.0.1 ssh-ed25519 AAAA...`: the key, without the host.
    let host_key = fs::read_to_string(&known_hosts)?
        .lines()
        .find_map(|l| l.split_once(' ').map(|(_, key)| key.trim().to_string()))
        .unwrap_or_default();
    let mut args = ssh_args(host_keys);
    args.extend([target, setup.guest_command.clone()]);
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
    if !setup.job_server {
        return Ok(SetUp {
            server: None,
            host_key,
        });
    }
    let server = match open_server() {
        Ok(server) => Some(server),
        Err(e) => {
            crate::console(&format!(
                "guestbox-agent: no job server in the guest ({e}); each job opens a session"
            ));
            None
        }
    };
    Ok(SetUp { server, host_key })
}
