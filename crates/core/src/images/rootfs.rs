//! Root disks for the guest and the controller: mmdebstrap, a few files of guestbox's own,
//! `mkfs.ext4 -d`, `qemu-img convert` to qcow2.
//!
//! Both VMs run a minimal init (tini as PID 1 and a short script), not systemd: the guest's
//! boot is paid at every bootstrap and every `--cold` run, and under TCG systemd alone costs
//! tens of seconds; all a job needs from the guest is its network and sshd.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::{ArtifactCache, Key};
use super::debian::{mmdebstrap, Variant};
use super::{DebianSource, GuestRecipe, Provenance};
use crate::host::process::run_tool;
use crate::host::programs;
use crate::host::userns::{remove_tree, Builder};
use crate::progress::{Progress, Step};
use crate::{Error, IoContext, Result};
use link::{markers, net};

/// A finished root disk and what was generated with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rootfs {
    pub dir: PathBuf,
    pub disk: PathBuf,
    /// Path inside the VM that the initramfs executes.
    pub init: String,
    /// `package -> version` of everything installed.
    pub packages: BTreeMap<String, String>,
}

const ROOTFS_JSON: &str = "rootfs.json";

const GUEST_BASE_PACKAGES: &[&str] =
    &["openssh-server", "cifs-utils", "iproute2", "tini", "procps"];
const CONTROLLER_PACKAGES: &[&str] = &["samba", "openssh-client", "iproute2", "tini"];

const GUEST_INIT: &str = r#"#!/bin/sh
# PID 1 is tini: it reaps orphans and forwards signals; the script below does the rest.
exec /usr/bin/tini -s -- /bin/sh /etc/guestbox/rc
"#;

fn guest_rc() -> String {
    format!(
        r#"#!/bin/sh
# guestbox's Debian guest: pseudo filesystems, the private link, sshd. Nothing else runs.
# (/run is a tmpfs the initramfs mounted, holding guestbox's exec helper.)
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
hostname guestbox-guest
ip link set lo up
ip addr add {address} dev eth0
# A private link of two VMs: jumbo frames cut the per-packet cost of emulation.
ip link set eth0 mtu {mtu} up
mkdir -p /run/sshd
chmod 755 /run/sshd
/usr/sbin/sshd -D -e 2>>/var/log/sshd.log &
# Ready means sshd listens on port {ssh} ({ssh:04X} in /proc/net/tcp).
while ! grep -q ':{ssh:04X} 00000000:0000 0A' /proc/net/tcp; do sleep 0.05; done
echo "{ready}" > /dev/console
wait
"#,
        address = net::with_prefix(net::GUEST_ADDRESS),
        mtu = net::MTU,
        ssh = net::SSH_PORT,
        ready = markers::GUEST_READY,
    )
}

const SSHD_CONFIG: &str = "\
# guestbox: key-only root logins from the controller; no DNS, no PAM (nothing to ask).
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
HostKey /etc/ssh/ssh_host_ed25519_key
MaxStartups 64:30:128
MaxSessions 64
";

const CONTROLLER_INIT: &str = r#"#!/bin/sh
# The agent comes with the initramfs (copied to /run), so the disk need not change with it.
exec /usr/bin/tini -s -- /run/guestbox-agent
"#;

impl Rootfs {
    fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(ROOTFS_JSON);
        let text = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        let mut r: Rootfs = serde_json::from_slice(&text).map_err(|e| Error::DamagedArtifact {
            path: dir.to_path_buf(),
            problem: format!("its {ROOTFS_JSON} does not parse: {e}"),
        })?;
        r.dir = dir.to_path_buf();
        r.disk = dir.join(&r.disk);
        Ok(r)
    }

    /// The per-image SSH key pair's private half (guest images only).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("keys/client")
    }

    pub fn host_public_key(&self) -> PathBuf {
        self.dir.join("keys/ssh_host_ed25519_key.pub")
    }
}

#[derive(Serialize)]
struct Inputs<'a> {
    #[serde(flatten)]
    provenance: Provenance,
    role: &'a str,
    source: &'a DebianSource,
    packages: Vec<String>,
    disk_mib: u64,
    files: Vec<String>,
}

pub async fn ensure_guest(
    cache: &ArtifactCache,
    source: &DebianSource,
    recipe: &GuestRecipe,
    progress: &Progress,
) -> Result<Rootfs> {
    for p in &recipe.packages {
        let valid = !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:=".contains(c));
        if !valid {
            return Err(Error::Usage(format!(
                "{p:?} is not a Debian package name (lowercase letters, digits, + - . and an optional =version)"
            )));
        }
    }
    let mut packages: Vec<String> = GUEST_BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
    packages.extend(recipe.packages.iter().cloned());
    let inputs = Inputs {
        provenance: Provenance::from_packages(source),
        role: "guest",
        source,
        packages,
        disk_mib: recipe.disk_mib,
        files: vec![GUEST_INIT.into(), guest_rc(), SSHD_CONFIG.into()],
    };
    let key = Key::new("guest", &inputs)?;
    let dir = cache
        .get_or_build(&key, &inputs, |out| {
            let inputs = &inputs;
            async move {
                let step = progress.step(format!(
                    "building the Debian guest ({} packages)",
                    inputs.packages.len()
                ));
                let root = out.join("root");
                mmdebstrap(source, Variant::Minbase, &inputs.packages, &root, &step).await?;
                step.detail("configuring sshd and keys");
                customize_guest(&root, &out).await?;
                finish(&root, &out, inputs.disk_mib, "/etc/guestbox/init", &step).await?;
                step.done();
                Ok(())
            }
        })
        .await?;
    Rootfs::load(&dir)
}

pub async fn ensure_controller(
    cache: &ArtifactCache,
    source: &DebianSource,
    progress: &Progress,
) -> Result<Rootfs> {
    let inputs = Inputs {
        provenance: Provenance::from_packages(source),
        role: "controller",
        source,
        packages: CONTROLLER_PACKAGES.iter().map(|s| s.to_string()).collect(),
        disk_mib: 1024,
        files: vec![CONTROLLER_INIT.into()],
    };
    let key = Key::new("controller", &inputs)?;
    let dir = cache
        .get_or_build(&key, &inputs, |out| {
            let inputs = &inputs;
            async move {
                let step = progress.step("building the controller (Samba, OpenSSH client)");
                let root = out.join("root");
                mmdebstrap(source, Variant::Minbase, &inputs.packages, &root, &step).await?;
                write_file(&root.join("etc/guestbox/init"), CONTROLLER_INIT, 0o755)?;
                write_file(&root.join("etc/hostname"), "guestbox-controller\n", 0o644)?;
                write_file(&root.join("etc/hosts"), &hosts(), 0o644)?;
                finish(&root, &out, inputs.disk_mib, "/etc/guestbox/init", &step).await?;
                step.done();
                Ok(())
            }
        })
        .await?;
    Rootfs::load(&dir)
}

fn hosts() -> String {
    format!(
        "127.0.0.1 localhost\n{} guest\n{} controller\n",
        net::GUEST_ADDRESS,
        net::CONTROLLER_ADDRESS
    )
}

fn write_file(path: &Path, content: &str, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, content).ctx(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}

/// Fresh keys for this image: the guest's host key and the controller's client key.
async fn customize_guest(root: &Path, out: &Path) -> Result<()> {
    let keygen = programs::path_of(programs::SSH_KEYGEN)?;
    let ssh = root.join("etc/ssh");
    for entry in fs::read_dir(&ssh)
        .ctx(|| format!("reading {}", ssh.display()))?
        .flatten()
    {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("ssh_host_") {
            fs::remove_file(entry.path()).ctx(|| format!("removing {}", entry.path().display()))?;
        }
    }
    let keys = out.join("keys");
    fs::create_dir_all(&keys).ctx(|| format!("creating {}", keys.display()))?;
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).ctx(|| "chmod keys")?;
    let host_key = ssh.join("ssh_host_ed25519_key");
    let client_key = keys.join("client");
    for (path, comment) in [
        (&host_key, "guestbox-guest"),
        (&client_key, "guestbox-controller"),
    ] {
        let path_s = path.to_string_lossy().into_owned();
        run_tool(
            "ssh-keygen",
            &keygen,
            &[
                "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", &path_s,
            ],
        )
        .await?;
    }
    fs::copy(
        ssh.join("ssh_host_ed25519_key.pub"),
        keys.join("ssh_host_ed25519_key.pub"),
    )
    .ctx(|| "copying the host public key")?;
    let authorized = fs::read_to_string(keys.join("client.pub")).ctx(|| "reading client.pub")?;
    let dot_ssh = root.join("root/.ssh");
    fs::create_dir_all(&dot_ssh).ctx(|| format!("creating {}", dot_ssh.display()))?;
    fs::set_permissions(&dot_ssh, fs::Permissions::from_mode(0o700)).ctx(|| "chmod .ssh")?;
    write_file(&dot_ssh.join("authorized_keys"), &authorized, 0o600)?;
    write_file(&ssh.join("sshd_config.d/guestbox.conf"), SSHD_CONFIG, 0o644)?;
    write_file(&root.join("etc/guestbox/init"), GUEST_INIT, 0o755)?;
    write_file(&root.join("etc/guestbox/rc"), &guest_rc(), 0o755)?;
    write_file(&root.join("etc/hostname"), "guestbox-guest\n", 0o644)?;
    // Jobs run through root's login shell, which is guestbox's exec helper: sshd hands it
    // the job directly, with no shell started in between (every start is paid again in a
    // revived guest under emulation); anything else it passes to /bin/sh (dash).
    let passwd = root.join("etc/passwd");
    let text = fs::read_to_string(&passwd).ctx(|| "reading etc/passwd")?;
    let text: String = text
        .lines()
        .map(
            |l| match l.strip_prefix("root:").and_then(|r| r.rsplit_once(':')) {
                Some((fields, _shell)) => format!("root:{fields}:{}\n", link::job::EXEC_HELPER),
                None => format!("{l}\n"),
            },
        )
        .collect();
    write_file(&passwd, &text, 0o644)?;
    write_file(&root.join("etc/hosts"), &hosts(), 0o644)?;
    Ok(())
}

/// Records installed packages, makes the ext4 image and the qcow2 disk, drops the tree.
async fn finish(root: &Path, out: &Path, disk_mib: u64, init: &str, step: &Step) -> Result<()> {
    let packages = installed_packages(root)?;
    step.detail("making the ext4 disk image");
    let raw = out.join("disk.raw");
    let file = fs::File::create(&raw).ctx(|| format!("creating {}", raw.display()))?;
    file.set_len(disk_mib << 20)
        .ctx(|| format!("sizing {}", raw.display()))?;
    drop(file);
    let mkfs = programs::path_of(programs::MKFS_EXT4)?;
    let root_s = root.to_string_lossy().into_owned();
    let raw_s = raw.to_string_lossy().into_owned();
    // In the namespace the tree was built in (without root): mkfs.ext4 then reads the true
    // owners, and file capabilities (ping's), which the kernel shows relative to the
    // namespace's root, come out as they would for root.
    let builder = Builder::current();
    let (program, args) = builder.command(
        &[],
        &mkfs,
        &["-F", "-q", "-L", "guestbox", "-d", &root_s, &raw_s],
    )?;
    run_tool("mkfs.ext4", &program, &args).await?;
    if builder == Builder::Namespace {
        write_dev_entries(&raw).await?;
    }
    let qemu_img = programs::path_of(programs::QEMU_IMG)?;
    let disk = out.join("disk.qcow2");
    let disk_s = disk.to_string_lossy().into_owned();
    run_tool(
        "qemu-img convert",
        &qemu_img,
        &["convert", "-f", "raw", "-O", "qcow2", &raw_s, &disk_s],
    )
    .await?;
    fs::remove_file(&raw).ctx(|| format!("removing {}", raw.display()))?;
    remove_tree(root).ctx(|| format!("removing {}", root.display()))?;
    let record = Rootfs {
        dir: PathBuf::new(),
        disk: PathBuf::from("disk.qcow2"),
        init: init.to_string(),
        packages,
    };
    let json = serde_json::to_vec_pretty(&record).ctx(|| "writing rootfs.json")?;
    fs::write(out.join(ROOTFS_JSON), json).ctx(|| "writing rootfs.json")
}

/// What mmdebstrap puts in /dev as root: device nodes cannot be made in a user namespace,
/// so there it only bind-mounts them while it works and the tree's /dev stays empty. The
/// guest sees neither (its initramfs moves a devtmpfs over /dev), but this way an image is
/// the same whoever built it (every entry's owner, mode, type, size and xattrs compared:
/// identical), and it shares one cache key with its root-built twin.
const DEV_ENTRIES: &str = "\
cd /dev
mknod console c 5 1
mknod full c 1 7
mknod null c 1 3
mknod ptmx c 5 2
mknod random c 1 8
mknod tty c 5 0
mknod urandom c 1 9
mknod zero c 1 5
sif console mode 020666
sif full mode 020666
sif null mode 020666
sif ptmx mode 020666
sif random mode 020666
sif tty mode 020666
sif urandom mode 020666
sif zero mode 020666
mkdir pts
mkdir shm
symlink fd /proc/self/fd
symlink stdin /proc/self/fd/0
symlink stdout /proc/self/fd/1
symlink stderr /proc/self/fd/2
";

/// Writes [`DEV_ENTRIES`] into the ext4 image `raw` (the user's own file: no namespace).
async fn write_dev_entries(raw: &Path) -> Result<()> {
    let debugfs = programs::path_of(programs::DEBUGFS)?;
    let script = raw.with_extension("debugfs");
    fs::write(&script, DEV_ENTRIES).ctx(|| format!("writing {}", script.display()))?;
    let mut cmd = std::process::Command::new(&debugfs);
    cmd.arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(raw)
        .stdin(std::process::Stdio::null());
    crate::host::process::supervise(&mut cmd);
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .ctx(|| format!("starting {}", debugfs.display()))?;
    fs::remove_file(&script).ctx(|| format!("removing {}", script.display()))?;
    // debugfs exits 0 whatever its commands did; they complain on stderr, after its banner.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !out.status.success() || !complaints.is_empty() {
        return Err(Error::Command {
            what: "debugfs (writing /dev into the image)".into(),
            status: out.status.to_string(),
            detail: complaints.join("\n"),
        });
    }
    Ok(())
}

/// `package -> version` from the tree's dpkg status file (no dpkg needed on the host).
pub fn installed_packages(root: &Path) -> Result<BTreeMap<String, String>> {
    let path = root.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
    Ok(parse_dpkg_status(&text))
}

fn parse_dpkg_status(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
                .map(|v| v.trim().to_string())
        };
        if let (Some(p), Some(v), Some(s)) = (field("Package"), field("Version"), field("Status")) {
            if s.ends_with(" installed") {
                out.insert(p, v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let status = "Package: a\nStatus: install ok installed\nVersion: 1.0\n\n\
                      Package: b\nStatus: deinstall ok config-files\nVersion: 2\n\n\
                      Package: c\nVersion: 3:4.5-1\nStatus: install ok installed\n";
        let p = parse_dpkg_status(status);
        assert_eq!(p.len(), 2);
        assert_eq!(p["a"], "1.0");
        assert_eq!(p["c"], "3:4.5-1");
    }

    /// The entries a user-namespace build writes into /dev are the ones a root build has.
    #[tokio::test]
    async fn dev_entries_are_written_into_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("dev")).unwrap();
        let raw = dir.path().join("disk.raw");
        fs::File::create(&raw).unwrap().set_len(8 << 20).unwrap();
        let mkfs = programs::path_of(programs::MKFS_EXT4).unwrap();
        run_tool(
            "mkfs.ext4",
            &mkfs,
            &[
                "-F",
                "-q",
                "-d",
                tree.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        )
        .await
        .unwrap();
        write_dev_entries(&raw).await.unwrap();
        let debugfs = programs::path_of(programs::DEBUGFS).unwrap();
        let out = run_tool(
            "debugfs",
            &debugfs,
            &["-R", "ls -l /dev", raw.to_str().unwrap()],
        )
        .await
        .unwrap();
        let listing = String::from_utf8_lossy(&out);
        // (mode, owner, name): ls -l prints inode, mode, (type), uid, gid, size, date, name.
        let entries: Vec<(String, String, String)> = listing
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 8).then(|| {
                    (
                        f[1].to_string(),
                        format!("{}:{}", f[3], f[4]),
                        f[f.len() - 1].to_string(),
                    )
                })
            })
            .filter(|(_, _, n)| n != "." && n != "..")
            .collect();
        let want: Vec<(&str, &str)> = vec![
            ("20666", "console"),
            ("20666", "full"),
            ("20666", "null"),
            ("20666", "ptmx"),
            ("20666", "random"),
            ("20666", "tty"),
            ("20666", "urandom"),
            ("20666", "zero"),
            ("40755", "pts"),
            ("40755", "shm"),
            ("120777", "fd"),
            ("120777", "stdin"),
            ("120777", "stdout"),
            ("120777", "stderr"),
        ];
        for (mode, name) in &want {
            assert!(
                entries
                    .iter()
                    .any(|(m, o, n)| m == mode && o == "0:0" && n == name),
                "{name} {mode} missing:\n{listing}"
            );
        }
        assert_eq!(entries.len(), want.len(), "{listing}");
    }

    #[test]
    fn scripts_are_valid_shell() {
        for (name, script) in [
            ("guest init", GUEST_INIT),
            ("guest rc", &guest_rc()),
            ("controller init", CONTROLLER_INIT),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
