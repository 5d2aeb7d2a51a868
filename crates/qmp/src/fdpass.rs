//! Sending a file descriptor alongside QMP bytes (SCM_RIGHTS), on tokio's socket; the
//! SCM_RIGHTS code itself is `sys::fdpass`, shared with the controller's agent.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use tokio::io::Interest;
use tokio::net::UnixStream;

/// Sends a prefix of `buf` with `fd` attached; returns how many bytes went out.
///
/// The fd rides on the command's own bytes so QEMU has it queued by the time
/// it parses `getfd`.
pub(crate) async fn send_with_fd(
    stream: &UnixStream,
    buf: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            sys::fdpass::send_with_fd(stream.as_raw_fd(), buf, fd.as_raw_fd())
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}
