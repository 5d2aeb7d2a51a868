//! guestbox as a Bazel Remote Execution worker.
//!
//! A [`Worker`] joins a Remote Execution farm as a bot through the Remote Workers API
//! (`google.devtools.remoteworkers.v1test2.Bots`): it advertises platform properties in
//! `worker.devices[0].properties`, takes leases (an `Action` or the `Digest` of one),
//! lays out each action's input root from the CAS in a fresh directory, hands it to an
//! [`Executor`], uploads the outputs (files, directories as `Tree`s, stdout, stderr) and
//! completes the lease with an `ActionResult`. The server (e.g. BuildGrid) writes the
//! action cache. An executor's own failure completes the lease with a non-OK status,
//! never as the action's exit code; an expired action timeout with `DEADLINE_EXCEEDED`.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use reapi::*;
//! # struct MyExecutor;
//! # impl Executor for MyExecutor {
//! #     async fn execute(&self, _: &ActionJob, _: CancellationToken) -> Result<ActionOutcome, ExecutorError> {
//! #         Ok(ActionOutcome { exit_code: 0, timed_out: false })
//! #     }
//! # }
//! # async fn f() -> Result<(), Error> {
//! let mut config = WorkerConfig::new("grpc://127.0.0.1:50051", "/var/tmp/guestbox-worker");
//! config.properties = guestbox_properties(&["debian-12"], "Linux");
//! config.max_concurrent = 2;
//! let worker = Worker::new(config, Arc::new(MyExecutor))?;
//! let shutdown = CancellationToken::new(); // cancel it on SIGTERM
//! let stats = worker.run(shutdown).await?;
//! # Ok(()) }
//! ```

mod cas;
mod error;
mod executor;
mod outputs;
pub mod proto;
mod tree;
mod worker;

pub use error::Error;
pub use executor::{
    ActionJob, ActionOutcome, CancellationToken, Executor, ExecutorError, InfraCode,
};
pub use worker::{
    guestbox_properties, parse_endpoint, StatsSnapshot, Worker, WorkerConfig, WorkerStats,
    BASE_PROPERTY, OS_FAMILY_PROPERTY,
};
