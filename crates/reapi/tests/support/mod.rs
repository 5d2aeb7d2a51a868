//! Test support: a private BuildGrid farm, a shared Bazel, a host executor double and
//! workers running it.
#![allow(dead_code, unused_imports)]

pub mod bazel;
pub mod double;
pub mod farm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reapi::{CancellationToken, StatsSnapshot, Worker, WorkerConfig, WorkerStats};

pub use bazel::bazel;
pub use double::{Behaviour, HostExecutorDouble};
pub use farm::farm;

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos % 1_000_000_000
    )
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("reapi=info")),
        )
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// A worker running in the background of the test's runtime.
pub struct RunningWorker {
    pub stats: Arc<WorkerStats>,
    pub shutdown: CancellationToken,
    pub executor: Arc<HostExecutorDouble>,
    pub handle: Option<tokio::task::JoinHandle<Result<StatsSnapshot, reapi::Error>>>,
    _work_dir: tempfile::TempDir,
}

impl RunningWorker {
    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Waits until the worker's CreateBotSession returned (BuildGrid holds it open for
    /// most of the poll timeout when it has no work for the bot).
    pub async fn wait_joined(&mut self) {
        let start = Instant::now();
        while self.stats.snapshot().sessions_created == 0 {
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                let r = self.handle.take().expect("present").await;
                panic!("the worker ended before joining the farm: {r:?}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the worker did not join the farm in 90 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fires the shutdown token and waits for `run` to return.
    pub async fn stop(mut self) -> Result<StatsSnapshot, reapi::Error> {
        self.shutdown.cancel();
        let h = self.handle.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("the worker drained within 60 s")
            .expect("the worker task did not panic")
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

pub fn config(url: &str, bases: &[&str], work_dir: &std::path::Path) -> WorkerConfig {
    let mut c = WorkerConfig::new(url, work_dir);
    c.bot_id = unique("bot");
    c.properties = reapi::guestbox_properties(bases, "Linux");
    c.max_concurrent = 2;
    c.poll_timeout = Duration::from_secs(20);
    c
}

/// Starts a worker with `executor` (it joins the farm in the background).
pub async fn start_worker(mut config: WorkerConfig, executor: HostExecutorDouble) -> RunningWorker {
    let work_dir = tempfile::tempdir().expect("worker tempdir");
    config.work_dir = work_dir.path().join("work");
    let executor = Arc::new(executor);
    let worker = Worker::new(config, executor.clone()).expect("valid worker config");
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move { worker.run(token).await });
    RunningWorker {
        stats,
        shutdown,
        executor,
        handle: Some(handle),
        _work_dir: work_dir,
    }
}

/// Runs a blocking closure (Bazel) off the runtime's threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}
