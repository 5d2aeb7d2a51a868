//! The host end of the agent's control channel (a virtio-serial port, a unix socket here).

use std::path::Path;
use std::time::{Duration, Instant};

use agent::{parse_header, Event, FrameKind, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::{Error, Result};

pub struct Control {
    pub stream: UnixStream,
}

fn channel_error(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("controller agent: {e}"))
}

impl Control {
    /// Connects to the port's socket, retrying while QEMU has not created it yet.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => return Ok(Self { stream }),
                Err(e) if Instant::now() >= deadline => {
                    return Err(channel_error(format!(
                        "cannot connect to {}: {e}",
                        socket.display()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub async fn send(&mut self, request: &Request) -> Result<()> {
        let mut buf = Vec::new();
        agent::write_message(&mut buf, request).map_err(channel_error)?;
        self.stream.write_all(&buf).await.map_err(channel_error)
    }

    /// The next frame from the agent.
    pub async fn read_frame(&mut self) -> Result<(FrameKind, Vec<u8>)> {
        read_frame(&mut self.stream).await
    }
}

/// Reads one frame from either half of the channel.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Result<(FrameKind, Vec<u8>)> {
    let mut header = [0u8; 5];
    r.read_exact(&mut header).await.map_err(channel_error)?;
    let (kind, len) = parse_header(header).map_err(channel_error)?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.map_err(channel_error)?;
    Ok((kind, payload))
}

/// Writes one frame to either half of the channel.
pub async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    kind: FrameKind,
    payload: &[u8],
) -> Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 5);
    agent::write_frame(&mut buf, kind, payload).map_err(channel_error)?;
    w.write_all(&buf).await.map_err(channel_error)
}

impl Control {
    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            let (kind, payload) = self.read_frame().await?;
            if kind == FrameKind::Message {
                return serde_json::from_slice(&payload).map_err(channel_error);
            }
        }
    }

    pub async fn ping(&mut self) -> Result<Event> {
        self.send(&Request::Ping).await?;
        match tokio::time::timeout(Duration::from_secs(10), self.next_event()).await {
            Ok(event) => event,
            Err(_) => Err(channel_error("no answer to ping within 10 s")),
        }
    }

    pub async fn poweroff(mut self) -> Result<()> {
        self.send(&Request::Poweroff).await
    }
}
