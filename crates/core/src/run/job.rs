//! A job's I/O on the control channel: the request goes out, stdin follows once the command
//! has started, stdout and stderr come back in their own frames until the exit status.

use std::time::{Duration, Instant};

use link::proto::{self, Event, FrameKind, ProtoError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Timings;
use crate::pair::control::{read_frame, write_frame, Control};
use crate::{Error, IoContext, Result};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
}

/// The command's standard streams on the host side.
pub struct Streams<'a> {
    /// Forwarded to the command as it arrives; None: the command reads nothing.
    pub stdin: Option<&'a mut (dyn AsyncRead + Unpin + Send)>,
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// The host terminal's size `(rows, cols)` as it changes, for a command with a
    /// terminal ([`super::Command::tty`]).
    pub window: Option<tokio::sync::watch::Receiver<(u16, u16)>>,
}

/// Sends `request` and pumps its streams until the agent reports the command's end.
/// `started` is when the run began (for `timings`); `console` is the controller's.
pub async fn drive(
    mut channel: Control,
    request: proto::Run,
    streams: &mut Streams<'_>,
    started: Instant,
    timings: &mut Timings,
    console: &std::path::Path,
) -> Result<Ended> {
    timings.controller_ready = started.elapsed();
    channel.send(&proto::Request::Run(request)).await?;
    let socket = channel.socket().to_path_buf();
    let lost = |e: ProtoError| crate::pair::control::channel_error(&socket, e);
    let (mut from_agent, mut to_agent) = channel.stream.split();
    // Input goes to the agent as it comes, once the command has started (before that the
    // agent has nowhere to put it); after EOF (an empty frame) this waits forever, so only
    // the output side below ends the job.
    let started_signal = tokio::sync::Notify::new();
    let Streams {
        stdin,
        stdout,
        stderr,
        window,
    } = streams;
    let pump = async {
        started_signal.notified().await;
        let mut buf = vec![0u8; 16 * 1024];
        let mut input = stdin.as_mut();
        loop {
            tokio::select! {
                read = async {
                    match input.as_mut() {
                        Some(i) => i.read(&mut buf).await,
                        None => Ok(0),
                    }
                }, if input.is_some() => {
                    let n = read.ctx(|| "reading stdin")?;
                    write_frame(&mut to_agent, FrameKind::Stdin, &buf[..n])
                        .await
                        .map_err(lost)?;
                    if n == 0 {
                        input = None;
                    }
                }
                changed = async { window.as_mut()?.changed().await.ok() }, if window.is_some() => {
                    match changed {
                        Some(()) => {
                            let size = window.as_mut().map(|w| *w.borrow_and_update());
                            if let Some((rows, cols)) = size {
                                let payload = proto::resize_payload(rows, cols);
                                write_frame(&mut to_agent, FrameKind::Resize, &payload)
                                    .await
                                    .map_err(lost)?;
                            }
                        }
                        None => *window = None,
                    }
                }
                else => break,
            }
        }
        std::future::pending::<Result<Ended>>().await
    };
    let output = async {
        loop {
            let (kind, payload) = read_frame(&mut from_agent).await.map_err(lost)?;
            match kind {
                FrameKind::Stdout => forward(stdout, &payload, "stdout").await?,
                FrameKind::Stderr => forward(stderr, &payload, "stderr").await?,
                FrameKind::Stdin | FrameKind::Resize => {}
                FrameKind::Message => {
                    let event: Event =
                        serde_json::from_slice(&payload).map_err(|e| lost(ProtoError::Json(e)))?;
                    match event {
                        Event::Started => {
                            timings.command_started = started.elapsed();
                            started_signal.notify_one();
                        }
                        Event::Exit { code } => {
                            timings.command_done = started.elapsed();
                            return Ok(Ended::Exited(code));
                        }
                        Event::Error { message } => {
                            // Give the console a moment: the agent may still be printing.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            return Err(Error::Controller {
                                message,
                                console: console.to_path_buf(),
                                tail: crate::host::process::tail_of_file(console, 10),
                            });
                        }
                        other => tracing::debug!(?other, "ignored agent event"),
                    }
                }
            }
        }
    };
    tokio::select! {
        result = output => result,
        result = pump => result,
    }
}

/// Writes one chunk of the command's output and flushes it: output is live.
async fn forward(to: &mut (impl AsyncWrite + Unpin), bytes: &[u8], name: &str) -> Result<()> {
    to.write_all(bytes)
        .await
        .ctx(|| format!("writing the command's {name}"))?;
    to.flush()
        .await
        .ctx(|| format!("writing the command's {name}"))
}
