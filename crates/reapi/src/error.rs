//! Errors of the worker as a whole (what `Worker::run` returns) and of one lease (what
//! becomes the lease's status).

use std::path::PathBuf;

use crate::executor::ExecutorError;

/// Why the worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint URL is not one the worker can use.
    #[error("bad Remote Execution endpoint {url:?}: {reason}; give it as grpc://HOST:PORT")]
    BadEndpoint {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A setting of [`crate::WorkerConfig`] is out of range.
    #[error("bad worker setting: {0}")]
    BadConfig(String),

    /// No connection could be made at all.
    #[error(
        "could not connect to the Remote Execution server at {url}: check the address and port, \
         that the server runs and listens there, and that it speaks plain-text gRPC (no TLS)"
    )]
    Connect {
        /// The URL the worker tried.
        url: String,
        /// What the transport said.
        #[source]
        source: tonic::transport::Error,
    },

    /// The server answered an RPC with an error the worker cannot recover from.
    #[error("{rpc} at {url} failed ({code:?}: {message}){hint}", code = source.code(), message = source.message())]
    Rpc {
        /// The URL of the server.
        url: String,
        /// The RPC, e.g. `Bots.CreateBotSession`.
        rpc: &'static str,
        /// What to check, with a leading separator, or empty.
        hint: &'static str,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },

    /// The server stayed out of reach for longer than the configured reconnect timeout.
    #[error(
        "lost the Remote Execution server at {url} for {seconds} s ({rpc}); check that it still runs"
    )]
    Lost {
        /// The URL of the server.
        url: String,
        /// The RPC that kept failing.
        rpc: &'static str,
        /// How long the worker retried.
        seconds: u64,
        /// The last failure.
        #[source]
        source: tonic::Status,
    },

    /// The work directory cannot be made or used.
    #[error("work directory {}: {source}", path.display())]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Why one lease could not produce an action result. Each kind maps to the `google.rpc.Code`
/// the lease is completed with (see [`LeaseError::code`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// Blobs the action needs are not in the CAS: `FAILED_PRECONDITION` with a
    /// `PreconditionFailure` naming them, so that the client uploads them and retries.
    #[error("missing from the CAS: {}", .0.join(", "))]
    MissingBlobs(Vec<String>),

    /// A CAS or ByteStream call failed: `UNAVAILABLE` (the server may retry the action).
    #[error("{rpc} failed: {source}")]
    Cas {
        rpc: &'static str,
        #[source]
        source: tonic::Status,
    },

    /// The CAS returned a blob whose hash or size is not its digest's.
    #[error("the CAS returned blob {digest} with other contents (got {got})")]
    Corrupt { digest: String, got: String },

    /// The action, command or input tree is malformed: `INVALID_ARGUMENT`.
    #[error("{0}")]
    Invalid(String),

    /// A blob could not be decoded as the message it should be: `INVALID_ARGUMENT`.
    #[error("blob {digest} is not a valid {what}: {source}")]
    Decode {
        digest: String,
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },

    /// An output is of the wrong kind (REAPI: `FAILED_PRECONDITION`).
    #[error("{0}")]
    Output(String),

    /// The worker's own disk failed: `INTERNAL`.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The executor's infrastructure failed: its own code.
    #[error(transparent)]
    Executor(#[from] ExecutorError),

    /// The lease task panicked: `INTERNAL`.
    #[error("the lease's task panicked: {0}")]
    Panic(String),

    /// The worker is shutting down or full and gives the lease back: `UNAVAILABLE`.
    #[error("{0}")]
    Returned(&'static str),
}

impl LeaseError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LeaseError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// The `google.rpc.Code` the lease is completed with.
    pub(crate) fn code(&self) -> tonic::Code {
        match self {
            LeaseError::MissingBlobs(_) | LeaseError::Output(_) => tonic::Code::FailedPrecondition,
            LeaseError::Cas { .. } | LeaseError::Corrupt { .. } | LeaseError::Returned(_) => {
                tonic::Code::Unavailable
            }
            LeaseError::Invalid(_) | LeaseError::Decode { .. } => tonic::Code::InvalidArgument,
            LeaseError::Io { .. } | LeaseError::Panic(_) => tonic::Code::Internal,
            LeaseError::Executor(e) => e.code().rpc_code(),
        }
    }
}

/// The full chain of an error's messages, for status messages and logs.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
