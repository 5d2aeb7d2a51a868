//! The seam between the bot loop and whatever runs the command (a revived guest, or a
//! test double on the host).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

/// One action, ready to run: its input root is materialised on the host, the parent
/// directories of its outputs exist.
#[derive(Debug, Clone)]
pub struct ActionJob {
    /// The lease's id (for logs).
    pub lease_id: String,
    /// The action's digest as `HASH/SIZE` (for logs).
    pub action_digest: String,
    /// The materialised input root on the host. The command may write anywhere in it;
    /// outputs are collected from it afterwards.
    pub input_root: PathBuf,
    /// The working directory relative to the input root (`""` = the root). It exists.
    pub working_directory: String,
    /// The command line; `arguments[0]` is the program (Bazel sends `/bin/bash -c ...`).
    pub arguments: Vec<String>,
    /// The environment, exactly as the client sent it (nothing else should be set
    /// beyond what the executor needs to start the program).
    pub environment: Vec<(String, String)>,
    /// The action's timeout, if it has one. When it expires, stop the command and
    /// return [`ActionOutcome::timed_out`].
    pub timeout: Option<Duration>,
    /// The action's platform properties (from the Action, else from the Command).
    pub platform: Vec<(String, String)>,
    /// Where the command's standard output goes (the file does not exist yet).
    pub stdout_path: PathBuf,
    /// Where the command's standard error goes (the file does not exist yet).
    pub stderr_path: PathBuf,
}

impl ActionJob {
    /// The first value of platform property `name`, e.g. [`crate::BASE_PROPERTY`].
    pub fn platform_value(&self, name: &str) -> Option<&str> {
        self.platform
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The working directory on the host: `input_root` joined with `working_directory`.
    pub fn host_working_directory(&self) -> PathBuf {
        if self.working_directory.is_empty() {
            self.input_root.clone()
        } else {
            self.input_root.join(&self.working_directory)
        }
    }

    /// The working directory for a command that sees the input root at `root` (e.g. the
    /// guest's mount point): what to pass as `-w`.
    pub fn working_directory_under(&self, root: &Path) -> PathBuf {
        if self.working_directory.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&self.working_directory)
        }
    }
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionOutcome {
    /// The command's exit code (reported to the client as the action's exit code).
    pub exit_code: i32,
    /// The command was stopped because [`ActionJob::timeout`] expired; the lease is then
    /// completed with `DEADLINE_EXCEEDED` (stdout, stderr and outputs are still uploaded).
    pub timed_out: bool,
}

/// The `google.rpc.Code` an infrastructure failure is reported with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfraCode {
    /// Transient: the farm may retry the action, here or on another worker
    /// (e.g. a guest failed to revive). BuildGrid retries `UNAVAILABLE` and `INTERNAL`.
    Unavailable,
    /// A fault of the executor itself.
    Internal,
    /// This worker cannot run this action as asked (e.g. a base it does not have).
    FailedPrecondition,
}

impl InfraCode {
    /// As a gRPC code.
    pub fn rpc_code(self) -> tonic::Code {
        match self {
            InfraCode::Unavailable => tonic::Code::Unavailable,
            InfraCode::Internal => tonic::Code::Internal,
            InfraCode::FailedPrecondition => tonic::Code::FailedPrecondition,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The executor could not run the command (not: the command failed — that is an
/// [`ActionOutcome`] with a non-zero exit code). Completes the lease with a non-OK status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExecutorError {
    code: InfraCode,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl ExecutorError {
    /// An error with `code` and a message saying what failed.
    pub fn new(code: InfraCode, message: impl Into<String>) -> Self {
        ExecutorError {
            code,
            message: message.into(),
            source: None,
        }
    }

    /// [`InfraCode::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(InfraCode::Unavailable, message)
    }

    /// [`InfraCode::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(InfraCode::Internal, message)
    }

    /// [`InfraCode::FailedPrecondition`].
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(InfraCode::FailedPrecondition, message)
    }

    /// Keeps the underlying error as this one's source.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The code the lease is completed with.
    pub fn code(&self) -> InfraCode {
        self.code
    }
}

/// Runs actions. One worker calls it for up to `max_concurrent` jobs at once.
///
/// `cancel` fires when the server cancels the lease, when the worker's drain timeout
/// expires, or when the command outlives its timeout by the worker's grace period.
/// The executor should then stop the command, clean up, and return soon (its result
/// is then discarded). The worker awaits the future to its end and never drops it early,
/// so it may clean up asynchronously. (Leases run in their own tasks: dropping the
/// future of `Worker::run` instead of cancelling its shutdown token leaves them running
/// to their end, unreported.)
pub trait Executor: Send + Sync + 'static {
    /// Runs one action.
    fn execute(
        &self,
        job: &ActionJob,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<ActionOutcome, ExecutorError>> + Send;
}
