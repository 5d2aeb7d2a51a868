//! The default guest: Debian built from packages ([`crate::images`]). Jobs go over the
//! controller's SSH connection to root's login shell, guestbox's exec helper.

use link::{net, shares};

use super::GuestJob;
use crate::{IoContext, Result};

/// The user the controller logs in as.
pub const USER: &str = "root";

/// Where the guest mounts the controller's share root at bootstrap; every run's
/// directories appear under it.
pub const GUEST_SHARE_ROOT: &str = link::job::SHARE_MOUNT;

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
/// - `actimeo=1` (cifs's default, said so it stays): attributes are kept 1 s of guest
///   time. The directories behind the share change between snapshot and revive, but the
///   guest's clock stands still while it is frozen, and nothing touches the share in the
///   last 3 s before the freeze (the settle), so every entry a revived guest holds is
///   already stale; within a run, a host-side change shows within 1 s. `actimeo=0` made
///   every `lstat` a round trip through both emulated kernels: `find` over 2 000 files
///   took 38 s instead of 8.9 s under TCG;
/// - `nobrl`: byte-range locks stay in the guest, the only client (flock and fcntl locks
///   work between the guest's processes without a round trip).
pub const CIFS_OPTIONS: &str = "vers=1.0,unix,iocharset=iso8859-1,nomapposix,actimeo=1,nobrl";

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

/// A guest path (`-v`'s or `-w`'s): absolute, as the exec helper binds and enters it.
pub fn check_path(option: &str, path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(crate::Error::Usage(format!(
            "{option} {path:?}: the Debian guest needs an absolute path (like /src)"
        )));
    }
    Ok(())
}

/// The remote command line for one job: the job itself, for the guest's exec helper
/// (root's login shell, see `link::job`), which binds each share at its path, reseeds the
/// kernel's generator, sets the clock, and runs the command in its working directory.
pub fn run_script(job: &GuestJob) -> Result<String> {
    let job = link::job::Job {
        time: job.time,
        seed: job.seed.clone(),
        mounts: job
            .mounts
            .iter()
            .map(|m| link::job::BindMount {
                source: format!("{GUEST_SHARE_ROOT}/{}", m.tag),
                target: m.guest_path.clone(),
                readonly: m.readonly,
            })
            .collect(),
        env: job.env.clone(),
        workdir: job.workdir.clone(),
        argv: job.argv.clone(),
        stdin: job.stdin,
    };
    job.command_line().ctx(|| "encoding the job")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{GuestJob, GuestMount};

    #[test]
    fn the_run_script_is_the_job_for_the_exec_helper() {
        let job = GuestJob {
            time: Some(5),
            stdin: false,
            seed: Some("ab".into()),
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
        let line = run_script(&job).unwrap();
        let parsed = link::job::Job::parse(&line).unwrap().unwrap();
        assert_eq!(parsed.time, Some(5));
        assert_eq!(parsed.seed.as_deref(), Some("ab"));
        assert_eq!(
            parsed.mounts,
            [
                link::job::BindMount {
                    source: "/run/guestbox/share/vol0".into(),
                    target: "/src dir".into(),
                    readonly: true
                },
                link::job::BindMount {
                    source: "/run/guestbox/share/vol1".into(),
                    target: "/out".into(),
                    readonly: false
                }
            ]
        );
        assert_eq!(parsed.env, job.env);
        assert_eq!(parsed.workdir, job.workdir);
        assert_eq!(parsed.argv, job.argv);
    }

    #[test]
    fn the_setup_script_is_valid_shell_with_the_password() {
        let setup = setup_script("0123abcd");
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &setup])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(setup.contains("password=0123abcd"));
    }
}
