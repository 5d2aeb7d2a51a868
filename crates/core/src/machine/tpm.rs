//! The TPM 2.0 of a firmware-booted guest: swtpm, started next to its QEMU and ended with
//! it. The one place guestbox starts swtpm ([`start`]) and writes its command line
//! ([`argv`]); the emitted stage scripts use the same [`argv`].
//!
//! swtpm serves one QEMU over a unix socket (`--ctrl type=unixio`) and exits when that
//! QEMU disconnects (`--terminate`), writing its state to `--tpmstate dir=...` first. A
//! snapshot carries the TPM's state in QEMU's migration stream (QEMU fetches it from swtpm
//! when saving and hands it back when loading), so a revive starts swtpm on a copy of the
//! base's state directory and QEMU restores the rest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::argv::value;
use super::spec::Tpm;
use crate::host::process::{tail_of_file, Supervised};
use crate::host::programs::{self, Program};
use crate::{Error, IoContext, Result};

pub const SWTPM: Program = Program {
    name: "swtpm",
    package: "swtpm",
    why: "it emulates the TPM 2.0 that Windows 11 wants without the bypass keys",
};

/// How long swtpm may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// swtpm's arguments (after the program name) for `tpm`; `pid_file` for scripts that start
/// it in the background.
pub fn argv(tpm: &Tpm, pid_file: Option<&Path>) -> Result<Vec<String>> {
    // swtpm splits its option values at commas and has no escape for them.
    let v = |p: &Path| -> Result<String> {
        let s = value(p)?;
        if s.contains(',') {
            return Err(Error::Usage(format!(
                "swtpm cannot take paths with a comma: {}",
                p.display()
            )));
        }
        Ok(s)
    };
    let mut a = vec![
        "socket".into(),
        "--tpm2".into(),
        "--tpmstate".into(),
        format!("dir={}", v(&tpm.state_dir)?),
        "--ctrl".into(),
        format!("type=unixio,path={}", v(&tpm.socket)?),
        "--log".into(),
        format!("file={},level=1", v(&tpm.log)?),
    ];
    if let Some(pid) = pid_file {
        a.push("--pid".into());
        a.push(format!("file={}", v(pid)?));
    }
    a.push("--terminate".into());
    Ok(a)
}

/// `path` as this process reaches it: relative paths are relative to `cwd`.
fn here(path: &Path, cwd: Option<&Path>) -> PathBuf {
    match cwd {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Starts swtpm for `tpm` (its state directory made if missing), supervised like QEMU, in
/// `cwd` and keeping descriptor `inherit` (see [`crate::host::ShortDir`]); returns once its
/// socket exists, so QEMU can connect at start.
pub async fn start(
    tpm: &Tpm,
    inherit: Option<std::os::fd::RawFd>,
    cwd: Option<&Path>,
) -> Result<Supervised> {
    let program = programs::path_of(SWTPM)?;
    let state = here(&tpm.state_dir, cwd);
    std::fs::create_dir_all(&state).ctx(|| format!("creating {}", state.display()))?;
    let socket = here(&tpm.socket, cwd);
    // A socket left by an earlier start would look ready.
    let _ = std::fs::remove_file(&socket);
    let log = here(&tpm.log, cwd);
    let mut stderr = log.as_os_str().to_owned();
    stderr.push(".stderr");
    let mut process = Supervised::spawn_with(
        "swtpm",
        &program,
        &argv(tpm, None)?,
        Path::new(&stderr),
        inherit,
        cwd,
    )?;
    let started = Instant::now();
    loop {
        if socket.exists() {
            return Ok(process);
        }
        if let Some(status) = process.try_wait()? {
            return Err(Error::Command {
                what: "swtpm (the guest's TPM)".into(),
                status: status.to_string(),
                detail: format!("{}\n{}", process.stderr_tail(5), tail_of_file(&log, 10)),
            });
        }
        if started.elapsed() > START_TIMEOUT {
            process.kill().await;
            return Err(Error::Command {
                what: "swtpm (the guest's TPM)".into(),
                status: format!(
                    "no socket {} within {} s",
                    socket.display(),
                    START_TIMEOUT.as_secs()
                ),
                detail: tail_of_file(&log, 10),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
