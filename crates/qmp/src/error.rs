use std::io;

/// Everything that can go wrong talking to QEMU over QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed for a reason other than QEMU going away.
    #[error("QMP socket I/O error: {0}")]
    Io(#[from] io::Error),

    /// No answer in time. `command` names what was awaited: a QMP command
    /// such as `query-status`, or e.g. `event STOP`, `connect to /path`.
    #[error("timed out waiting for QEMU ({command})")]
    Timeout { command: String },

    /// The connection closed: QEMU exited or was killed.
    #[error("QEMU closed the QMP connection (the QEMU process probably exited)")]
    Disconnected,

    /// QEMU answered a command with an error reply.
    #[error("QEMU rejected the command ({class}): {desc}")]
    Qmp { class: String, desc: String },

    /// QEMU sent something that is not valid QMP.
    #[error("malformed QMP message from QEMU: {0}")]
    Protocol(String),

    /// A migration ended in state `failed` or `cancelled`; `desc` is QEMU's `error-desc`.
    #[error("migration failed: {desc}")]
    MigrationFailed { desc: String },
}

impl QmpError {
    /// Maps socket errors that mean "the peer is gone" to [`QmpError::Disconnected`].
    pub(crate) fn from_io(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof => QmpError::Disconnected,
            _ => QmpError::Io(err),
        }
    }
}
