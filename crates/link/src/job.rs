//! One job as the guest's exec helper (`guestbox-exec`, the guest user's login shell)
//! receives it: the SSH session's whole command line is [`PREFIX`] followed by the job as
//! JSON. sshd hands the command to the login shell as `-c COMMAND` without any shell in
//! between, so nothing is quoted and nothing but the helper and the command is executed.

use serde::{Deserialize, Serialize};

/// Where the Linux guest keeps guestbox's own files: a tmpfs the initramfs mounts and
/// fills, so it is part of the snapshot and changes with guestbox, not with the image.
pub const GUEST_RUN_DIR: &str = "/run/guestbox";
/// The exec helper, the guest user's login shell.
pub const EXEC_HELPER: &str = "/run/guestbox/exec";
/// Where the guest mounts the controller's share root at bootstrap; every run's
/// directories appear under it (one subdirectory per 9p tag).
pub const SHARE_MOUNT: &str = "/run/guestbox/share";

/// A command line that starts with this is a job; anything else the helper gives to
/// `/bin/sh` as a login shell would.
pub const PREFIX: &str = "guestbox-job ";

/// The command line of the session the controller opens at bootstrap, before the freeze:
/// the helper then stays resident, a job server on that session's stdin and stdout, so a
/// revived pair runs each job without opening an SSH session or starting a shell. It
/// reads [`crate::proto`] frames: a `Message` holding a [`Job`] as JSON starts a job, `Stdin`
/// frames feed it (empty: end of input); it writes `Stdout` and `Stderr` frames and the
/// `Started` and `Exit` events, one job at a time.
pub const SERVE_COMMAND: &str = "guestbox-serve";

/// Exit status when the job could not be started (a mount, the working directory): the
/// command never ran. As `env`'s and docker's 125.
pub const SETUP_FAILED_EXIT: i32 = 125;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Host time to set first (seconds since the epoch); None keeps the snapshot's clock.
    pub time: Option<i64>,
    /// Random bytes from the host (hex) mixed into the guest kernel's pool, which is then
    /// reseeded, before the command starts; None replays the snapshot's randomness.
    pub seed: Option<String>,
    /// Bind mounts to make first, in order.
    pub mounts: Vec<BindMount>,
    /// Set on top of the session's environment, in order.
    pub env: Vec<(String, String)>,
    /// Made if missing (as docker does), then entered.
    pub workdir: Option<String>,
    /// The command, looked up on `PATH` as a shell would.
    pub argv: Vec<String>,
    /// Served jobs: whether `Stdin` frames follow (otherwise the command reads nothing).
    #[serde(default)]
    pub stdin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    pub readonly: bool,
}

impl Job {
    /// The SSH command line that carries this job.
    pub fn command_line(&self) -> Result<String, serde_json::Error> {
        Ok(format!("{PREFIX}{}", serde_json::to_string(self)?))
    }

    /// The job in a command line, if it is one.
    pub fn parse(command_line: &str) -> Option<Result<Job, serde_json::Error>> {
        command_line.strip_prefix(PREFIX).map(serde_json::from_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_travels_as_one_command_line() {
        let job = Job {
            time: Some(1_700_000_000),
            seed: Some("00ff".into()),
            mounts: vec![BindMount {
                source: format!("{SHARE_MOUNT}/vol0"),
                target: "/src dir/'quoted'".into(),
                readonly: true,
            }],
            env: vec![("A".into(), "x\ny $HOME".into())],
            workdir: Some("/src dir".into()),
            argv: vec!["sh".into(), "-c".into(), "echo \"$A\"; exit 3".into()],
            stdin: false,
        };
        let line = job.command_line().unwrap();
        assert!(!line.contains('\n'), "one line: {line}");
        assert_eq!(Job::parse(&line).unwrap().unwrap(), job);
        assert!(Job::parse("sh -s").is_none());
        assert!(Job::parse("guestbox-job {").unwrap().is_err());
    }
}
