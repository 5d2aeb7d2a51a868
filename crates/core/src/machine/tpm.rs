//! The TPM 2.0 of a firmware-booted guest: swtpm, started next to its QEMU and ended with
//! it. The one place guestbox starts swtpm ([`start`]) and writes its command line
//! ([`argv`]); the emitted stage scripts use the same [`argv`].
//!
//! swtpm serves one QEMU over a unix socket (`--ctrl type=unixio`) and exits when that
//! QEMU disconnects (`--terminate`), writing its state to `--tpmstate dir=...` first. A
//! snapshot carries the TPM's state in QEMU's migration stream (QEMU fetches it from swtpm
//! when saving and hands it back when loading), so a revive starts swtpm on a copy of the
//! base's state directory and QEMU restores the rest.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::argv::value;
use super::confine::Confinement;
use super::spec::Tpm;
use crate::host::process::{tail_of_file, Identity, Supervised};
use crate::host::programs::{self, Program};
use crate::host::users;
use crate::{Error, IoContext, Result};

pub const SWTPM: Program = Program {
    name: "swtpm",
    package: "swtpm",
    why: "it emulates the TPM 2.0 that Windows 11 wants without the bypass keys",
};

/// How long a swtpm that cannot start is given to end (which it does at once).
const START_CHECK: Duration = Duration::from_millis(100);

/// swtpm's arguments (after the program name) for `tpm`, by its paths (the emitted
/// scripts); `pid_file` for scripts that start it in the background.
pub fn argv(tpm: &Tpm, pid_file: Option<&Path>) -> Result<Vec<String>> {
    let mut a = vec![
        "socket".into(),
        "--tpm2".into(),
        "--tpmstate".into(),
        format!("dir={}", word(&tpm.state_dir)?),
        "--ctrl".into(),
        format!("type=unixio,path={}", word(&tpm.socket)?),
        "--log".into(),
        format!("file={},level=1", word(&tpm.log)?),
    ];
    if let Some(pid) = pid_file {
        a.push("--pid".into());
        a.push(format!("file={}", word(pid)?));
    }
    a.extend(confined_tail());
    Ok(a)
}

/// What a guestbox that supervises swtpm hands it, so that swtpm is confined as QEMU is:
/// under its seccomp profile and, as root, as an unprivileged user. swtpm changes user
/// before it would bind its control socket or open its log, so those come as
/// descriptors: a path in a root-owned run directory would fail (a log it cannot open
/// makes it exit without a word). QEMU still connects to [`Tpm::socket`] by path, before
/// it leaves root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handles {
    /// A unix stream socket bound at [`Tpm::socket`] and listening; swtpm inherits it.
    pub ctrl_fd: RawFd,
    /// An open file for its log, inherited.
    pub log_fd: RawFd,
    /// As root: the account it becomes, by name (a number would also become its group
    /// id); [`Tpm::state_dir`] must belong to that account.
    pub runas: Option<String>,
    /// The state directory, open, inherited: swtpm reaches it through
    /// `/proc/self/fd/N` once it is no longer root, which the directories above it (a
    /// root-only run directory) would not let it. None: by [`Tpm::state_dir`].
    pub state_fd: Option<RawFd>,
}

/// swtpm's arguments for `tpm` when guestbox starts it with `handles`.
pub fn argv_handed(tpm: &Tpm, handles: &Handles) -> Result<Vec<String>> {
    let mut a = vec![
        "socket".into(),
        "--tpm2".into(),
        "--tpmstate".into(),
        match handles.state_fd {
            Some(fd) => format!("dir=/proc/self/fd/{fd}"),
            None => format!("dir={}", word(&tpm.state_dir)?),
        },
        "--ctrl".into(),
        format!("type=unixio,fd={}", handles.ctrl_fd),
        "--log".into(),
        format!("fd={},level=1", handles.log_fd),
    ];
    if let Some(user) = &handles.runas {
        a.extend(["--runas".into(), user.clone()]);
    }
    a.extend(confined_tail());
    Ok(a)
}

/// Its seccomp profile (`action=kill`, swtpm's default, written out), and it serves one
/// QEMU: it exits when that one disconnects.
fn confined_tail() -> [String; 3] {
    [
        "--seccomp".into(),
        "action=kill".into(),
        "--terminate".into(),
    ]
}

/// A path as a swtpm option value: swtpm splits its option values at commas and has no
/// escape for them.
fn word(p: &Path) -> Result<String> {
    let s = value(p)?;
    if s.contains(',') {
        return Err(Error::Usage(format!(
            "swtpm cannot take paths with a comma: {}",
            p.display()
        )));
    }
    Ok(s)
}

/// `path` as this process reaches it: relative paths are relative to `cwd`.
fn here(path: &Path, cwd: Option<&Path>) -> PathBuf {
    match cwd {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Starts swtpm for `tpm` (its state directory made if missing), supervised like QEMU, in
/// `cwd`, confined as `confinement` confines its QEMU: the same user (who is given the
/// state directory), its own seccomp profile. Its socket is bound here and handed over,
/// so QEMU can connect as soon as this returns.
pub async fn start(tpm: &Tpm, cwd: Option<&Path>, confinement: &Confinement) -> Result<Supervised> {
    let program = programs::path_of(SWTPM)?;
    let state = here(&tpm.state_dir, cwd);
    std::fs::create_dir_all(&state).ctx(|| format!("creating {}", state.display()))?;
    let runas = match confinement.writer() {
        Some(ids) if !confinement.off => {
            // swtpm writes its state files as that user.
            users::chown(&state, ids)?;
            for e in std::fs::read_dir(&state).ctx(|| format!("reading {}", state.display()))? {
                let e = e.ctx(|| format!("reading {}", state.display()))?;
                users::chown(&e.path(), ids)?;
            }
            Some(users::name_of_uid(ids.uid).ok_or_else(|| {
                Error::Usage(format!(
                    "uid {} (the user QEMU runs as) has no account, which swtpm needs to \
                     change to it; create one (scripts/setup)",
                    ids.uid
                ))
            })?)
        }
        _ => None,
    };
    let socket = here(&tpm.socket, cwd);
    // A socket left by an earlier start would be in the way.
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .ctx(|| format!("binding {}", socket.display()))?;
    let log = here(&tpm.log, cwd);
    let log_file = std::fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let state_dir = match &runas {
        Some(_) => {
            Some(std::fs::File::open(&state).ctx(|| format!("opening {}", state.display()))?)
        }
        None => None,
    };
    let handles = Handles {
        ctrl_fd: listener.as_raw_fd(),
        log_fd: log_file.as_raw_fd(),
        runas,
        state_fd: state_dir.as_ref().map(|d| d.as_raw_fd()),
    };
    let mut inherit = vec![handles.ctrl_fd, handles.log_fd];
    inherit.extend(handles.state_fd);
    let mut stderr = log.as_os_str().to_owned();
    stderr.push(".stderr");
    let mut process = Supervised::spawn_inheriting(
        "swtpm",
        &program,
        &argv_handed(tpm, &handles)?,
        Path::new(&stderr),
        &inherit,
        cwd,
        if handles.runas.is_some() {
            Identity::ChangesItself
        } else {
            Identity::Same
        },
    )?;
    // swtpm has its copies.
    drop((listener, log_file, state_dir));
    // One that cannot start (its state unreadable, an option refused) ends at once.
    tokio::time::sleep(START_CHECK).await;
    if let Some(status) = process.try_wait()? {
        return Err(Error::Command {
            what: "swtpm (the guest's TPM)".into(),
            status: status.to_string(),
            detail: format!("{}\n{}", process.stderr_tail(5), tail_of_file(&log, 10)),
        });
    }
    Ok(process)
}

/// Gives a state directory a confined swtpm wrote (see [`start`]) back to this process's
/// user: what a base or an install keeps must not stay writable by the QEMU user.
pub fn take_back(state: &Path) -> Result<()> {
    if !state.is_dir() {
        return Ok(());
    }
    let me = users::Ids::current();
    users::chown(state, me)?;
    for e in std::fs::read_dir(state).ctx(|| format!("reading {}", state.display()))? {
        let e = e.ctx(|| format!("reading {}", state.display()))?;
        users::chown(&e.path(), me)?;
    }
    Ok(())
}

/// Copies a TPM state directory (swtpm's few flat files): a revive gets its own copy of
/// the base's, which swtpm may write.
pub fn copy_state(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).ctx(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).ctx(|| format!("reading {}", from.display()))? {
        let e = e.ctx(|| format!("reading {}", from.display()))?;
        if e.file_type().is_ok_and(|t| t.is_file()) {
            let dst = to.join(e.file_name());
            std::fs::copy(e.path(), &dst)
                .ctx(|| format!("copying {} to {}", e.path().display(), dst.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600))
                .ctx(|| format!("setting the mode of {}", dst.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_serves_one_qemu_and_refuses_commas() {
        let tpm = Tpm {
            state_dir: "/b/tpm".into(),
            socket: "/r/swtpm.sock".into(),
            log: "/r/swtpm.log".into(),
        };
        assert_eq!(
            argv(&tpm, Some(Path::new("/r/swtpm.pid"))).unwrap(),
            [
                "socket",
                "--tpm2",
                "--tpmstate",
                "dir=/b/tpm",
                "--ctrl",
                "type=unixio,path=/r/swtpm.sock",
                "--log",
                "file=/r/swtpm.log,level=1",
                "--pid",
                "file=/r/swtpm.pid",
                "--seccomp",
                "action=kill",
                "--terminate"
            ]
        );
        let handed = argv_handed(
            &tpm,
            &Handles {
                ctrl_fd: 5,
                log_fd: 6,
                runas: Some("guestbox-qemu".into()),
                state_fd: Some(7),
            },
        )
        .unwrap();
        assert_eq!(handed[3], "dir=/proc/self/fd/7");
        assert_eq!(
            handed[4..],
            [
                "--ctrl",
                "type=unixio,fd=5",
                "--log",
                "fd=6,level=1",
                "--runas",
                "guestbox-qemu",
                "--seccomp",
                "action=kill",
                "--terminate"
            ]
        );
        let bad = Tpm {
            state_dir: "/b/a,b".into(),
            ..tpm
        };
        assert!(matches!(argv(&bad, None), Err(Error::Usage(_))));
    }
}
