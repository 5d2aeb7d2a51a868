//! smbd: the controller's one share over the directory of 9p mount points.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use link::net;
use link::shares::{self, Semantics};

use crate::init::wait_listening;
use crate::run_cmd;

pub(crate) const SMB_CONF: &str = "/run/guestbox/smb.conf";

/// Linux's CAP_MKNOD (linux/capability.h); libc does not export the capability numbers.
const CAP_MKNOD: libc::c_ulong = 27;

/// Starts smbd for `semantics` and waits until it listens.
pub(crate) fn start(semantics: Semantics) -> io::Result<()> {
    fs::write(SMB_CONF, smb_conf(semantics))?;
    for dir in [
        "/run/samba",
        "/var/lib/samba/private",
        "/var/cache/samba",
        "/var/log/samba",
    ] {
        fs::create_dir_all(dir)?;
    }
    let mut smbd = Command::new("/usr/sbin/smbd");
    smbd.args([
        "--foreground",
        "--no-process-group",
        "--debug-stdout",
        "--configfile",
        SMB_CONF,
    ])
    .stdin(Stdio::null())
    .stdout(File::create("/run/guestbox/smbd.log")?)
    .stderr(Stdio::inherit());
    // smbd works as root on the 9p mounts, and a QEMU running as root makes on the host
    // what it is asked to: a guest could plant device nodes of the host's disks in a
    // shared directory (the CIFS Unix Extensions carry mknod). QEMU's 9p refuses every
    // special file since the fix for CVE-2023-2861 (Debian's 7.2.x has it: fifos and
    // sockets fail too, the guest sees EACCES); without CAP_MKNOD in smbd's bounding set
    // no device can be made even through a QEMU without that fix.
    // SAFETY: prctl is async-signal-safe and touches only this (forked) process.
    unsafe {
        smbd.pre_exec(|| {
            if libc::prctl(libc::PR_CAPBSET_DROP, CAP_MKNOD, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Not waited for: smbd lives as long as the controller (tini reaps it).
    smbd.spawn()?;
    wait_listening(net::SMB_PORT, Duration::from_secs(60))
}

/// One authenticated share over the directory of mount points. Never open to guests;
/// `wide links = no` keeps symlinks from leading outside what the host exported.
///
/// [`Semantics::Posix`] (Linux guests) was chosen by measuring what each candidate gives
/// through Debian bookworm's Samba 4.17 and Linux 6.1's cifs client (the guest's mount
/// options are in the Debian profile's bootstrap script):
/// - SMB 3.1.1 POSIX extensions: not there. 4.17 knows no `smb3 unix extensions` outside
///   developer builds (testparm: unknown parameter); the client's `posix` mount fails with
///   EOPNOTSUPP.
/// - SMB3 with emulations (`mfsymlinks`, `modefromsid`, `idsfromsid`, `case sensitive`):
///   case-sensitive, but symlinks become regular files on the host (and host symlinks are
///   followed), chmod does not reach the host, no fifos or sockets, `:*?"<>|\` and
///   trailing dots and spaces land remapped into Unicode's private range.
/// - SMB1 with the CIFS Unix Extensions (this): exact modes incl. setuid/setgid/sticky,
///   owners, chmod/chown, real symlinks both ways (resolved by the guest, in the guest),
///   hard links, fifos and sockets, POSIX pathnames (case-sensitive, every byte but `/`
///   and NUL), 100 ns times. Debian's kernel keeps SMB1 (CONFIG_CIFS_ALLOW_INSECURE_LEGACY);
///   the link is private to the two VMs, so SMB1's weaker crypto exposes nothing.
fn smb_conf(semantics: Semantics) -> String {
    let posix = semantics == Semantics::Posix;
    let mut global = String::new();
    let mut share = String::new();
    if posix {
        global.push_str(
            "smb1 unix extensions = yes
# Names cross byte for byte. The guest's cifs client turns every byte its iocharset cannot
# convert into '?' (a\\xffb and a\\xfeb both become a?b: one overwrites the other), and a
# UTF-8 unix charset hides host names that are not UTF-8. ISO-8859-1 maps each of the 256
# byte values to one UTF-16 unit and back; the guest mounts with iocharset=iso8859-1, so
# the wire carries Latin-1 that neither end ever shows and both disks get the exact bytes
# (UTF-8 names stay UTF-8). Global in Samba, hence only for Linux guests: Windows sends
# real UTF-16 and needs UTF-8 on disk.
unix charset = ISO-8859-1
# Lets Samba offer the Unix Extensions' large writes: 1 MiB per request instead of 64 KiB.
min receivefile size = 16384
",
        );
        share.push_str(
            "# No case folding, no 8.3 aliases: a name means exactly one file (POSIX pathnames
# also turn folding off per connection; this keeps it off whatever the client asks).
case sensitive = yes
preserve case = yes
short preserve case = yes
mangled names = no
# The guest's umask and chmod decide modes; Samba must not mask them again.
create mask = 07777
directory mask = 07777
",
        );
    } else {
        global.push_str("unix extensions = no\n");
        share.push_str("create mask = 0644\ndirectory mask = 0755\n");
    }
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
wide links = no
log level = 1
# Windows XP speaks only SMB1 (and so does the CIFS Unix Extensions' Linux client).
server min protocol = NT1
ntlm auth = ntlmv2-only
{global}
[{share_name}]
path = {root}
valid users = {user}
force user = root
read only = no
browseable = no
wide links = no
# The server follows no link out of the share (wide links = no); with the Unix Extensions
# links are read and made as links and the guest resolves them itself. (`no` would also
# refuse to make links: EACCES, measured.)
follow symlinks = yes
# Plain Unix modes: no DOS attribute mapping onto execute bits, no xattrs on 9p.
map archive = no
map hidden = no
map system = no
store dos attributes = no
{share}",
        interface = net::with_prefix(net::CONTROLLER_ADDRESS),
        port = net::SMB_PORT,
        share_name = shares::SMB_SHARE,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Sections of an smb.conf, each `key → value`; a key given twice in one section
    /// (where Samba would silently keep the last) is an error.
    fn parse(conf: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut section = String::new();
        for line in conf.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let (k, v) = line
                .split_once(" = ")
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let old = out
                .entry(section.clone())
                .or_default()
                .insert(k.to_string(), v.to_string());
            assert!(old.is_none(), "{k} twice in [{section}]");
        }
        out
    }

    /// Windows guests get the share exactly as before POSIX semantics existed: these are
    /// all of that smb.conf's settings, nothing more, nothing less.
    #[test]
    fn windows_semantics_are_the_smb_conf_windows_guests_always_had() {
        let windows = parse(&smb_conf(Semantics::Windows));
        let want: BTreeMap<String, BTreeMap<String, String>> = [
            (
                "global",
                &[
                    ("server role", "standalone server"),
                    ("map to guest", "never"),
                    ("restrict anonymous", "2"),
                    ("interfaces", "192.168.0.2/24"),
                    ("bind interfaces only", "yes"),
                    ("smb ports", "445"),
                    ("disable netbios", "yes"),
                    ("load printers", "no"),
                    ("printing", "bsd"),
                    ("printcap name", "/dev/null"),
                    ("disable spoolss", "yes"),
                    ("unix extensions", "no"),
                    ("wide links", "no"),
                    ("log level", "1"),
                    ("server min protocol", "NT1"),
                    ("ntlm auth", "ntlmv2-only"),
                ][..],
            ),
            (
                shares::SMB_SHARE,
                &[
                    ("path", shares::SHARE_ROOT),
                    ("valid users", shares::SMB_USER),
                    ("force user", "root"),
                    ("read only", "no"),
                    ("browseable", "no"),
                    ("wide links", "no"),
                    ("follow symlinks", "yes"),
                    ("map archive", "no"),
                    ("map hidden", "no"),
                    ("map system", "no"),
                    ("store dos attributes", "no"),
                    ("create mask", "0644"),
                    ("directory mask", "0755"),
                ][..],
            ),
        ]
        .into_iter()
        .map(|(section, kvs)| {
            (
                section.to_string(),
                kvs.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        })
        .collect();
        assert_eq!(windows, want);
    }

    #[test]
    fn posix_semantics_turn_on_what_linux_guests_need_and_windows_keeps_smb_as_it_was() {
        let posix = parse(&smb_conf(Semantics::Posix));
        let windows = parse(&smb_conf(Semantics::Windows));
        let get = |c: &BTreeMap<String, BTreeMap<String, String>>, s: &str, k: &str| {
            c.get(s).and_then(|s| s.get(k)).cloned()
        };
        let share = shares::SMB_SHARE;
        let mut differing = std::collections::BTreeSet::new();
        for (section, key, p, w) in [
            ("global", "smb1 unix extensions", Some("yes"), None),
            ("global", "unix extensions", None, Some("no")),
            ("global", "unix charset", Some("ISO-8859-1"), None),
            ("global", "server min protocol", Some("NT1"), Some("NT1")),
            ("global", "wide links", Some("no"), Some("no")),
            (share, "wide links", Some("no"), Some("no")),
            (share, "case sensitive", Some("yes"), None),
            (share, "mangled names", Some("no"), None),
            (share, "create mask", Some("07777"), Some("0644")),
            (share, "directory mask", Some("07777"), Some("0755")),
            (share, "force user", Some("root"), Some("root")),
        ] {
            assert_eq!(
                get(&posix, section, key).as_deref(),
                p,
                "posix [{section}] {key}"
            );
            assert_eq!(
                get(&windows, section, key).as_deref(),
                w,
                "windows [{section}] {key}"
            );
            if p != w {
                differing.insert((section.to_string(), key.to_string()));
            }
        }
        // Everything else is the same for both.
        for (name, section) in &windows {
            for (k, v) in section {
                if differing.contains(&(name.clone(), k.clone())) {
                    continue;
                }
                if let Some(pv) = get(&posix, name, k) {
                    assert_eq!(&pv, v, "[{name}] {k}");
                }
            }
        }
    }
}
