//! Building images without root: a user namespace in which guestbox's user is root.
//!
//! mmdebstrap and `mkfs.ext4 -d` make trees of files owned by root and by system users.
//! Without root, guestbox runs them inside `unshare --user --map-auto --map-root-user`:
//! there the user is uid 0 and its subordinate ids (`/etc/subuid`, `/etc/subgid`) are
//! uids 1..65535. So mmdebstrap runs in its ordinary root mode and `mkfs.ext4 -d` reads
//! the true owners (and file capabilities, which are stored relative to the namespace's
//! root) back into the image. Outside, files root owns inside belong to the user — which
//! is why guestbox can customize the tree as itself — and the others to its subordinate
//! ids, which is why such a tree is removed from inside a namespace too.
//!
//! As root nothing changes: the same tools run as they always did.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::process::{supervise, tail_of_text};
use super::programs::{self, Program};
use super::users::{current_user_name, Ids};
use crate::{Error, Result};

pub const NEWUIDMAP: Program = Program {
    name: "newuidmap",
    package: "uidmap",
    why: "building images without root maps your subordinate user ids into a user namespace",
};
pub const NEWGIDMAP: Program = Program {
    name: "newgidmap",
    package: "uidmap",
    why: "building images without root maps your subordinate group ids into a user namespace",
};

/// How many subordinate ids a build needs: Debian's system users and groups go up to
/// 65534 (nobody, nogroup).
pub const IDS_NEEDED: u64 = 65536;

/// The arguments that make `unshare` enter a new user namespace as its root.
const USERNS: &[&str] = &["--user", "--map-auto", "--map-root-user"];

/// Whether image tools run as they are (root) or in a user namespace (anyone else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    Root,
    Namespace,
}

impl Builder {
    pub fn current() -> Builder {
        if Ids::current().is_root() {
            Builder::Root
        } else {
            Builder::Namespace
        }
    }

    /// `program args` as the tree's root: as they are for root, or through `unshare` in a
    /// user namespace; `unshare_flags` (namespaces of its own) make it always go through
    /// `unshare`.
    pub fn command(
        self,
        unshare_flags: &[&str],
        program: &Path,
        args: &[impl AsRef<std::ffi::OsStr>],
    ) -> Result<(PathBuf, Vec<OsString>)> {
        let mut flags: Vec<&str> = Vec::new();
        if self == Builder::Namespace {
            flags.extend(USERNS);
        }
        flags.extend(unshare_flags);
        let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        if flags.is_empty() {
            return Ok((program.to_path_buf(), args));
        }
        let unshare = programs::path_of(programs::UNSHARE)?;
        let mut all: Vec<OsString> = flags.into_iter().map(OsString::from).collect();
        all.push("--".into());
        all.push(program.into());
        all.extend(args);
        Ok((unshare, all))
    }

    /// Checks, before minutes of work, that this user can build in a user namespace: one
    /// namespace is made (a few milliseconds); if that fails, the error says why and what
    /// to change.
    pub fn check(self) -> Result<()> {
        if self == Builder::Root {
            return Ok(());
        }
        programs::require(&[programs::UNSHARE, NEWUIDMAP, NEWGIDMAP])?;
        let (program, args) = self.command(&[], Path::new("/bin/true"), &[] as &[&str])?;
        let mut cmd = std::process::Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        supervise(&mut cmd);
        let out = cmd.output().map_err(|e| Error::Io {
            context: format!("starting {}", program.display()),
            source: e,
        })?;
        if out.status.success() {
            return Ok(());
        }
        let said = tail_of_text(&String::from_utf8_lossy(&out.stderr), 5);
        Err(Error::Usage(diagnose(&Host::read(), &said)))
    }
}

/// What the host says about user namespaces and this user's subordinate ids.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub user: String,
    pub uid: u32,
    /// `/proc/sys/user/max_user_namespaces`.
    pub max_user_namespaces: Option<u64>,
    /// Debian's `kernel.unprivileged_userns_clone`.
    pub unprivileged_userns_clone: Option<u64>,
    /// Ubuntu's `kernel.apparmor_restrict_unprivileged_userns`.
    pub apparmor_restrict: Option<u64>,
    pub subuid: Option<String>,
    pub subgid: Option<String>,
}

fn sysctl(name: &str) -> Option<u64> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Host {
    pub fn read() -> Host {
        // SAFETY: plain syscall without arguments.
        let uid = unsafe { libc::getuid() };
        Host {
            user: current_user_name(),
            uid,
            max_user_namespaces: sysctl("user.max_user_namespaces"),
            unprivileged_userns_clone: sysctl("kernel.unprivileged_userns_clone"),
            apparmor_restrict: sysctl("kernel.apparmor_restrict_unprivileged_userns"),
            subuid: std::fs::read_to_string("/etc/subuid").ok(),
            subgid: std::fs::read_to_string("/etc/subgid").ok(),
        }
    }
}

/// The `(start, count)` fields of the lines of a subordinate id file (`/etc/subuid`'s
/// `NAME:START:COUNT`) that are `user`'s (or `uid`'s), unparsed.
pub fn subordinate_lines<'a>(
    file: &'a str,
    user: &'a str,
    uid: u32,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    let uid = uid.to_string();
    file.lines().filter_map(move |l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        (who == user || who == uid).then_some((start, count))
    })
}

/// The ids `user` (or `uid`) has in a subordinate id file, summed over its lines.
pub fn subordinate_ids(file: &str, user: &str, uid: u32) -> u64 {
    subordinate_lines(file, user, uid)
        .filter_map(|(_, count)| count.parse::<u64>().ok())
        .sum()
}

/// Why a user namespace could not be made, and what to do (root's help included).
pub fn diagnose(host: &Host, unshare_said: &str) -> String {
    let mut fixes = Vec::new();
    if host.max_user_namespaces == Some(0) {
        fixes.push(
            "user namespaces are switched off: `sudo sysctl -w user.max_user_namespaces=15000`"
                .to_string(),
        );
    }
    if host.unprivileged_userns_clone == Some(0) {
        fixes.push("unprivileged user namespaces are switched off: `sudo sysctl -w kernel.unprivileged_userns_clone=1`".to_string());
    }
    if host.apparmor_restrict == Some(1) {
        fixes.push("AppArmor restricts unprivileged user namespaces: `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (or an AppArmor profile that allows `userns` for unshare)".to_string());
    }
    // A range no line of either file uses yet.
    let start = [&host.subuid, &host.subgid]
        .into_iter()
        .flatten()
        .flat_map(|t| t.lines())
        .filter_map(|l| {
            let mut f = l.trim().split(':').skip(1);
            Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
        })
        .fold(100_000, u64::max);
    let range = format!("{start}-{}", start + IDS_NEEDED - 1);
    for (file, text, flag) in [
        ("/etc/subuid", &host.subuid, "--add-subuids"),
        ("/etc/subgid", &host.subgid, "--add-subgids"),
    ] {
        let have = text
            .as_deref()
            .map_or(0, |t| subordinate_ids(t, &host.user, host.uid));
        if have < IDS_NEEDED {
            fixes.push(format!(
                "{file} gives {user} {have} subordinate ids, {IDS_NEEDED} are needed: \
                 `sudo usermod {flag} {range} {user}` (scripts/setup does this)",
                user = host.user
            ));
        }
    }
    if fixes.is_empty() {
        fixes.push(
            "nothing obvious is wrong; a container or a seccomp policy may forbid user namespaces"
                .into(),
        );
    }
    format!(
        "building images without root needs a user namespace, and this one could not be made:\n{unshare_said}\n  \
         To fix it:\n  - {}\n  (or build the images once as root: `sudo guestbox images` with the same GUESTBOX_HOME)",
        fixes.join("\n  - ")
    )
}

/// Removes `path` and everything below it. A tree built in a user namespace holds files of
/// subordinate ids, which this user can only remove from inside one; that is tried when a
/// plain removal is refused.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let first = match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => e,
    };
    if Builder::current() == Builder::Root || first.kind() != std::io::ErrorKind::PermissionDenied {
        return Err(first);
    }
    let run = || -> Result<std::process::Output> {
        let (program, args) = Builder::Namespace.command(
            &[],
            Path::new("rm"),
            &[
                OsString::from("-rf"),
                OsString::from("--one-file-system"),
                OsString::from("--"),
                path.as_os_str().to_owned(),
            ],
        )?;
        let mut cmd = std::process::Command::new(&program);
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null());
        supervise(&mut cmd);
        cmd.output().map_err(|e| Error::Io {
            context: format!("starting {}", program.display()),
            source: e,
        })
    };
    match run() {
        Ok(out) if out.status.success() && !path.exists() => Ok(()),
        Ok(out) => Err(std::io::Error::other(format!(
            "{first}; in a user namespace too: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) => Err(std::io::Error::other(format!("{first}; {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ids_by_name_or_uid_summed() {
        let file = "alice:100000:65536\nbob:165536:1000\n1001:200000:10\nbob:300000:64536\n";
        assert_eq!(subordinate_ids(file, "alice", 1000), 65536);
        assert_eq!(subordinate_ids(file, "bob", 1001), 65546);
        assert_eq!(subordinate_ids(file, "carol", 1002), 0);
        assert_eq!(subordinate_ids("garbage\n::\n", "x", 1), 0);
    }

    #[test]
    fn the_diagnosis_names_each_fix() {
        let host = Host {
            user: "carol".into(),
            uid: 1002,
            max_user_namespaces: Some(0),
            unprivileged_userns_clone: Some(0),
            apparmor_restrict: Some(1),
            subuid: Some("alice:100000:65536\n".into()),
            subgid: None,
        };
        let text = diagnose(&host, "unshare: write failed /proc/self/uid_map");
        for want in [
            "user.max_user_namespaces",
            "kernel.unprivileged_userns_clone=1",
            "kernel.apparmor_restrict_unprivileged_userns=0",
            // After alice's range.
            "usermod --add-subuids 165536-231071 carol",
            "usermod --add-subgids 165536-231071 carol",
            "uid_map",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        let fine = Host {
            user: "alice".into(),
            subuid: Some("alice:100000:65536\n".into()),
            subgid: Some("alice:100000:65536\n".into()),
            ..Host::default()
        };
        assert!(diagnose(&fine, "").contains("nothing obvious"));
    }

    #[test]
    fn root_runs_tools_as_they_are_and_others_through_unshare() {
        let (p, a) = Builder::Root
            .command(&[], Path::new("/sbin/mkfs.ext4"), &["-d", "x"])
            .unwrap();
        assert_eq!(p, Path::new("/sbin/mkfs.ext4"));
        assert_eq!(a, ["-d", "x"]);
        let (p, a) = Builder::Namespace
            .command(&["--pid"], Path::new("/usr/bin/mmdebstrap"), &["a"])
            .unwrap();
        assert!(p.ends_with("unshare"), "{}", p.display());
        assert_eq!(
            a,
            [
                "--user",
                "--map-auto",
                "--map-root-user",
                "--pid",
                "--",
                "/usr/bin/mmdebstrap",
                "a"
            ]
        );
    }
}
