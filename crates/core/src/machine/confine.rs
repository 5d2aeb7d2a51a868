//! How every QEMU guestbox starts is confined. The guest runs code nobody reviewed, so
//! QEMU is treated as the process an attacker reaches first (a guest that breaks Samba in
//! the controller talks 9p to QEMU directly).
//!
//! 1. **seccomp**, always: `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,
//!    resourcecontrol=deny`. QEMU can then start no process (no `exec:` migration: state
//!    moves over file descriptors, see [`super::snapshot`]), change no ids, and touch no
//!    scheduler or resource limits; a denied call kills it (SIGSYS).
//! 2. **No root**: when guestbox runs as root, each QEMU opens what it needs as root and
//!    then becomes an unprivileged user ([`RunAs`]): the guest's QEMU the system user
//!    [`QEMU_USER`], the controller's QEMU the owner of the directories it serves
//!    ([`Policy::serving`]). Directories of root (or of several users) have no one owner to
//!    become: that controller's QEMU starts as root of a user namespace of its own instead
//!    ([`SubIds`], [`super::namespace`]), one of the QEMU user's subordinate ids to the
//!    host, and is served the directories through idmapped views in which their owners
//!    keep their ids. Without root, QEMU simply runs as guestbox's user.
//!
//! Why the sandbox drops `elevateprivileges=deny` when QEMU changes user: QEMU installs
//! its seccomp filter early (while parsing options) but changes its ids late (after the
//! machine is built, `os_setup_post`), so with that group denied its own `setgid` kills
//! it. Nothing is lost: QEMU sets `no_new_privs` with the filter and never calls `execve`
//! (spawn=deny), and once it has left root, set*id can only move between ids it already
//! has. The same holds for `-run-with user=` (QEMU >= 9.1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::qemu::{QemuFacts, Version};
use crate::host::users::Ids;
use crate::{Error, Result};

/// The system user a root guestbox runs guest QEMUs as (`scripts/setup` creates it).
pub const QEMU_USER: &str = "guestbox-qemu";
/// Names another account for that (its uid must not be 0).
pub const QEMU_USER_ENV: &str = "GUESTBOX_QEMU_USER";

/// Ids a namespaced QEMU has (inside 0..NAMESPACE_IDS): as many as an image build maps,
/// for the same reason (Debian's system users and groups go up to 65534), so a guest's
/// files keep their owners.
pub const NAMESPACE_IDS: u32 = crate::host::userns::IDS_NEEDED as u32;

/// The seccomp groups QEMU runs under.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
/// The same, for a QEMU that changes its user after the filter is in place (see above).
pub const SANDBOX_CHANGING_USER: &str = "on,obsolete=deny,spawn=deny,resourcecontrol=deny";

/// The option a QEMU release drops privileges with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropOption {
    /// `-runas uid:gid` (deprecated in 9.1, gone in 10.0).
    Runas,
    /// `-run-with user=uid:gid` (QEMU >= 9.1).
    RunWith,
}

impl DropOption {
    pub fn for_qemu(version: Version) -> DropOption {
        if version >= (9, 1, 0) {
            DropOption::RunWith
        } else {
            DropOption::Runas
        }
    }
}

/// Makes `parent/empty`, the directory a QEMU without shares is shut in as root.
pub fn empty_root(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join("empty");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        context: format!("creating {}", dir.display()),
        source: e,
    })?;
    Ok(dir)
}

/// The user a QEMU becomes once it has opened its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub ids: Ids,
    pub option: DropOption,
    /// An empty directory QEMU makes its root first (`-chroot`, `-run-with chroot=`), so
    /// that it sees nothing of the host's files at all: only for a VM that serves no 9p
    /// share (QEMU's 9p server still reaches its export by path when it is mounted).
    pub chroot: Option<PathBuf>,
}

/// The first of [`NAMESPACE_IDS`] subordinate uids and gids of the QEMU user
/// (`/etc/subuid`, `/etc/subgid`; `scripts/setup` adds them): what a namespaced QEMU's ids
/// 0.. are to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubIds {
    pub uid: u32,
    pub gid: u32,
}

impl SubIds {
    /// The QEMU user's ranges, if both files give it one of at least [`NAMESPACE_IDS`].
    pub fn of_user(name: &str, uid: u32) -> Option<SubIds> {
        let find = |file: &str| {
            let text = std::fs::read_to_string(file).ok()?;
            first_range(&text, name, uid)
        };
        Some(SubIds {
            uid: find("/etc/subuid")?,
            gid: find("/etc/subgid")?,
        })
    }
}

/// The start of the first of `name`'s (or `uid`'s) lines with COUNT large enough: one
/// range, one line of a namespace's id map.
fn first_range(text: &str, name: &str, uid: u32) -> Option<u32> {
    crate::host::userns::subordinate_lines(text, name, uid).find_map(|(start, count)| {
        let start: u32 = start.parse().ok()?;
        let count: u32 = count.parse().ok()?;
        (count >= NAMESPACE_IDS && start > 0 && start.checked_add(count).is_some()).then_some(start)
    })
}

/// How one QEMU is confined. The default (no [`RunAs`], no namespace) is the full sandbox,
/// QEMU keeping the user it was started as.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Confinement {
    pub run_as: Option<RunAs>,
    /// Started as root of a user namespace over these subordinate ids (root only; never
    /// with `run_as`): see [`super::namespace`].
    #[serde(default)]
    pub namespace: Option<SubIds>,
    /// For measurements only (`guestbox bench`): no sandbox and no user change.
    #[serde(default)]
    pub off: bool,
}

impl Confinement {
    /// The arguments that confine QEMU (written by [`super::argv`]).
    pub fn argv(&self) -> Vec<String> {
        if self.off {
            return vec![];
        }
        let mut a = vec!["-sandbox".to_string()];
        match &self.run_as {
            None => a.push(SANDBOX.into()),
            Some(r) => {
                a.push(SANDBOX_CHANGING_USER.into());
                // A chroot path with a comma cannot be written for -run-with (it is not an
                // option value QEMU unescapes); such a directory is simply not used.
                let chroot = r
                    .chroot
                    .as_ref()
                    .and_then(|d| d.to_str())
                    .filter(|d| !d.contains(','));
                match r.option {
                    DropOption::Runas => {
                        a.extend(["-runas".into(), r.ids.qemu_form()]);
                        if let Some(d) = chroot {
                            a.extend(["-chroot".into(), d.to_string()]);
                        }
                    }
                    DropOption::RunWith => {
                        let mut v = format!("user={}", r.ids.qemu_form());
                        if let Some(d) = chroot {
                            v.push_str(&format!(",chroot={d}"));
                        }
                        a.extend(["-run-with".into(), v]);
                    }
                }
            }
        }
        a
    }

    /// As root, QEMU also makes the empty directory `dir` its root once it has started
    /// (see [`RunAs::chroot`]); nothing changes otherwise.
    pub fn in_empty_root(mut self, dir: &Path) -> Self {
        if let Some(r) = &mut self.run_as {
            r.chroot = Some(dir.to_path_buf());
        }
        self
    }

    /// Who must own what this QEMU writes by path after it has changed user (its disk
    /// overlays, a share's scratch directory): None if it stays who guestbox is.
    pub fn writer(&self) -> Option<Ids> {
        self.run_as.as_ref().map(|r| r.ids)
    }

    /// Gives `paths` (files guestbox made for this QEMU to write) to the user it becomes.
    pub fn hand_over(&self, paths: &[&Path]) -> Result<()> {
        if let Some(ids) = self.writer() {
            for p in paths {
                crate::host::users::chown(p, ids)?;
            }
        }
        Ok(())
    }
}

/// What this guestbox process does with its QEMUs: run them as itself (not root), or have
/// each drop to an unprivileged user (root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// As root: the guest's QEMU user and the drop option of this QEMU.
    drop: Option<(Ids, DropOption)>,
    /// As root: that user's name.
    user: Option<String>,
    /// As root: that user's subordinate ids, if it has them.
    sub: Option<SubIds>,
}

impl Policy {
    /// The policy of this process for `qemu` (its release decides the drop option).
    pub async fn for_host(cache: &Path, qemu: &Path) -> Result<Policy> {
        if !Ids::current().is_root() {
            return Ok(Policy::unprivileged());
        }
        let version = QemuFacts::of(cache, qemu).await?.version;
        Policy::as_root(version)
    }

    /// Not root: every QEMU runs as this user, under the full sandbox.
    pub fn unprivileged() -> Policy {
        Policy {
            drop: None,
            user: None,
            sub: None,
        }
    }

    /// As root: the name of the account QEMU runs as (what swtpm's `--runas` takes).
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Root, with QEMU `version`: finds the QEMU user ([`QEMU_USER_ENV`] or [`QEMU_USER`]).
    pub fn as_root(version: Version) -> Result<Policy> {
        let name = std::env::var(QEMU_USER_ENV)
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| QEMU_USER.to_string());
        let ids = Ids::of_user(&name).ok_or_else(|| {
            Error::Usage(format!(
                "guestbox runs as root, so it runs QEMU as the unprivileged user {name:?}, which \
                 does not exist: create it (scripts/setup does: `useradd --system --no-create-home \
                 --home-dir /nonexistent --shell /usr/sbin/nologin {name}`), or name another \
                 with {QEMU_USER_ENV}, or run guestbox as a user without root"
            ))
        })?;
        if ids.uid == 0 {
            return Err(Error::Usage(format!(
                "{QEMU_USER_ENV}={name:?} is root; QEMU must run as an unprivileged user"
            )));
        }
        Ok(Policy {
            drop: Some((ids, DropOption::for_qemu(version))),
            sub: SubIds::of_user(&name, ids.uid),
            user: Some(name),
        })
    }

    /// A VM that serves no host directory: the guest, every VM of a bootstrap or a boot
    /// check. As root: the QEMU user.
    pub fn plain(&self) -> Confinement {
        Confinement {
            run_as: self.drop.map(|(ids, option)| RunAs {
                ids,
                option,
                chroot: None,
            }),
            namespace: None,
            off: false,
        }
    }

    /// The controller of a run, serving `dirs` (the user's `-v` and `--xchg` directories)
    /// over 9p. As root, its QEMU becomes their owner, so that the files a job creates in
    /// them belong to whoever owns the directory (the user who ran `sudo guestbox`, a CI
    /// build user) and QEMU can reach nothing that user cannot. If they belong to root,
    /// or to several users, there is no one user that can serve them all: QEMU then starts
    /// as root of a user namespace over the QEMU user's subordinate ids ([`SubIds`]), and
    /// the files keep their owners through idmapped views. No directories: as
    /// [`Self::plain`].
    ///
    /// THE place where the 9p ownership model is decided (with `security_model=none` in
    /// [`super::argv`]): files created through a share belong to the QEMU's user, with the
    /// guest's mode bits.
    pub fn serving(&self, dirs: &[PathBuf]) -> Result<Confinement> {
        let Some((_, option)) = self.drop else {
            return Ok(Confinement::default());
        };
        if dirs.is_empty() {
            return Ok(self.plain());
        }
        // uid -> the group of the first directory of that uid.
        let mut owners: BTreeMap<u32, u32> = BTreeMap::new();
        for d in dirs {
            let ids = Ids::owner_of(d)?;
            owners.entry(ids.uid).or_insert(ids.gid);
        }
        let mut it = owners.into_iter();
        Ok(match (it.next(), it.next()) {
            (Some((uid, gid)), None) if uid != 0 => Confinement {
                run_as: Some(RunAs {
                    ids: Ids { uid, gid },
                    option,
                    chroot: None,
                }),
                namespace: None,
                off: false,
            },
            _ => {
                let name = self.user.as_deref().unwrap_or(QEMU_USER);
                let sub = self.sub.ok_or_else(|| {
                    Error::Usage(format!(
                        "the shared directories belong to root or to several users, so the \
                         controller's QEMU serves them as root of a user namespace mapped onto \
                         {NAMESPACE_IDS} subordinate ids of {name}, and {name} has none in \
                         /etc/subuid and /etc/subgid: run scripts/setup (it adds them: \
                         `usermod --add-subuids N-M --add-subgids N-M {name}`), or share \
                         directories that one unprivileged user owns"
                    ))
                })?;
                tracing::info!(
                    "the shared directories belong to root or to several users: the controller's \
                     QEMU runs as root of a user namespace (uid {} to the host)",
                    sub.uid
                );
                Confinement {
                    run_as: None,
                    namespace: Some(sub),
                    off: false,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_root(version: Version) -> Policy {
        Policy {
            drop: Some((Ids { uid: 990, gid: 990 }, DropOption::for_qemu(version))),
            user: Some("test-qemu".into()),
            sub: Some(SubIds {
                uid: 300_000,
                gid: 400_000,
            }),
        }
    }

    #[test]
    fn the_full_sandbox_unless_qemu_changes_user() {
        assert_eq!(
            Confinement::default().argv(),
            [
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ]
        );
        assert_eq!(
            Policy::unprivileged().plain().argv(),
            Confinement::default().argv()
        );
        assert_eq!(
            policy_root((7, 2, 22)).plain().argv(),
            [
                "-sandbox",
                "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
                "-runas",
                "990:990"
            ]
        );
        assert_eq!(
            policy_root((9, 1, 0)).plain().argv(),
            [
                "-sandbox",
                "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
                "-run-with",
                "user=990:990"
            ]
        );
        let empty = Path::new("/r/empty");
        assert_eq!(
            policy_root((7, 2, 0)).plain().in_empty_root(empty).argv()[4..],
            ["-chroot", "/r/empty"]
        );
        assert_eq!(
            policy_root((10, 0, 0)).plain().in_empty_root(empty).argv()[3],
            "user=990:990,chroot=/r/empty"
        );
        // Without root there is no chroot (nor could there be).
        assert_eq!(
            Policy::unprivileged().plain().in_empty_root(empty),
            Confinement::default()
        );
        let off = Confinement {
            off: true,
            ..Confinement::default()
        };
        assert!(off.argv().is_empty());
    }

    #[test]
    fn subordinate_ranges_are_read_by_name_or_uid_and_must_be_large_enough() {
        let text = "other:100000:65536\nguestbox-qemu:200000:1000\n\
                    guestbox-qemu:231072:65536\n999:500000:65536\n";
        assert_eq!(first_range(text, "guestbox-qemu", 999), Some(231072));
        assert_eq!(first_range("999:500000:70000\n", "q", 999), Some(500000));
        assert_eq!(first_range(text, "nobody-here", 4), None);
        assert_eq!(first_range("q:0:65536\nq:x:65536\n", "q", 1), None);
    }

    #[test]
    fn the_controller_becomes_the_one_owner_of_its_directories() {
        let root = policy_root((7, 2, 0));
        let me = Ids::current();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        let c = root.serving(&dirs).unwrap();
        if me.is_root() {
            // Root's own directories: nobody else can serve them; a namespaced QEMU does.
            let namespaced = Confinement {
                namespace: Some(SubIds {
                    uid: 300_000,
                    gid: 400_000,
                }),
                ..Confinement::default()
            };
            assert_eq!(c, namespaced);
            assert_eq!(c.writer(), None);
            assert_eq!(c.argv(), Confinement::default().argv());
            // Without subordinate ids that is a configuration error naming the fix.
            let mut bare = root.clone();
            bare.sub = None;
            let e = bare.serving(&dirs).unwrap_err().to_string();
            assert!(
                e.contains("/etc/subuid") && e.contains("scripts/setup"),
                "{e}"
            );
            // Given to one user, both: that user.
            let user = Ids {
                uid: 4242,
                gid: 4343,
            };
            for d in &dirs {
                crate::host::users::chown(d, user).unwrap();
            }
            assert_eq!(root.serving(&dirs).unwrap().writer(), Some(user));
            // Two owners: namespaced too.
            crate::host::users::chown(&dirs[1], Ids { uid: 4244, gid: 1 }).unwrap();
            assert_eq!(root.serving(&dirs).unwrap(), namespaced);
        } else {
            assert_eq!(c.writer(), Some(me));
        }
        assert_eq!(root.serving(&[]).unwrap(), root.plain());
        assert_eq!(
            Policy::unprivileged().serving(&dirs).unwrap(),
            Confinement::default()
        );
        let missing = root.serving(&[a.path().join("gone")]).unwrap_err();
        assert!(missing.to_string().contains("gone"), "{missing}");
    }
}
