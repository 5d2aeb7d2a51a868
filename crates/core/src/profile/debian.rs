//! The default guest: Debian built from packages ([`crate::images`]). Jobs run through
//! root's login shell (dash) over the controller's SSH connection.

use link::{net, shares};

use super::GuestJob;
use crate::Result;

/// The user the controller logs in as.
pub const USER: &str = "root";

/// Where the guest mounts the controller's share root at bootstrap; every run's
/// directories appear under it.
pub const GUEST_SHARE_ROOT: &str = "/run/guestbox/share";

/// The share behaves as a local POSIX filesystem (see the mount options below).
pub const SHARE_SEMANTICS: shares::Semantics = shares::Semantics::Posix;

/// cifs mount options, with the controller's Samba in [`shares::Semantics::Posix`]
/// (its smb.conf writer says why SMB1 with the CIFS Unix Extensions):
/// - `vers=1.0,unix`: the Unix Extensions, or no mount at all (rather than a share that
///   silently shows every file as 0755);
/// - `iocharset=iso8859-1,nomapposix`: names cross as the exact bytes Linux gave, UTF-8 or
///   not (Samba's unix charset is ISO-8859-1 too: byte → one UTF-16 unit → the same byte),
///   and `:*?"<>|\`, control characters and trailing dots or spaces are not remapped into
///   Unicode's private range (POSIX pathnames allow them as they are);
/// - no `uid=`/`gid=`/`noperm`: owners and modes are the host's, and the guest's kernel
///   checks permissions as on a local filesystem (`uid=` would force every owner to root);
/// - `actimeo=0`: the directories behind the share change between snapshot and revive;
/// - `nobrl`: byte-range locks stay in the guest, the only client (flock and fcntl locks
///   work between the guest's processes without a round trip).
pub const CIFS_OPTIONS: &str = "vers=1.0,unix,iocharset=iso8859-1,nomapposix,actimeo=0,nobrl";

/// A word for a POSIX shell (media's quoter: single quotes, `'` as `'\''`; NUL refused).
fn sh_quote(word: &str) -> Result<String> {
    Ok(media::quote::bash(word)?)
}

/// Run once at bootstrap (over SSH, on stdin): mount the controller's share root.
pub fn setup_script(smb_password: &str) -> String {
    format!(
        "set -e
umask 077
mkdir -p {root}
cat > /run/guestbox/smb.cred <<'GUESTBOX_EOF'
username={user}
password={smb_password}
GUESTBOX_EOF
mount -t cifs //{server}/{share} {root} -o credentials=/run/guestbox/smb.cred,{options} || {{ dmesg | tail -n 15 >&2; exit 32; }}
",
        options = CIFS_OPTIONS,
        root = GUEST_SHARE_ROOT,
        user = shares::SMB_USER,
        server = net::CONTROLLER_ADDRESS,
        share = shares::SMB_SHARE,
    )
}

/// The remote command line for one job: bind each share at its path, then exec the
/// command with its environment in its working directory.
pub fn run_script(job: &GuestJob) -> Result<String> {
    let mut s = String::from("set -e; ");
    if let Some(t) = job.time {
        s.push_str(&format!("date -s @{t} >/dev/null; "));
    }
    for m in &job.mounts {
        let src = format!("{GUEST_SHARE_ROOT}/{}", m.tag);
        let dst = sh_quote(&m.guest_path)?;
        s.push_str(&format!("mkdir -p {dst}; mount --bind {src} {dst}; "));
        if m.readonly {
            s.push_str(&format!("mount -o remount,bind,ro {dst}; "));
        }
    }
    if let Some(dir) = &job.workdir {
        // Made if missing, as docker does. If it cannot be, the job never ran:
        // guestbox's own 125, not a status the command could have given.
        let d = sh_quote(dir)?;
        s.push_str(&format!(
            "mkdir -p {d} && cd {d} || {{ printf 'guestbox: cannot use %s as the working directory\\n' {d} >&2; exit 125; }}; "
        ));
    }
    // Shell builtins, not env(1): every exec is paid again in a revived guest.
    for (k, v) in &job.env {
        s.push_str(&format!("export {}; ", sh_quote(&format!("{k}={v}"))?));
    }
    s.push_str("exec");
    for a in &job.argv {
        s.push(' ');
        s.push_str(&sh_quote(a)?);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{GuestJob, GuestMount};

    fn shell_words(script: &str) -> Vec<String> {
        // Let a real shell split it: print each word of `set -- <words>` on its own line.
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("set -- {script}; for w; do printf '%s\\0' \"$w\"; done"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn quoting_survives_a_real_shell() {
        let words = [
            "plain",
            "two words",
            "it's",
            "$HOME",
            "`x`",
            "a\"b",
            "back\\slash",
            "*",
            "",
            "new\nline",
        ];
        let script: Vec<String> = words.iter().map(|w| sh_quote(w).unwrap()).collect();
        let back = shell_words(&script.join(" "));
        let expected: Vec<&str> = words.iter().copied().filter(|w| !w.is_empty()).collect();
        assert_eq!(back, expected);
    }

    /// Runs the job's script for `workdir` in the host's sh: (status, stdout, stderr).
    fn run_in_workdir(workdir: &str) -> (Option<i32>, String, String) {
        let job = GuestJob {
            time: None,
            mounts: vec![],
            env: vec![],
            workdir: Some(workdir.into()),
            argv: vec!["pwd".into()],
        };
        let s = run_script(&job).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &s])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn a_missing_workdir_is_made_and_an_impossible_one_is_guestboxs_125() {
        let tmp = tempfile::tempdir().unwrap();
        // Quotes and dollars stay data, in the mkdir and in the error message alike.
        let odd = tmp.path().join("a \"b\" $HOME `x`");
        let (code, out, _) = run_in_workdir(&odd.to_string_lossy());
        assert_eq!(code, Some(0));
        assert_eq!(out.trim_end(), odd.to_string_lossy());
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let under_file = file.join("x \"; echo injected; \"");
        let (code, out, err) = run_in_workdir(&under_file.to_string_lossy());
        assert_eq!(code, Some(125), "{err}");
        assert!(!out.contains("injected") && !err.contains("\ninjected"));
        assert!(
            err.contains(&format!(
                "guestbox: cannot use {} as the working directory",
                under_file.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn run_script_binds_mounts_then_execs() {
        let job = GuestJob {
            time: None,
            mounts: vec![
                GuestMount {
                    tag: "vol0".into(),
                    guest_path: "/src dir".into(),
                    readonly: true,
                },
                GuestMount {
                    tag: "vol1".into(),
                    guest_path: "/out".into(),
                    readonly: false,
                },
            ],
            env: vec![("A".into(), "x y".into())],
            workdir: Some("/src dir".into()),
            argv: vec!["sh".into(), "-c".into(), "echo $A".into()],
        };
        let s = run_script(&job).unwrap();
        assert_eq!(
            s,
            "set -e; mkdir -p '/src dir'; mount --bind /run/guestbox/share/vol0 '/src dir'; \
             mount -o remount,bind,ro '/src dir'; mkdir -p /out; mount --bind /run/guestbox/share/vol1 /out; \
             mkdir -p '/src dir' && cd '/src dir' || { printf 'guestbox: cannot use %s as the working directory\\n' '/src dir' >&2; exit 125; }; \
             export 'A=x y'; exec sh -c 'echo $A'"
        );
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &s])
            .output()
            .unwrap();
        assert!(out.status.success());
        let setup = setup_script("0123abcd");
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &setup])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(setup.contains("password=0123abcd"));
    }
}
