//! One error type for the engine; the CLI maps it to exit codes.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the user: exit code 2.
    #[error("{0}")]
    Usage(String),

    #[error("`{program}` is not installed: {why}.\n  On Debian/Ubuntu: apt-get install {package}   (or run scripts/setup)")]
    MissingProgram {
        program: &'static str,
        package: &'static str,
        why: &'static str,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("{what} failed ({status}){}", if detail.is_empty() { String::new() } else { format!(":\n{detail}") })]
    Command {
        what: String,
        status: String,
        detail: String,
    },

    #[error("{vm} did not become ready within {seconds} s.\n  Last lines of its console ({log}):\n{tail}")]
    BootTimeout {
        vm: String,
        seconds: u64,
        log: PathBuf,
        tail: String,
    },

    #[error("{vm} stopped before it was ready ({status}).{}\n  Last lines of its console ({log}):\n{tail}",
        if stderr.is_empty() { String::new() } else { format!("\n  QEMU said: {stderr}") })]
    VmExited {
        vm: String,
        status: String,
        stderr: String,
        log: PathBuf,
        tail: String,
    },

    /// A VM's QEMU exited while a job ran: a guest kernel panic (it powers off), an
    /// outside kill, a QEMU crash.
    #[error("the {vm} VM stopped during the run ({status}): a kernel panic, or QEMU killed or crashed.{}\n  Last lines of its console:\n{tail}",
        if stderr.is_empty() { String::new() } else { format!("\n  QEMU said: {stderr}") })]
    VmDied {
        vm: String,
        status: String,
        stderr: String,
        tail: String,
    },

    #[error("QEMU control (QMP) of {vm}: {source}")]
    Qmp {
        vm: String,
        #[source]
        source: qmp::QmpError,
    },

    #[error("interrupted")]
    Interrupted,

    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Exit code for guestbox's own failures: 2 for usage and configuration, 125 otherwise,
    /// so that they never collide with the common exit codes of a job's command.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::MissingProgram { .. } => 2,
            Error::Interrupted => 130,
            _ => 125,
        }
    }
}

/// Adds a human context to `io::Error`s: `fs::read(p).ctx(|| format!("reading {}", p.display()))`.
pub trait IoContext<T> {
    fn ctx<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context().into(),
            source,
        })
    }
}
