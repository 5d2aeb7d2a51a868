//! One error type for the engine; the CLI maps it to exit codes. Every variant that wraps a
//! lower error keeps it as its source, and every message says what to do where there is
//! something to do.

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

    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{what} failed ({status}){}", if detail.is_empty() { String::new() } else { format!(":\n{detail}") })]
    Command {
        what: String,
        status: String,
        detail: String,
    },

    /// The host's QEMU is not what guestbox needs.
    #[error("QEMU at {}: {problem}", program.display())]
    Qemu { program: PathBuf, problem: String },

    #[error("{vm} did not become ready within {seconds} s.\n  Last lines of its console ({log}):\n{tail}", log = log.display())]
    BootTimeout {
        vm: String,
        seconds: u64,
        log: PathBuf,
        tail: String,
    },

    #[error("{vm} stopped before it was ready ({status}).{}\n  Last lines of its console ({log}):\n{tail}",
        if stderr.is_empty() { String::new() } else { format!("\n  QEMU said: {stderr}") }, log = log.display())]
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

    #[error("QEMU control (QMP) of the {vm} ({}): {source}", socket.display())]
    Qmp {
        vm: String,
        /// The QMP socket's real path.
        socket: PathBuf,
        #[source]
        source: qmp::QmpError,
    },

    /// Reviving a VM from its snapshot failed: QEMU's words are kept.
    #[error("reviving the {vm} failed: {source}{}", if qemu_said.is_empty() { String::new() } else { format!("\n  QEMU said: {qemu_said}") })]
    Revive {
        vm: String,
        qemu_said: String,
        #[source]
        source: Box<Error>,
    },

    /// The control channel to the controller's agent broke or carried garbage.
    #[error("the control channel to the controller ({}): {source}", socket.display())]
    Channel {
        socket: PathBuf,
        #[source]
        source: link::proto::ProtoError,
    },

    /// The controller's agent reported a failure.
    #[error("the controller: {message}\n  Last lines of its console ({}):\n{tail}", console.display())]
    Controller {
        message: String,
        console: PathBuf,
        tail: String,
    },

    /// The controller did not answer in time.
    #[error("the controller did not finish {what} within {seconds} s.\n  Last lines of its console ({}):\n{tail}", console.display())]
    ControllerTimeout {
        what: &'static str,
        seconds: u64,
        console: PathBuf,
        tail: String,
    },

    /// The filesystem under a run's overlays filled up: the guest's writes failed.
    #[error("the filesystem holding {} ran out of space during the run, so the guest's disk writes failed and its results cannot be trusted; free space there (or set GUESTBOX_HOME to a larger filesystem) and run again", dir.display())]
    HostDiskFull { dir: PathBuf },

    /// A base's files do not match what it recorded.
    #[error(
        "base {id} is damaged: {problem}; remove it (`guestbox rm {id}`) and bootstrap it again"
    )]
    DamagedBase { id: String, problem: String },

    /// A base brought from elsewhere (pulled from a registry) is not what its sealed
    /// manifest says; nothing of it was registered.
    #[error("the pulled base {id}: {problem}; nothing was registered. Push it again from a good copy (`guestbox verify` it there first)")]
    BadImport { id: String, problem: String },

    /// An artifact in the image cache is not what it should be.
    #[error("the cached artifact {}: {problem}; remove it (`guestbox gc` or delete the directory) and run again", path.display())]
    DamagedArtifact { path: PathBuf, problem: String },

    #[error("cannot reach the Debian mirror {mirror} to build images, and none are cached: {source}. Set GUESTBOX_DEBIAN_MIRROR to a reachable mirror")]
    Mirror {
        mirror: String,
        #[source]
        source: Box<Error>,
    },

    /// A Debian package is not what guestbox expects of it.
    #[error("the Debian package {package}: {problem}; check the mirror (GUESTBOX_DEBIAN_MIRROR) and run again")]
    Package { package: String, problem: String },

    /// A value that cannot be passed to the guest's shell (a NUL byte).
    #[error("cannot pass this to the guest's shell: {0}")]
    Quote(#[from] media::quote::QuoteError),

    /// A Windows bootstrap stage cannot be run as asked.
    #[error("the Windows {stage} stage: {problem}")]
    Stage { stage: String, problem: String },

    /// A stage of a Windows bootstrap failed while its VM ran (it did not end in time, its
    /// SSH never answered): its console and a last screenshot are kept for the user.
    #[error("{0}")]
    StageFailed(Box<StageFailure>),

    /// The Windows guest's bootstrap reported a failed step on COM1.
    #[error("the Windows bootstrap failed at step {step:?} (COM1 is kept in {}):\n{tail}", console.display())]
    WindowsBootstrap {
        step: String,
        console: PathBuf,
        tail: String,
    },

    #[error("the Windows install media: {0}")]
    Media(#[from] media::windows::Error),

    #[error("building the initramfs: {0}")]
    Cpio(#[from] media::cpio::CpioError),

    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// Exit code for guestbox's own failures: 2 for usage and configuration, 125 otherwise,
    /// so that they never collide with the common exit codes of a job's command.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::MissingProgram { .. } | Error::Quote(_) => 2,
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

impl<T> IoContext<T> for serde_json::Result<T> {
    fn ctx<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Json {
            context: context().into(),
            source,
        })
    }
}

/// What [`Error::StageFailed`] says (boxed: it is larger than the other variants).
#[derive(Debug)]
pub struct StageFailure {
    pub stage: String,
    pub problem: String,
    /// The stage's console log, kept (until `guestbox gc`).
    pub console: PathBuf,
    /// A last screenshot (PPM), if the display could be saved.
    pub screenshot: Option<PathBuf>,
    /// The console's last lines.
    pub tail: String,
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shot = self
            .screenshot
            .as_ref()
            .map_or("(none: the display could not be saved)".to_string(), |p| {
                p.display().to_string()
            });
        write!(
            f,
            "the Windows {} stage {}.\n  Kept for you (until `guestbox gc`):\n    console log  {}\n    screenshot   {shot}\n  Last lines of its console:\n{}",
            self.stage,
            self.problem,
            self.console.display(),
            self.tail
        )
    }
}
