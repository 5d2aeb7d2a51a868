//! smbd: the controller's one share over the directory of 9p mount points.

use std::fs::{self, File};
use std::io::{self, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use link::{net, shares};

use crate::init::wait_listening;
use crate::run_cmd;

pub(crate) const SMB_CONF: &str = "/run/guestbox/smb.conf";

/// Starts smbd and waits until it listens.
pub(crate) fn start() -> io::Result<()> {
    fs::write(SMB_CONF, smb_conf())?;
    for dir in [
        "/run/samba",
        "/var/lib/samba/private",
        "/var/cache/samba",
        "/var/log/samba",
    ] {
        fs::create_dir_all(dir)?;
    }
    // Not waited for: smbd lives as long as the controller (tini reaps it).
    Command::new("/usr/sbin/smbd")
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
    wait_listening(net::SMB_PORT, Duration::from_secs(60))
}

/// One authenticated share over the directory of mount points. Never open to guests;
/// `wide links = no` keeps symlinks from leading outside what the host exported.
fn smb_conf() -> String {
    format!(
        "[global]
server role = standalone server
map to guest = never
restrict anonymous = 2
interfaces = {interface}
bind interfaces only = yes
smb ports = {port}
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

[{share}]
path = {root}
valid users = {user}
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
",
        interface = net::with_prefix(net::CONTROLLER_ADDRESS),
        port = net::SMB_PORT,
        share = shares::SMB_SHARE,
        root = shares::SHARE_ROOT,
        user = shares::SMB_USER,
    )
}

/// Gives the share's user its password (per base; the host sends it at bootstrap).
pub(crate) fn set_password(password: &str) -> io::Result<()> {
    let user = shares::SMB_USER;
    // Samba maps its users to Unix accounts; this one can do nothing but own the share.
    let known = fs::read_to_string("/etc/passwd")?
        .lines()
        .any(|l| l.starts_with(&format!("{user}:")));
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
                user,
            ],
        )?;
    }
    let mut child = Command::new("/usr/bin/smbpasswd")
        .args(["-c", SMB_CONF, "-s", "-a", user])
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
