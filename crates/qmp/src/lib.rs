//! A small async client for QEMU's machine protocol (QMP).
//!
//! One [`Qmp`] owns one connection to a QMP unix socket. A background task
//! reads every message: command replies are routed to their caller by `id`,
//! events go to a [`tokio::sync::broadcast`] channel. Commands take `&self`,
//! so several can be in flight at once (share the client with an `Arc`).
//!
//! # Not missing events
//! A broadcast receiver only sees events sent after it was created. To wait
//! for the event a command causes, subscribe *before* sending the command:
//!
//! ```no_run
//! # async fn f(qmp: &qmp::Qmp) -> Result<(), qmp::QmpError> {
//! use std::time::Duration;
//! let mut events = qmp.events();
//! qmp.stop().await?;
//! qmp::wait_event_on(&mut events, "STOP", Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! Events that arrived before anyone subscribed (e.g. right after
//! [`Qmp::connect`]) are kept in a small buffer: [`Qmp::recent_events`].
//!
//! Requires a tokio runtime; Linux only (SCM_RIGHTS fd passing).

mod error;
mod fdpass;
mod types;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use error::QmpError;
pub use types::{Event, MigrationInfo, MigrationRam};

/// Result alias for this crate.
pub type Result<T, E = QmpError> = std::result::Result<T, E>;

/// Default per-command timeout; change it with [`Qmp::set_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many events the broadcast channel holds for a slow receiver.
const EVENT_CHANNEL_CAPACITY: usize = 256;
/// How many past events [`Qmp::recent_events`] keeps.
const RECENT_EVENTS: usize = 64;

/// A connected QMP client. Dropping it closes the connection.
pub struct Qmp {
    shared: Arc<Shared>,
    writer: mpsc::UnboundedSender<WriteRequest>,
    reader_task: JoinHandle<()>,
    version: (u32, u32, u32),
    timeout: Duration,
    /// QEMU keeps only the fds of the latest message that carried any, so two
    /// `getfd`s must not overlap.
    fd_lock: tokio::sync::Mutex<()>,
}

struct Shared {
    next_id: AtomicU64,
    state: Mutex<State>,
    closed: watch::Sender<bool>,
}

struct State {
    pending: HashMap<u64, oneshot::Sender<Result<Value>>>,
    /// `None` once the connection is closed: dropping the sender tells receivers.
    events: Option<broadcast::Sender<Event>>,
    recent: VecDeque<Event>,
    /// Why the connection closed, if it has.
    closed: Option<CloseReason>,
}

#[derive(Clone)]
enum CloseReason {
    Disconnected,
    Protocol(String),
}

impl CloseReason {
    fn to_error(&self) -> QmpError {
        match self {
            CloseReason::Disconnected => QmpError::Disconnected,
            CloseReason::Protocol(m) => QmpError::Protocol(m.clone()),
        }
    }
}

struct WriteRequest {
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
    done: oneshot::Sender<io::Result<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Poisoning only means another thread panicked mid-update; the map is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, id: u64) -> Result<oneshot::Receiver<Result<Value>>> {
        let mut st = self.lock();
        if let Some(reason) = &st.closed {
            return Err(reason.to_error());
        }
        let (tx, rx) = oneshot::channel();
        st.pending.insert(id, tx);
        Ok(rx)
    }

    fn close(&self, reason: CloseReason) {
        let pending = {
            let mut st = self.lock();
            if st.closed.is_none() {
                st.closed = Some(reason.clone());
            }
            st.events = None;
            std::mem::take(&mut st.pending)
        };
        for (_, tx) in pending {
            let _ = tx.send(Err(reason.to_error()));
        }
        self.closed.send_replace(true);
    }

    /// Routes one message from QEMU. An `Err` means the stream can't be trusted any more.
    fn dispatch(&self, msg: Value) -> std::result::Result<(), CloseReason> {
        let Value::Object(mut msg) = msg else {
            return Err(CloseReason::Protocol(format!("not a JSON object: {msg}")));
        };
        if msg.contains_key("event") {
            let ev = Event::from_json(msg).map_err(|e| CloseReason::Protocol(e.to_string()))?;
            debug!(event = %ev.name, data = %ev.data, "QMP event");
            let mut st = self.lock();
            if st.recent.len() == RECENT_EVENTS {
                st.recent.pop_front();
            }
            st.recent.push_back(ev.clone());
            if let Some(tx) = &st.events {
                // An error only means nobody is subscribed right now.
                let _ = tx.send(ev);
            }
            return Ok(());
        }
        let reply = if let Some(ret) = msg.remove("return") {
            Ok(ret)
        } else if let Some(err) = msg.remove("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
            match (field("class"), field("desc")) {
                (Some(class), Some(desc)) => Err(QmpError::Qmp { class, desc }),
                _ => {
                    return Err(CloseReason::Protocol(format!(
                        "malformed error reply: {err}"
                    )))
                }
            }
        } else if msg.contains_key("QMP") {
            warn!("ignoring a second QMP greeting");
            return Ok(());
        } else {
            return Err(CloseReason::Protocol(format!(
                "message is neither reply nor event: {}",
                Value::Object(msg)
            )));
        };
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            // QEMU answers without `id` only when it could not parse the request at all.
            warn!(reply = ?reply, "QMP reply without id; cannot route it");
            return Ok(());
        };
        let tx = self.lock().pending.remove(&id);
        match tx {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => debug!(id, "QMP reply for a command nobody waits for (timed out?)"),
        }
        Ok(())
    }
}

/// Removes a pending entry if the caller gives up (timeout or dropped future).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

impl Qmp {
    /// Connects to QEMU's QMP socket at `path`, reads the greeting and
    /// negotiates capabilities, all within `timeout`.
    ///
    /// QEMU creates the socket some time after it starts, so a missing or
    /// not-yet-listening socket is retried until `timeout`. If QEMU may die
    /// before creating it, race this against the process exiting.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = connect_retry(path, deadline).await?;
        let (read, write) = stream.into_split();
        let mut read = BufReader::new(read);

        let mut line = Vec::new();
        match tokio::time::timeout_at(deadline, read.read_until(b'\n', &mut line)).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    command: "QMP greeting".into(),
                })
            }
            Ok(Err(e)) => return Err(QmpError::from_io(e)),
            Ok(Ok(0)) => return Err(QmpError::Disconnected),
            Ok(Ok(_)) => {}
        }
        let version = parse_greeting(&line)?;
        debug!(socket = %path.display(), ?version, "QMP connected");

        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            state: Mutex::new(State {
                pending: HashMap::new(),
                events: Some(broadcast::channel(EVENT_CHANNEL_CAPACITY).0),
                recent: VecDeque::new(),
                closed: None,
            }),
            closed,
        });
        let (writer, write_rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_loop(write, write_rx, shared.clone()));
        let reader_task = tokio::spawn(reader_loop(read, shared.clone()));
        let qmp = Qmp {
            shared,
            writer,
            reader_task,
            version,
            timeout: DEFAULT_TIMEOUT,
            fd_lock: tokio::sync::Mutex::new(()),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        qmp.execute_with_timeout("qmp_capabilities", Value::Null, left)
            .await?;
        Ok(qmp)
    }

    /// QEMU's version from the greeting: (major, minor, micro).
    pub fn version(&self) -> (u32, u32, u32) {
        self.version
    }

    /// The timeout [`Qmp::execute`] and the typed helpers use.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the timeout [`Qmp::execute`] and the typed helpers use.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// True once the connection is gone; every call then fails at once.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Resolves when the connection closes (e.g. QEMU exited after `quit`).
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        // An Err means the sender is gone, which also means closed.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Runs a QMP command with the client's default timeout and returns its
    /// `return` value. `arguments` may be `Value::Null` for none.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value> {
        self.execute_inner(command, arguments, None, self.timeout)
            .await
    }

    /// Like [`Qmp::execute`] with an explicit timeout. On timeout the command
    /// may still run in QEMU; its late reply is discarded.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value> {
        self.execute_inner(command, arguments, None, timeout).await
    }

    async fn execute_inner(
        &self,
        command: &str,
        arguments: Value,
        fd: Option<OwnedFd>,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = Map::new();
        msg.insert("execute".into(), Value::from(command));
        if !arguments.is_null() {
            msg.insert("arguments".into(), arguments);
        }
        msg.insert("id".into(), Value::from(id));
        let mut bytes = serde_json::to_vec(&msg)
            .map_err(|e| QmpError::Protocol(format!("cannot encode `{command}`: {e}")))?;
        bytes.push(b'\n');

        let reply = self.shared.register(id)?;
        let _guard = PendingGuard {
            shared: &self.shared,
            id,
        };
        // Only the name: arguments may hold secrets.
        debug!(command, id, with_fd = fd.is_some(), "QMP execute");
        let exchange = async {
            let (done, written) = oneshot::channel();
            self.writer
                .send(WriteRequest { bytes, fd, done })
                .map_err(|_| QmpError::Disconnected)?;
            match written.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(QmpError::from_io(e)),
                Err(_) => return Err(QmpError::Disconnected),
            }
            reply.await.unwrap_or(Err(QmpError::Disconnected))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => {
                if let Err(e) = &result {
                    debug!(command, id, error = %e, "QMP command failed");
                }
                result
            }
            Err(_) => Err(QmpError::Timeout {
                command: command.to_owned(),
            }),
        }
    }

    /// A receiver for every event from now on. Subscribe *before* sending the
    /// command whose event you want. After a disconnect the receiver reports
    /// `Closed`.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        match &self.shared.lock().events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// The last few events (up to 64) received since connecting, oldest first.
    pub fn recent_events(&self) -> Vec<Event> {
        self.shared.lock().recent.iter().cloned().collect()
    }

    /// Waits for the next event called `name` that arrives *after* this call.
    /// To catch an event caused by a command, use [`Qmp::events`] before the
    /// command and [`wait_event_on`] after it.
    pub async fn wait_event(&self, name: &str, timeout: Duration) -> Result<Event> {
        let mut rx = self.events();
        wait_event_on(&mut rx, name, timeout).await
    }

    /// Passes `fd` to QEMU under `fdname` (QMP `getfd`, fd attached with
    /// SCM_RIGHTS), e.g. for a `fd:NAME` migration URI. QEMU gets its own
    /// copy; the caller keeps `fd`.
    pub async fn send_fd(&self, fdname: &str, fd: BorrowedFd<'_>) -> Result<()> {
        // A duplicate, so the writer task can own it regardless of the caller's lifetime.
        let owned = fd.try_clone_to_owned()?;
        let _serial = self.fd_lock.lock().await;
        self.execute_inner(
            "getfd",
            json!({ "fdname": fdname }),
            Some(owned),
            self.timeout,
        )
        .await
        .map(drop)
    }

    /// Closes an fd previously passed with [`Qmp::send_fd`] and not consumed.
    pub async fn close_fd(&self, fdname: &str) -> Result<()> {
        self.execute("closefd", json!({ "fdname": fdname }))
            .await
            .map(drop)
    }

    /// Pauses the guest's CPUs (`stop`).
    pub async fn stop(&self) -> Result<()> {
        self.execute("stop", Value::Null).await.map(drop)
    }

    /// Resumes the guest's CPUs (`cont`).
    pub async fn cont(&self) -> Result<()> {
        self.execute("cont", Value::Null).await.map(drop)
    }

    /// Asks QEMU to exit (`quit`). The connection closing before or instead of
    /// the reply counts as success. Use [`Qmp::closed`] to wait for the close.
    pub async fn quit(&self) -> Result<()> {
        match self.execute("quit", Value::Null).await {
            Ok(_) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Presses the virtual power button (ACPI; the guest decides what to do).
    pub async fn system_powerdown(&self) -> Result<()> {
        self.execute("system_powerdown", Value::Null)
            .await
            .map(drop)
    }

    /// The run state: `running`, `paused`, `prelaunch`, `inmigrate`, `postmigrate`, ...
    pub async fn query_status(&self) -> Result<String> {
        let v = self.execute("query-status", Value::Null).await?;
        match v.get("status").and_then(Value::as_str) {
            Some(s) => Ok(s.to_owned()),
            None => Err(QmpError::Protocol(format!(
                "query-status answer has no status: {v}"
            ))),
        }
    }

    /// Sets migration capabilities, e.g. `[("x-ignore-shared", true)]`.
    pub async fn migrate_set_capabilities(&self, caps: &[(&str, bool)]) -> Result<()> {
        let caps: Vec<Value> = caps
            .iter()
            .map(|(name, state)| json!({ "capability": name, "state": state }))
            .collect();
        self.execute("migrate-set-capabilities", json!({ "capabilities": caps }))
            .await
            .map(drop)
    }

    /// Starts an outgoing migration to `uri` (e.g. `fd:NAME`, `exec:CMD`);
    /// returns once it started. Follow with [`Qmp::wait_migration`].
    pub async fn migrate(&self, uri: &str) -> Result<()> {
        self.execute("migrate", json!({ "uri": uri }))
            .await
            .map(drop)
    }

    /// Starts an incoming migration from `uri` (QEMU needs `-incoming defer`).
    pub async fn migrate_incoming(&self, uri: &str) -> Result<()> {
        self.execute("migrate-incoming", json!({ "uri": uri }))
            .await
            .map(drop)
    }

    /// The current migration state (`query-migrate`).
    pub async fn query_migrate(&self) -> Result<MigrationInfo> {
        MigrationInfo::from_value(self.execute("query-migrate", Value::Null).await?)
    }

    /// Polls `query-migrate` until the migration completes (either side).
    /// `failed` or `cancelled` gives [`QmpError::MigrationFailed`].
    pub async fn wait_migration(&self, timeout: Duration) -> Result<MigrationInfo> {
        let deadline = Instant::now() + timeout;
        // Short first polls: a small device-state-only migration takes milliseconds.
        let mut pause = Duration::from_millis(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let info = MigrationInfo::from_value(
                self.execute_with_timeout("query-migrate", Value::Null, left.min(self.timeout))
                    .await?,
            )?;
            match info.status.as_str() {
                "completed" => return Ok(info),
                "failed" => {
                    return Err(QmpError::MigrationFailed {
                        desc: info
                            .error_desc
                            .unwrap_or_else(|| "QEMU gave no reason".into()),
                    })
                }
                "cancelled" => {
                    return Err(QmpError::MigrationFailed {
                        desc: "the migration was cancelled".into(),
                    })
                }
                _ => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout {
                    command: format!("migration to complete; last status `{}`", info.status),
                });
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        // The writer task ends with its channel; the reader must be stopped explicitly.
        self.reader_task.abort();
    }
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.version)
            .field("timeout", &self.timeout)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Waits on a receiver from [`Qmp::events`] for the next event called `name`,
/// skipping others. Gives [`QmpError::Disconnected`] if the connection closes.
pub async fn wait_event_on(
    rx: &mut broadcast::Receiver<Event>,
    name: &str,
    timeout: Duration,
) -> Result<Event> {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.name == name => return Ok(ev),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(
                        skipped = n,
                        "QMP event receiver lagged; events were dropped"
                    )
                }
                Err(broadcast::error::RecvError::Closed) => return Err(QmpError::Disconnected),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| {
            Err(QmpError::Timeout {
                command: format!("event {name}"),
            })
        })
}

async fn connect_retry(path: &Path, deadline: Instant) -> Result<UnixStream> {
    let mut pause = Duration::from_millis(5);
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            // Not created yet, or created but not listening yet.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(QmpError::Timeout {
                        command: format!("connect to {}: {e}", path.display()),
                    });
                }
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(QmpError::Io(e)),
        }
    }
}

fn parse_greeting(line: &[u8]) -> Result<(u32, u32, u32)> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| QmpError::Protocol(format!("greeting is not JSON: {e}")))?;
    let q = v
        .get("QMP")
        .and_then(|q| q.get("version"))
        .and_then(|v| v.get("qemu"))
        .ok_or_else(|| QmpError::Protocol(format!("not a QMP greeting: {v}")))?;
    let part = |k: &str| {
        q.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| QmpError::Protocol(format!("greeting lacks version.qemu.{k}: {v}")))
    };
    Ok((part("major")?, part("minor")?, part("micro")?))
}

async fn reader_loop(mut read: BufReader<OwnedReadHalf>, shared: Arc<Shared>) {
    let mut line = Vec::new();
    let reason = loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) => break CloseReason::Disconnected,
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "QMP read failed");
                break CloseReason::Disconnected;
            }
        }
        if line.last() != Some(&b'\n') {
            // EOF in the middle of a message: QEMU died while writing.
            break CloseReason::Disconnected;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let msg = match serde_json::from_slice::<Value>(&line) {
            Ok(m) => m,
            Err(e) => break CloseReason::Protocol(format!("invalid JSON: {e}")),
        };
        if let Err(reason) = shared.dispatch(msg) {
            break reason;
        }
    };
    match &reason {
        CloseReason::Disconnected => debug!("QMP connection closed"),
        CloseReason::Protocol(m) => warn!(error = %m, "closing QMP connection"),
    }
    shared.close(reason);
}

async fn writer_loop(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<WriteRequest>,
    shared: Arc<Shared>,
) {
    // A separate task, so a caller that times out or is dropped mid-write
    // can't leave half a message on the wire.
    while let Some(req) = rx.recv().await {
        let result = write_one(&mut write, &req.bytes, req.fd.as_ref()).await;
        let failed = result.is_err();
        let _ = req.done.send(result);
        if failed {
            // The stream may now hold a partial message; nothing more can be
            // sent safely, so fail everyone now rather than at their timeouts.
            shared.close(CloseReason::Disconnected);
            break;
        }
    }
}

async fn write_one(
    write: &mut OwnedWriteHalf,
    bytes: &[u8],
    fd: Option<&OwnedFd>,
) -> io::Result<()> {
    let mut sent = 0;
    if let Some(fd) = fd {
        use std::os::fd::AsFd;
        sent = fdpass::send_with_fd(write.as_ref(), bytes, fd.as_fd()).await?;
    }
    write.write_all(&bytes[sent..]).await?;
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_parses() {
        let g = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#;
        assert_eq!(parse_greeting(g).unwrap(), (7, 2, 22));
        assert!(matches!(parse_greeting(b"{}"), Err(QmpError::Protocol(_))));
        assert!(matches!(
            parse_greeting(b"hello"),
            Err(QmpError::Protocol(_))
        ));
    }
}
