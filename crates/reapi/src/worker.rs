//! The bot: a Remote Workers API session with the farm, leases run through an
//! [`Executor`], results back through the lease.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::cas::{digest_of, key, Cas};
use crate::error::{chain, Error, LeaseError};
use crate::executor::{ActionJob, ActionOutcome, CancellationToken, Executor};
use crate::outputs::{collect_and_upload, OutputSpec};
use crate::proto::re::{Action, ActionResult, Command, Digest, ExecutedActionMetadata};
use crate::proto::rpc;
use crate::proto::rw::bots_client::BotsClient;
use crate::proto::rw::{
    worker, BotSession, BotStatus, CreateBotSessionRequest, Device, Lease, LeaseState,
    UpdateBotSessionRequest, Worker as WorkerDesc,
};
use crate::tree::{make_dirs_under, materialise, relative_path};

/// The platform property naming a guestbox base; BuildGrid routes on it when it is one
/// of its scheduler's `match-property-keys`.
pub const BASE_PROPERTY: &str = "guestbox-base";
/// The REAPI-standard platform property for the operating system family.
pub const OS_FAMILY_PROPERTY: &str = "OSFamily";
/// The worker config key with which BuildGrid learns how many leases a bot takes at once.
const CAPACITY_CONFIG: &str = "capacity";

const ANY_PREFIX: &str = "type.googleapis.com/";
const ACTION_TYPE: &str = "build.bazel.remote.execution.v2.Action";
const DIGEST_TYPE: &str = "build.bazel.remote.execution.v2.Digest";
const ACTION_RESULT_TYPE: &str = "build.bazel.remote.execution.v2.ActionResult";
const PRECONDITION_FAILURE_TYPE: &str = "google.rpc.PreconditionFailure";

/// The device properties a guestbox worker advertises: one [`BASE_PROPERTY`] per base
/// and the [`OS_FAMILY_PROPERTY`].
pub fn guestbox_properties<S: AsRef<str>>(bases: &[S], os_family: &str) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = bases
        .iter()
        .map(|b| (BASE_PROPERTY.to_string(), b.as_ref().to_string()))
        .collect();
    p.push((OS_FAMILY_PROPERTY.to_string(), os_family.to_string()));
    p
}

/// How the worker joins the farm and runs leases.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The server, as `grpc://HOST:PORT` (also `http://`). TLS is not supported.
    pub endpoint: String,
    /// The REAPI instance name (`""` by default).
    pub instance_name: String,
    /// This bot's id, unique in the farm (default: `HOSTNAME-PID`).
    pub bot_id: String,
    /// Properties of the primary device (`worker.devices[0].properties`), which the
    /// scheduler matches against actions' platform properties.
    pub properties: Vec<(String, String)>,
    /// Leases run at once (at least 1).
    pub max_concurrent: usize,
    /// Where input roots are laid out, one fresh directory per lease, removed after.
    pub work_dir: PathBuf,
    /// The deadline of each `UpdateBotSession` long-poll (and the heartbeat while full).
    pub poll_timeout: Duration,
    /// How long a drain waits for running leases before cancelling them and giving them
    /// back to the farm (`None`: as long as they take).
    pub drain_timeout: Option<Duration>,
    /// How long past an action's timeout the executor may take before the worker cancels it.
    pub timeout_grace: Duration,
    /// How long the server may stay out of reach before [`Worker::run`] gives up.
    pub reconnect_timeout: Duration,
    /// Blobs up to this size are read and written in batches (and a batch holds at most
    /// this much); larger ones go through ByteStream.
    pub batch_limit: u64,
}

impl WorkerConfig {
    /// Defaults for everything but the endpoint and the work directory.
    pub fn new(endpoint: impl Into<String>, work_dir: impl Into<PathBuf>) -> Self {
        WorkerConfig {
            endpoint: endpoint.into(),
            instance_name: String::new(),
            bot_id: default_bot_id(),
            properties: Vec::new(),
            max_concurrent: 1,
            work_dir: work_dir.into(),
            poll_timeout: Duration::from_secs(30),
            drain_timeout: None,
            timeout_grace: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(300),
            batch_limit: 1 << 20,
        }
    }
}

fn default_bot_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "guestbox".to_string());
    format!("{host}-{}", std::process::id())
}

/// Parses `grpc://HOST:PORT` (or `http://`) into a plain-text gRPC endpoint.
pub fn parse_endpoint(url: &str) -> Result<Endpoint, Error> {
    let bad = |reason: &str| Error::BadEndpoint {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("it has no scheme"))?;
    match scheme {
        "grpc" | "http" => {}
        "grpcs" | "https" => return Err(bad("TLS is not supported yet")),
        _ => return Err(bad("the scheme must be grpc://")),
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(bad("it must be just HOST:PORT after grpc://"));
    }
    let port = authority
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && !p.ends_with(']'))
        .ok_or_else(|| bad("it has no port"))?;
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    Endpoint::from_shared(format!("http://{authority}"))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(10))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| bad(&e.to_string()))
}

/// Counters of a worker, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    sessions_created: AtomicU64,
    leases_accepted: AtomicU64,
    leases_succeeded: AtomicU64,
    leases_failed: AtomicU64,
    leases_returned: AtomicU64,
    running: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Bot sessions created (1, plus one per session the server lost).
    pub sessions_created: u64,
    /// Leases taken on and started.
    pub leases_accepted: u64,
    /// Leases completed with status OK (whatever the command's exit code).
    pub leases_succeeded: u64,
    /// Leases completed with a non-OK status (infrastructure, inputs, timeout).
    pub leases_failed: u64,
    /// Leases given back unrun or cancelled (drain, full, cancelled by the server).
    pub leases_returned: u64,
    /// Leases running now.
    pub running: u64,
}

impl WorkerStats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            sessions_created: self.sessions_created.load(Ordering::SeqCst),
            leases_accepted: self.leases_accepted.load(Ordering::SeqCst),
            leases_succeeded: self.leases_succeeded.load(Ordering::SeqCst),
            leases_failed: self.leases_failed.load(Ordering::SeqCst),
            leases_returned: self.leases_returned.load(Ordering::SeqCst),
            running: self.running.load(Ordering::SeqCst),
        }
    }
}

/// A Remote Execution bot.
pub struct Worker<E: Executor> {
    config: WorkerConfig,
    endpoint: Endpoint,
    executor: Arc<E>,
    stats: Arc<WorkerStats>,
}

impl<E: Executor> Worker<E> {
    /// Checks the configuration; connects nothing yet.
    pub fn new(config: WorkerConfig, executor: Arc<E>) -> Result<Self, Error> {
        let endpoint = parse_endpoint(&config.endpoint)?;
        if config.max_concurrent == 0 {
            return Err(Error::BadConfig(
                "the number of concurrent jobs must be at least 1".into(),
            ));
        }
        if config.bot_id.is_empty() {
            return Err(Error::BadConfig("the bot id must not be empty".into()));
        }
        if config.poll_timeout < Duration::from_secs(5) {
            // BuildGrid hands out no leases to a long-poll shorter than ~4 s.
            return Err(Error::BadConfig(
                "the poll timeout must be at least 5 s".into(),
            ));
        }
        if config.batch_limit < 1024 {
            return Err(Error::BadConfig(
                "the batch limit must be at least 1 KiB".into(),
            ));
        }
        Ok(Worker {
            config,
            endpoint,
            executor,
            stats: Arc::new(WorkerStats::default()),
        })
    }

    /// The worker's counters (shared; they move while [`Worker::run`] runs).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Joins the farm and runs leases until `shutdown` fires, then drains: takes no new
    /// leases, finishes the running ones (or, past the drain timeout, cancels them and
    /// gives them back), reports them, and returns.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<StatsSnapshot, Error> {
        let c = &self.config;
        tokio::fs::create_dir_all(&c.work_dir)
            .await
            .map_err(|source| Error::WorkDir {
                path: c.work_dir.clone(),
                source,
            })?;
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|source| Error::Connect {
                url: c.endpoint.clone(),
                source,
            })?;
        let ctx = Arc::new(LeaseCtx {
            cas: Cas::new(channel.clone(), &c.instance_name, c.batch_limit),
            executor: self.executor.clone(),
            work_dir: c.work_dir.clone(),
            bot_id: c.bot_id.clone(),
            timeout_grace: c.timeout_grace,
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut bot = Bot {
            config: c,
            bots: BotsClient::new(channel),
            ctx,
            stats: self.stats.clone(),
            session: BotSession::default(),
            running: HashMap::new(),
            completed: Vec::new(),
            done_tx,
            done_rx,
            draining: false,
            told_terminating: false,
            drain_deadline: None,
            last_ok: Instant::now(),
        };
        let result = bot.run(&shutdown).await;
        if result.is_err() {
            bot.abandon().await;
        }
        result.map(|()| self.stats.snapshot())
    }
}

/// What a lease task needs.
struct LeaseCtx<E> {
    cas: Cas,
    executor: Arc<E>,
    work_dir: PathBuf,
    bot_id: String,
    timeout_grace: Duration,
}

struct Running {
    cancel: CancellationToken,
    /// The server no longer knows it: its outcome is not reported.
    dropped: bool,
}

enum Event {
    Done(String, Box<Lease>),
    Shutdown,
    DrainDeadline,
    Timer,
}

struct Bot<'a, E: Executor> {
    config: &'a WorkerConfig,
    bots: BotsClient<Channel>,
    ctx: Arc<LeaseCtx<E>>,
    stats: Arc<WorkerStats>,
    /// The server's last copy of the session (name, version, expiry).
    session: BotSession,
    running: HashMap<String, Running>,
    /// Completed leases not yet acknowledged by a successful UpdateBotSession.
    completed: Vec<Lease>,
    done_tx: mpsc::UnboundedSender<(String, Lease)>,
    done_rx: mpsc::UnboundedReceiver<(String, Lease)>,
    draining: bool,
    /// The server has acknowledged a session update with status BOT_TERMINATING: it
    /// assigns this bot no more leases. (Until then it may, and a bot that just left
    /// would hold them until its session expires.)
    told_terminating: bool,
    drain_deadline: Option<tokio::time::Instant>,
    last_ok: Instant,
}

fn is_transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::ResourceExhausted
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    )
}

fn with_deadline<T>(msg: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(d);
    r
}

impl<E: Executor> Bot<'_, E> {
    fn describe_worker(&self) -> WorkerDesc {
        WorkerDesc {
            devices: vec![Device {
                handle: self.config.bot_id.clone(),
                properties: self
                    .config
                    .properties
                    .iter()
                    .map(|(k, v)| crate::proto::rw::device::Property {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            }],
            configs: vec![worker::Config {
                key: CAPACITY_CONFIG.to_string(),
                value: self.config.max_concurrent.to_string(),
            }],
            properties: Vec::new(),
        }
    }

    fn status(&self) -> i32 {
        if self.draining {
            BotStatus::BotTerminating as i32
        } else {
            BotStatus::Ok as i32
        }
    }

    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        self.create_session(shutdown).await?;
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.drained() && self.told_terminating {
                tracing::info!(bot = %self.config.bot_id, "drained");
                return Ok(());
            }
            let sent_active: Vec<String> = self
                .running
                .iter()
                .filter(|(_, r)| !r.dropped)
                .map(|(id, _)| id.clone())
                .collect();
            let sent_completed = self.completed.len();
            let mut session = self.session.clone();
            session.status = self.status();
            let sent_terminating = session.status == BotStatus::BotTerminating as i32;
            session.worker = Some(self.describe_worker());
            session.leases = sent_active
                .iter()
                .map(|id| Lease {
                    id: id.clone(),
                    state: LeaseState::Active as i32,
                    ..Default::default()
                })
                .chain(self.completed.iter().cloned())
                .collect();
            let req = UpdateBotSessionRequest {
                name: session.name.clone(),
                bot_session: Some(session),
                update_mask: None,
            };
            let mut client = self.bots.clone();
            let timeout = self.config.poll_timeout;
            let call = async move { client.update_bot_session(with_deadline(req, timeout)).await };
            tokio::pin!(call);
            let started = Instant::now();
            let ev = tokio::select! {
                r = &mut call => Ok(r),
                ev = self.next_event(shutdown) => Err(ev),
            };
            match ev {
                // A local event drops the in-flight call and sends what changed at once.
                // The server keeps its state across a dropped call; completed leases stay
                // queued until a call that carried them succeeds.
                Err(ev) => self.on_event(ev),
                Ok(Ok(resp)) => {
                    backoff = Duration::from_millis(200);
                    self.last_ok = Instant::now();
                    let news = self.on_response(resp.into_inner(), &sent_active, sent_completed);
                    self.told_terminating |= sent_terminating;
                    if self.drained() && self.told_terminating {
                        continue;
                    }
                    self.pace(started, news, shutdown).await;
                }
                Ok(Err(status)) if self.drained() => {
                    // Only the goodbye is left to send: a server that does not take it
                    // expires the session by itself, so don't wait for it to come back.
                    tracing::warn!(
                        bot = %self.config.bot_id,
                        "could not tell the server that the bot is leaving ({:?}: {}); leaving anyway",
                        status.code(),
                        status.message()
                    );
                    return Ok(());
                }
                Ok(Err(status)) => {
                    if status.code() == tonic::Code::DeadlineExceeded
                        && started.elapsed() >= timeout
                    {
                        // The long-poll ran out on our side: just poll again.
                        continue;
                    }
                    if !is_transient(status.code()) {
                        tracing::warn!(
                            bot = %self.config.bot_id,
                            "the server rejected the bot session ({:?}: {}); starting a new one",
                            status.code(),
                            status.message()
                        );
                        self.lose_running();
                        self.create_session(shutdown).await?;
                        continue;
                    }
                    self.check_lost("Bots.UpdateBotSession", &status)?;
                    tracing::warn!(
                        bot = %self.config.bot_id,
                        "UpdateBotSession failed ({:?}: {}); retrying in {:?}",
                        status.code(),
                        status.message(),
                        backoff
                    );
                    self.wait(backoff, shutdown).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Draining, and nothing left to run or report.
    fn drained(&self) -> bool {
        self.draining && self.running.is_empty() && self.completed.is_empty()
    }

    fn check_lost(&self, rpc: &'static str, status: &tonic::Status) -> Result<(), Error> {
        let gone = self.last_ok.elapsed();
        if gone > self.config.reconnect_timeout {
            return Err(Error::Lost {
                url: self.config.endpoint.clone(),
                rpc,
                seconds: gone.as_secs(),
                source: status.clone(),
            });
        }
        Ok(())
    }

    async fn create_session(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut backoff = Duration::from_millis(200);
        self.last_ok = Instant::now();
        loop {
            let req = CreateBotSessionRequest {
                parent: self.config.instance_name.clone(),
                bot_session: Some(BotSession {
                    bot_id: self.config.bot_id.clone(),
                    status: self.status(),
                    worker: Some(self.describe_worker()),
                    // BuildGrid reads this field as its own lease-version counter (an
                    // integer), not as the bot's version: it stays empty.
                    ..Default::default()
                }),
            };
            let started = Instant::now();
            let r = self
                .bots
                .create_bot_session(with_deadline(req, self.config.poll_timeout))
                .await;
            match r {
                Ok(resp) => {
                    let s = resp.into_inner();
                    self.stats.sessions_created.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(bot = %self.config.bot_id, session = %s.name, url = %self.config.endpoint, "joined the farm");
                    self.last_ok = Instant::now();
                    self.on_response(s, &[], 0);
                    return Ok(());
                }
                Err(status)
                    if status.code() == tonic::Code::DeadlineExceeded
                        && started.elapsed() >= self.config.poll_timeout =>
                {
                    continue
                }
                Err(status) if is_transient(status.code()) => {
                    self.check_lost("Bots.CreateBotSession", &status)?;
                    tracing::warn!(
                        "CreateBotSession at {} failed ({:?}: {}); retrying in {:?}",
                        self.config.endpoint,
                        status.code(),
                        status.message(),
                        backoff
                    );
                    self.wait(backoff, shutdown).await;
                    if shutdown.is_cancelled() && self.running.is_empty() {
                        self.draining = true;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(status) => {
                    let hint = match status.code() {
                        tonic::Code::Unimplemented => {
                            "; the server does not serve the Remote Workers API (Bots) there"
                        }
                        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
                            "; check the instance name and that the server's instance has an execution or bots service"
                        }
                        tonic::Code::FailedPrecondition => {
                            "; check that the server's scheduler knows every property this worker advertises"
                        }
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                            "; the server wants credentials, which this worker does not send"
                        }
                        _ => "",
                    };
                    return Err(Error::Rpc {
                        url: self.config.endpoint.clone(),
                        rpc: "Bots.CreateBotSession",
                        hint,
                        source: status,
                    });
                }
            }
        }
    }

    /// The next local event (a lease finished, shutdown, drain deadline).
    async fn next_event(&mut self, shutdown: &CancellationToken) -> Event {
        let draining = self.draining;
        let deadline = self.drain_deadline;
        tokio::select! {
            Some((id, lease)) = self.done_rx.recv() => Event::Done(id, Box::new(lease)),
            _ = shutdown.cancelled(), if !draining => Event::Shutdown,
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => Event::DrainDeadline,
        }
    }

    /// Waits up to `d` for a local event (handled) or the time.
    async fn wait(&mut self, d: Duration, shutdown: &CancellationToken) {
        let ev = tokio::select! {
            ev = self.next_event(shutdown) => ev,
            _ = tokio::time::sleep(d) => Event::Timer,
        };
        self.on_event(ev);
    }

    /// After a response: the server long-polls only while the bot has room, so a full or
    /// draining bot waits for something to report (or a heartbeat) before calling again,
    /// and a quick empty answer is not repeated more than once a second.
    async fn pace(&mut self, started: Instant, news: bool, shutdown: &CancellationToken) {
        if news {
            return;
        }
        let full = self.running.len() >= self.config.max_concurrent;
        let d = if full || self.draining {
            self.heartbeat()
        } else {
            Duration::from_secs(1).saturating_sub(started.elapsed())
        };
        if !d.is_zero() && self.completed.is_empty() {
            self.wait(d, shutdown).await;
        }
    }

    /// How long the bot may stay silent: the poll timeout, or less if the session
    /// expires sooner.
    fn heartbeat(&self) -> Duration {
        let mut d = self.config.poll_timeout;
        if let Some(exp) = &self.session.expire_time {
            if let Ok(exp) = SystemTime::try_from(*exp) {
                if let Ok(left) = exp.duration_since(SystemTime::now()) {
                    d = d.min(left / 2);
                }
            }
        }
        d.max(Duration::from_secs(1))
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Done(id, lease) => {
                self.stats.running.fetch_sub(1, Ordering::SeqCst);
                let dropped = self.running.remove(&id).is_none_or(|r| r.dropped);
                let code = lease.status.as_ref().map_or(0, |s| s.code);
                if dropped {
                    self.stats.leases_returned.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(lease = %id, "lease ended after the server dropped it; not reported");
                    return;
                }
                if code == 0 {
                    self.stats.leases_succeeded.fetch_add(1, Ordering::SeqCst);
                } else if code == tonic::Code::Unavailable as i32 && self.draining {
                    self.stats.leases_returned.fetch_add(1, Ordering::SeqCst);
                } else {
                    self.stats.leases_failed.fetch_add(1, Ordering::SeqCst);
                }
                self.completed.push(*lease);
            }
            Event::Shutdown => {
                tracing::info!(
                    bot = %self.config.bot_id,
                    running = self.running.len(),
                    "shutting down: taking no new leases, finishing the running ones"
                );
                self.draining = true;
                self.drain_deadline = self
                    .config
                    .drain_timeout
                    .map(|d| tokio::time::Instant::now() + d);
            }
            Event::DrainDeadline => {
                tracing::warn!(
                    running = self.running.len(),
                    "drain timeout: cancelling the running leases and giving them back"
                );
                for r in self.running.values() {
                    r.cancel.cancel();
                }
                self.drain_deadline = None;
            }
            Event::Timer => {}
        }
    }

    /// Takes in the server's view. Returns whether it brought new work.
    fn on_response(
        &mut self,
        resp: BotSession,
        sent_active: &[String],
        sent_completed: usize,
    ) -> bool {
        self.completed
            .drain(..sent_completed.min(self.completed.len()));
        let ids: HashSet<&str> = resp.leases.iter().map(|l| l.id.as_str()).collect();
        for id in sent_active {
            if !ids.contains(id.as_str()) {
                if let Some(r) = self.running.get_mut(id) {
                    tracing::warn!(lease = %id, "the server dropped a running lease; cancelling it");
                    r.cancel.cancel();
                    r.dropped = true;
                }
            }
        }
        let mut news = false;
        let mut leases = resp.leases.clone();
        for lease in leases.drain(..) {
            let state = LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified);
            match state {
                LeaseState::Pending | LeaseState::Active => {
                    if self.running.contains_key(&lease.id)
                        || self.completed.iter().any(|c| c.id == lease.id)
                    {
                        continue;
                    }
                    news = true;
                    if self.draining {
                        self.give_back(lease.id, "the worker is shutting down");
                    } else if self.running.len() >= self.config.max_concurrent {
                        self.give_back(lease.id, "the worker has no room for another lease");
                    } else {
                        self.start(lease);
                    }
                }
                LeaseState::Cancelled => {
                    if let Some(r) = self.running.get_mut(&lease.id) {
                        tracing::info!(lease = %lease.id, "the server cancelled a running lease");
                        r.cancel.cancel();
                        r.dropped = true;
                    }
                }
                LeaseState::Completed | LeaseState::Unspecified => {}
            }
        }
        let mut s = resp;
        s.leases.clear();
        self.session = s;
        news
    }

    fn give_back(&mut self, id: String, why: &'static str) {
        tracing::info!(lease = %id, "giving a lease back: {why}");
        self.stats.leases_returned.fetch_add(1, Ordering::SeqCst);
        self.completed
            .push(completed_lease(id, &Err(LeaseError::Returned(why))));
    }

    fn start(&mut self, lease: Lease) {
        #[allow(deprecated)]
        let payload = lease.payload.or(lease.inline_assignment);
        let id = lease.id;
        let cancel = CancellationToken::new();
        self.running.insert(
            id.clone(),
            Running {
                cancel: cancel.clone(),
                dropped: false,
            },
        );
        self.stats.leases_accepted.fetch_add(1, Ordering::SeqCst);
        self.stats.running.fetch_add(1, Ordering::SeqCst);
        tracing::info!(lease = %id, "lease accepted");
        let ctx = self.ctx.clone();
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let task_id = id.clone();
            // An inner task, so that a panic becomes an INTERNAL lease status.
            let inner =
                tokio::spawn(async move { run_lease(&ctx, &task_id, payload, cancel).await });
            let outcome = match inner.await {
                Ok(o) => o,
                Err(e) => Err(LeaseError::Panic(e.to_string())),
            };
            if let Err(e) = &outcome {
                tracing::warn!(lease = %id, "lease failed: {}", chain(e));
            }
            let lease = completed_lease(id.clone(), &outcome);
            // The receiver lives as long as the bot loop; after it, nobody wants this.
            let _ = tx.send((id, lease));
        });
    }

    /// The session is gone: whatever runs will not be reported.
    fn lose_running(&mut self) {
        for r in self.running.values_mut() {
            r.cancel.cancel();
            r.dropped = true;
        }
        self.completed.clear();
    }

    /// The worker gives up: cancel the running leases and wait for them to end.
    async fn abandon(&mut self) {
        self.lose_running();
        while !self.running.is_empty() {
            match self.done_rx.recv().await {
                Some((id, _)) => {
                    self.running.remove(&id);
                    self.stats.running.fetch_sub(1, Ordering::SeqCst);
                }
                None => break,
            }
        }
    }
}

/// An ActionResult (with how it ended) or the reason there is none.
type LeaseOutcome = Result<(ActionResult, Option<String>), LeaseError>;

fn pack<M: Message>(type_name: &str, m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{ANY_PREFIX}{type_name}"),
        value: m.encode_to_vec(),
    }
}

fn completed_lease(id: String, outcome: &LeaseOutcome) -> Lease {
    let (status, result) = match outcome {
        Ok((result, None)) => (
            rpc::Status::default(),
            Some(pack(ACTION_RESULT_TYPE, result)),
        ),
        Ok((result, Some(deadline))) => (
            rpc::Status {
                code: tonic::Code::DeadlineExceeded as i32,
                message: deadline.clone(),
                details: Vec::new(),
            },
            Some(pack(ACTION_RESULT_TYPE, result)),
        ),
        Err(e) => {
            let mut details = Vec::new();
            if let LeaseError::MissingBlobs(blobs) = e {
                let pf = rpc::PreconditionFailure {
                    violations: blobs
                        .iter()
                        .map(|b| rpc::precondition_failure::Violation {
                            r#type: "MISSING".into(),
                            subject: format!("blobs/{b}"),
                            description: String::new(),
                        })
                        .collect(),
                };
                details.push(pack(PRECONDITION_FAILURE_TYPE, &pf));
            }
            (
                rpc::Status {
                    code: e.code() as i32,
                    message: chain(e),
                    details,
                },
                None,
            )
        }
    };
    Lease {
        id,
        state: LeaseState::Completed as i32,
        status: Some(status),
        result,
        ..Default::default()
    }
}

fn now_ts() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(SystemTime::now()))
}

/// `ab/c:d` -> `ab_c_d`: a lease id as a file name.
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

async fn run_lease<E: Executor>(
    ctx: &LeaseCtx<E>,
    lease_id: &str,
    payload: Option<prost_types::Any>,
    cancel: CancellationToken,
) -> LeaseOutcome {
    let job_dir = ctx.work_dir.join(format!(
        "{}-{}",
        file_safe(lease_id),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    tokio::fs::create_dir(&job_dir)
        .await
        .map_err(|e| LeaseError::io("cannot create job directory", &job_dir, e))?;
    let r = run_in(ctx, lease_id, payload, &cancel, &job_dir).await;
    remove_tree(&job_dir).await;
    r
}

async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    f: impl std::future::Future<Output = Result<T, LeaseError>>,
) -> Result<T, LeaseError> {
    tokio::select! {
        r = f => r,
        _ = cancel.cancelled() => Err(LeaseError::Returned("the lease was cancelled before it finished")),
    }
}

async fn run_in<E: Executor>(
    ctx: &LeaseCtx<E>,
    lease_id: &str,
    payload: Option<prost_types::Any>,
    cancel: &CancellationToken,
    job_dir: &Path,
) -> LeaseOutcome {
    let mut meta = ExecutedActionMetadata {
        worker: ctx.bot_id.clone(),
        worker_start_timestamp: now_ts(),
        input_fetch_start_timestamp: now_ts(),
        ..Default::default()
    };
    let (action, action_digest) =
        unless_cancelled(cancel, decode_payload(&ctx.cas, payload)).await?;
    let command_digest = action
        .command_digest
        .clone()
        .ok_or_else(|| LeaseError::Invalid("the action has no command digest".into()))?;
    let root_digest = action
        .input_root_digest
        .clone()
        .ok_or_else(|| LeaseError::Invalid("the action has no input root digest".into()))?;
    let command: Command =
        unless_cancelled(cancel, ctx.cas.read_message(&command_digest, "Command")).await?;

    let root = job_dir.join("root");
    tokio::fs::create_dir(&root)
        .await
        .map_err(|e| LeaseError::io("cannot create input root", &root, e))?;
    let stats = unless_cancelled(cancel, materialise(&ctx.cas, &root_digest, &root)).await?;
    let wd = relative_path(&command.working_directory, "working directory")?;
    make_dirs_under(&root, &wd).await?;
    let spec = OutputSpec::of(&command);
    for out in spec.all()? {
        if let Some(parent) = wd.join(&out).parent() {
            make_dirs_under(&root, parent).await?;
        }
    }
    meta.input_fetch_completed_timestamp = now_ts();
    tracing::info!(
        lease = %lease_id,
        action = %action_digest,
        files = stats.files,
        dirs = stats.directories,
        bytes = stats.bytes,
        "input root ready"
    );

    // Action.platform is REAPI v2.2; older clients (Bazel 4) set Command.platform.
    #[allow(deprecated)]
    let command_platform = command.platform.as_ref();
    let platform = action
        .platform
        .as_ref()
        .filter(|p| !p.properties.is_empty())
        .or(command_platform)
        .map(|p| {
            p.properties
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let timeout = action
        .timeout
        .as_ref()
        .and_then(|t| Duration::try_from(*t).ok())
        .filter(|t| !t.is_zero());
    let job = ActionJob {
        lease_id: lease_id.to_string(),
        action_digest: action_digest.clone(),
        input_root: root.clone(),
        working_directory: wd.to_string_lossy().into_owned(),
        arguments: command.arguments.clone(),
        environment: command
            .environment_variables
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        timeout,
        platform,
        stdout_path: job_dir.join("stdout"),
        stderr_path: job_dir.join("stderr"),
    };
    if job.arguments.is_empty() {
        return Err(LeaseError::Invalid("the command has no arguments".into()));
    }

    meta.execution_start_timestamp = now_ts();
    let exec_cancel = cancel.child_token();
    let fut = ctx.executor.execute(&job, exec_cancel.clone());
    tokio::pin!(fut);
    let backstop = timeout.map(|t| tokio::time::Instant::now() + t + ctx.timeout_grace);
    let mut overran = false;
    let outcome = loop {
        tokio::select! {
            r = &mut fut => break r,
            _ = async { if let Some(b) = backstop { tokio::time::sleep_until(b).await } }, if backstop.is_some() && !overran => {
                tracing::warn!(lease = %lease_id, "the command outlived its timeout by {:?}; cancelling it", ctx.timeout_grace);
                exec_cancel.cancel();
                overran = true;
            }
        }
    };
    meta.execution_completed_timestamp = now_ts();
    if cancel.is_cancelled() {
        return Err(LeaseError::Returned(
            "the lease was cancelled before it finished",
        ));
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(_) if overran => ActionOutcome {
            exit_code: -1,
            timed_out: true,
        },
        Err(e) => return Err(e.into()),
    };
    let timed_out = outcome.timed_out || overran;

    meta.output_upload_start_timestamp = now_ts();
    let mut result = ActionResult {
        exit_code: outcome.exit_code,
        ..Default::default()
    };
    unless_cancelled(
        cancel,
        collect_and_upload(
            &ctx.cas,
            &root,
            &wd,
            &spec,
            &job.stdout_path,
            &job.stderr_path,
            &mut result,
        ),
    )
    .await?;
    meta.output_upload_completed_timestamp = now_ts();
    meta.worker_completed_timestamp = now_ts();
    result.execution_metadata = Some(meta);
    tracing::info!(lease = %lease_id, exit_code = outcome.exit_code, timed_out, "lease done");
    let deadline = timed_out.then(|| {
        format!(
            "the action's timeout of {} s expired",
            timeout.map_or(0, |t| t.as_secs())
        )
    });
    Ok((result, deadline))
}

/// The Action of a lease, and its digest as `HASH/SIZE`. BuildGrid sends the Action
/// itself or, when it did not keep it, its Digest.
async fn decode_payload(
    cas: &Cas,
    payload: Option<prost_types::Any>,
) -> Result<(Action, String), LeaseError> {
    let payload =
        payload.ok_or_else(|| LeaseError::Invalid("the lease has no payload".to_string()))?;
    let type_name = payload
        .type_url
        .rsplit_once('/')
        .map_or(payload.type_url.as_str(), |(_, t)| t);
    match type_name {
        ACTION_TYPE => {
            let d = digest_of(&payload.value);
            let action =
                Action::decode(payload.value.as_slice()).map_err(|source| LeaseError::Decode {
                    digest: key(&d),
                    what: "Action",
                    source,
                })?;
            Ok((action, key(&d)))
        }
        DIGEST_TYPE => {
            let d =
                Digest::decode(payload.value.as_slice()).map_err(|source| LeaseError::Decode {
                    digest: "(lease payload)".into(),
                    what: "Digest",
                    source,
                })?;
            let action = cas.read_message(&d, "Action").await?;
            Ok((action, key(&d)))
        }
        other => Err(LeaseError::Invalid(format!(
            "the lease's payload is a {other:?}; this worker runs REAPI Actions (or their Digests)"
        ))),
    }
}

/// Removes a job directory, making read-only directories (a command may leave them)
/// writable first when a plain removal fails.
async fn remove_tree(dir: &Path) {
    if tokio::fs::remove_dir_all(dir).await.is_ok() {
        return;
    }
    let d = dir.to_path_buf();
    let r = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::PermissionsExt;
        fn open_up(p: &Path) {
            let Ok(m) = std::fs::symlink_metadata(p) else {
                return;
            };
            if m.is_dir() {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
                if let Ok(rd) = std::fs::read_dir(p) {
                    for e in rd.flatten() {
                        open_up(&e.path());
                    }
                }
            }
        }
        open_up(&d);
        std::fs::remove_dir_all(&d)
    })
    .await;
    if let Ok(Err(e)) | Err(e) = r.map_err(std::io::Error::other) {
        tracing::warn!(dir = %dir.display(), "cannot remove a job directory: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("grpc://127.0.0.1:50051")
                .map(|e| e.uri().to_string())
                .ok(),
            Some("http://127.0.0.1:50051/".to_string())
        );
        assert!(parse_endpoint("http://build.example:8980/").is_ok());
        assert!(parse_endpoint("grpc://[::1]:8980").is_ok());
        for (bad, why) in [
            ("127.0.0.1:50051", "no scheme"),
            ("grpcs://h:1", "TLS"),
            ("ftp://h:1", "scheme"),
            ("grpc://h", "no port"),
            ("grpc://[::1]", "no port"),
            ("grpc://h:99999", "port"),
            ("grpc://h:1/instance", "just HOST:PORT"),
            ("grpc://", "just HOST:PORT"),
        ] {
            let e = parse_endpoint(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn lease_statuses() {
        let l = completed_lease(
            "a".into(),
            &Err(LeaseError::MissingBlobs(vec!["h/3".into()])),
        );
        let s = l.status.expect("status");
        assert_eq!(s.code, tonic::Code::FailedPrecondition as i32);
        assert_eq!(s.details.len(), 1);
        assert_eq!(l.state, LeaseState::Completed as i32);
        assert!(l.result.is_none());
        let infra = crate::ExecutorError::unavailable("no guest");
        let l = completed_lease("b".into(), &Err(LeaseError::Executor(infra)));
        let s = l.status.expect("status");
        assert_eq!(
            (s.code, s.message.as_str()),
            (tonic::Code::Unavailable as i32, "no guest")
        );
        let ok = completed_lease(
            "c".into(),
            &Ok((
                ActionResult {
                    exit_code: 7,
                    ..Default::default()
                },
                None,
            )),
        );
        assert_eq!(ok.status.expect("status").code, 0);
        let any = ok.result.expect("result");
        assert!(any
            .type_url
            .ends_with("build.bazel.remote.execution.v2.ActionResult"));
        assert_eq!(
            ActionResult::decode(any.value.as_slice())
                .expect("decode")
                .exit_code,
            7
        );
        let late = completed_lease(
            "d".into(),
            &Ok((ActionResult::default(), Some("late".into()))),
        );
        assert_eq!(
            late.status.expect("status").code,
            tonic::Code::DeadlineExceeded as i32
        );
        assert!(late.result.is_some());
    }

    #[test]
    fn lease_ids_become_file_names() {
        assert_eq!(file_safe("a/b:c-9"), "a_b_c-9");
        assert_eq!(file_safe(&"x".repeat(100)).len(), 64);
    }
}
