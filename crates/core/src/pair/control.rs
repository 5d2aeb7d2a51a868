//! The host end of the agent's control channel (a virtio-serial port, a unix socket here).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use link::proto::{self, parse_header, Event, FrameKind, ProtoError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::{Error, Result};

pub struct Control {
    pub stream: UnixStream,
    /// The socket's real path, for messages (the one connected to may be a short alias).
    shown: PathBuf,
}

impl Control {
    /// Connects to `socket`, retrying while QEMU has not created it yet. `shown` is the
    /// path messages name.
    pub async fn connect(socket: &Path, shown: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => {
                    return Ok(Self {
                        stream,
                        shown: shown.to_path_buf(),
                    })
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::Channel {
                        socket: shown.to_path_buf(),
                        source: ProtoError::Io(e),
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The error for a failure on this channel.
    pub fn error(&self, source: ProtoError) -> Error {
        channel_error(&self.shown, source)
    }

    pub fn socket(&self) -> &Path {
        &self.shown
    }

    pub async fn send(&mut self, request: &Request) -> Result<()> {
        let mut buf = Vec::new();
        proto::write_message(&mut buf, request).map_err(|e| self.error(e))?;
        let sent = self.stream.write_all(&buf).await;
        sent.map_err(|e| self.error(ProtoError::Io(e)))
    }

    /// The next frame from the agent.
    pub async fn read_frame(&mut self) -> Result<(FrameKind, Vec<u8>)> {
        let r = read_frame(&mut self.stream).await;
        r.map_err(|e| self.error(e))
    }

    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            let (kind, payload) = self.read_frame().await?;
            if kind == FrameKind::Message {
                let event = serde_json::from_slice(&payload);
                return event.map_err(|e| self.error(ProtoError::Json(e)));
            }
        }
    }

    pub async fn ping(&mut self) -> Result<Event> {
        self.send(&Request::Ping).await?;
        match tokio::time::timeout(Duration::from_secs(10), self.next_event()).await {
            Ok(event) => event,
            Err(_) => Err(self.error(ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer to ping within 10 s",
            )))),
        }
    }

    pub async fn poweroff(mut self) -> Result<()> {
        self.send(&Request::Poweroff).await
    }
}

pub fn channel_error(socket: &Path, source: ProtoError) -> Error {
    Error::Channel {
        socket: socket.to_path_buf(),
        source,
    }
}

/// Reads one frame from either half of the channel.
pub async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
) -> std::result::Result<(FrameKind, Vec<u8>), ProtoError> {
    let mut header = [0u8; 5];
    r.read_exact(&mut header).await?;
    let (kind, len) = parse_header(header)?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok((kind, payload))
}

/// Writes one frame to either half of the channel.
pub async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    kind: FrameKind,
    payload: &[u8],
) -> std::result::Result<(), ProtoError> {
    let mut buf = Vec::with_capacity(payload.len() + 5);
    proto::write_frame(&mut buf, kind, payload)?;
    w.write_all(&buf).await?;
    Ok(())
}
