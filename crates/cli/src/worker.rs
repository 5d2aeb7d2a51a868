//! `guestbox worker`: a Bazel Remote Execution bot (through `reapi::Worker`) whose actions
//! run in revived guests.
//!
//! Per action the worker library lays out the input root on the host; the
//! [`GuestboxExecutor`] revives the base the action names (platform property
//! `guestbox-base`), shares the input root read-write at [`GUEST_ROOT`], runs the command
//! there and discards the session. Anything that goes wrong with guestbox itself is an
//! infrastructure error of the lease, never the action's exit code.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use guestbox::host::Dirs;
use guestbox::run::{Command as JobCommand, Session, SessionOptions, Streams, Volume};
use guestbox::store::{Base, Store};
use guestbox::Error;
use reapi::{
    ActionJob, ActionOutcome, CancellationToken, Executor, ExecutorError, Worker, WorkerConfig,
    BASE_PROPERTY, OS_FAMILY_PROPERTY,
};
use tokio::io::AsyncWriteExt;

use crate::cli::WorkerArgs;

/// Where the guest sees the action's input root. Short and fixed: the action cache key
/// does not depend on it, and commands that print their working directory print the
/// same one on every worker.
pub const GUEST_ROOT: &str = "/b";

/// The exit status reported with `timed_out` (the lease then ends DEADLINE_EXCEEDED).
const TIMED_OUT_EXIT: i32 = 124;

/// Runs each action in a fresh revive of the base it names.
pub struct GuestboxExecutor {
    store: Store,
    /// The bases this worker holds, by id.
    bases: Vec<Base>,
    boot_timeout: Duration,
}

impl GuestboxExecutor {
    pub fn new(store: Store, bases: Vec<Base>) -> Self {
        GuestboxExecutor {
            store,
            bases,
            boot_timeout: Duration::from_secs(600),
        }
    }

    /// The base an action asks for, if this worker holds it.
    fn base_for(&self, job: &ActionJob) -> Result<&Base, ExecutorError> {
        let ids: Vec<&str> = self.bases.iter().map(|b| b.manifest.id.as_str()).collect();
        let i = choose_base(&ids, job.platform_value(BASE_PROPERTY))?;
        Ok(&self.bases[i])
    }

    async fn run(
        &self,
        base: &Base,
        job: &ActionJob,
        cancel: &CancellationToken,
    ) -> Result<ActionOutcome, ExecutorError> {
        let opts = SessionOptions {
            volumes: vec![Volume {
                host: job.input_root.clone(),
                guest: GUEST_ROOT.to_string(),
                readonly: false,
            }],
            xchg: None,
            cold: false,
            boot_timeout: self.boot_timeout,
            replay_snapshot_randomness: false,
            unconfined: false,
        };
        // A cancelled revive is dropped: what it started so far (QEMU, the run directory)
        // goes with it.
        let mut session = tokio::select! {
            s = Session::revive(&self.store, base, &opts) => s.map_err(|e| infra("reviving the base", e))?,
            _ = cancel.cancelled() => return Err(ExecutorError::unavailable("cancelled while the guest was reviving")),
        };
        let workdir = job.working_directory_under(Path::new(GUEST_ROOT));
        let command = JobCommand {
            argv: job.arguments.clone(),
            env: job.environment.clone(),
            workdir: Some(workdir.to_string_lossy().into_owned()),
            // The timeout is kept here, not in the session, so that a command that exits
            // 124 by itself is not taken for one that timed out.
            timeout: None,
            keep_snapshot_time: false,
            tty: None,
        };
        let result = exec(&mut session, &command, job, cancel).await;
        session.discard().await;
        result
    }
}

/// How one command in the session ended, as the worker library wants it.
async fn exec(
    session: &mut Session,
    command: &JobCommand,
    job: &ActionJob,
    cancel: &CancellationToken,
) -> Result<ActionOutcome, ExecutorError> {
    let mut stdout = create(&job.stdout_path).await?;
    let mut stderr = create(&job.stderr_path).await?;
    let ended = {
        let mut streams = Streams {
            stdin: None,
            stdout: &mut stdout,
            stderr: &mut stderr,
            window: None,
        };
        let timeout = async {
            match job.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        // Dropping the command's future leaves the guest running it; the session is
        // discarded right after, which kills both VMs.
        tokio::select! {
            r = session.exec(command, &mut streams) => Ended::Done(r),
            _ = timeout => Ended::TimedOut,
            _ = cancel.cancelled() => Ended::Cancelled,
        }
    };
    for (file, path) in [
        (&mut stdout, &job.stdout_path),
        (&mut stderr, &job.stderr_path),
    ] {
        file.flush().await.map_err(|e| {
            ExecutorError::internal(format!("cannot write {}", path.display())).with_source(e)
        })?;
    }
    match ended {
        Ended::Done(Ok(outcome)) => Ok(ActionOutcome {
            exit_code: outcome.exit_code,
            timed_out: false,
        }),
        Ended::Done(Err(e)) => Err(infra("running the command in the guest", e)),
        Ended::TimedOut => {
            let limit = job.timeout.unwrap_or_default().as_secs_f64();
            let _ = stderr
                .write_all(
                    format!("guestbox: the action did not finish within its timeout ({limit} s); stopped it\n")
                        .as_bytes(),
                )
                .await;
            let _ = stderr.flush().await;
            Ok(ActionOutcome {
                exit_code: TIMED_OUT_EXIT,
                timed_out: true,
            })
        }
        Ended::Cancelled => Err(ExecutorError::unavailable("cancelled")),
    }
}

enum Ended {
    Done(guestbox::Result<guestbox::run::Outcome>),
    TimedOut,
    Cancelled,
}

async fn create(path: &Path) -> Result<tokio::fs::File, ExecutorError> {
    tokio::fs::File::create(path).await.map_err(|e| {
        ExecutorError::internal(format!("cannot create {}", path.display())).with_source(e)
    })
}

impl Executor for GuestboxExecutor {
    async fn execute(
        &self,
        job: &ActionJob,
        cancel: CancellationToken,
    ) -> Result<ActionOutcome, ExecutorError> {
        let base = self.base_for(job)?;
        tracing::info!(lease = %job.lease_id, action = %job.action_digest, base = %base.manifest.id, "running in a revived guest");
        self.run(base, job, &cancel).await
    }
}

/// Which of the bases held (by id) an action's `guestbox-base` names.
pub fn choose_base(held: &[&str], wanted: Option<&str>) -> Result<usize, ExecutorError> {
    let ids = || held.join(", ");
    let Some(wanted) = wanted else {
        return Err(ExecutorError::failed_precondition(format!(
            "the action names no base: give it the platform property {BASE_PROPERTY}=<base id> \
             (Bazel: --remote_default_exec_properties={BASE_PROPERTY}=<id>); this worker holds {}",
            ids()
        )));
    };
    held.iter().position(|id| *id == wanted).ok_or_else(|| {
        ExecutorError::failed_precondition(format!(
            "this worker does not hold base {wanted:?} (it holds {}); the farm should route \
                 the action to a worker that advertises {BASE_PROPERTY}={wanted}",
            ids()
        ))
    })
}

/// A guestbox failure as the lease's status: the action never got a fair run.
fn infra(what: &str, e: Error) -> ExecutorError {
    let message = format!("guestbox worker: {what}: {e}");
    let err = match e {
        // Retrying on this worker cannot help: its bases, programs or settings are wrong.
        Error::Usage(_)
        | Error::MissingProgram { .. }
        | Error::DamagedBase { .. }
        | Error::Qemu { .. }
        | Error::Quote(_) => ExecutorError::failed_precondition(message),
        // A VM that did not revive or died: another try (here or elsewhere) may work.
        _ => ExecutorError::unavailable(message),
    };
    err.with_source(e)
}

/// The REAPI `OSFamily` of a base's guest profile.
pub fn os_family(profile: &str) -> &'static str {
    if profile.starts_with("windows") {
        "windows"
    } else {
        "linux"
    }
}

/// The platform properties the worker advertises for bases `(id, profile)`.
pub fn properties(bases: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = bases
        .iter()
        .map(|(id, _)| (BASE_PROPERTY.to_string(), id.to_string()))
        .collect();
    let families: BTreeSet<&str> = bases.iter().map(|(_, p)| os_family(p)).collect();
    props.extend(
        families
            .into_iter()
            .map(|f| (OS_FAMILY_PROPERTY.to_string(), f.to_string())),
    );
    props
}

/// `guestbox worker`: joins the farm, runs leases until SIGTERM or SIGINT, drains, exits 0.
pub async fn worker(args: WorkerArgs) -> guestbox::Result<i32> {
    let dirs = Dirs::from_env()?;
    let store = Store::new(&dirs);
    let mut bases: Vec<Base> = Vec::new();
    for what in &args.bases {
        let base = store.resolve(what)?;
        if !bases.iter().any(|b| b.manifest.id == base.manifest.id) {
            bases.push(base);
        }
    }
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| dirs.data.join("worker"));
    let mut config = WorkerConfig::new(args.reapi.clone(), work_dir);
    config.instance_name = args.instance.clone();
    if let Some(id) = &args.bot_id {
        config.bot_id = id.clone();
    }
    let advertised: Vec<(&str, &str)> = bases
        .iter()
        .map(|b| (b.manifest.id.as_str(), b.manifest.profile.as_str()))
        .collect();
    config.properties = properties(&advertised);
    config.max_concurrent = args.jobs;
    config.drain_timeout = args.drain_timeout;
    config.poll_timeout = args.poll_timeout;
    let executor = Arc::new(GuestboxExecutor::new(store, bases.clone()));
    let worker = match Worker::new(config.clone(), executor) {
        Ok(w) => w,
        Err(e) => return Err(Error::Usage(format!("guestbox worker: {}", chain(&e)))),
    };
    for b in &bases {
        eprintln!(
            "guestbox worker: advertising {BASE_PROPERTY}={} ({})",
            b.manifest.id,
            if b.names.is_empty() {
                "unnamed".to_string()
            } else {
                b.names.join(", ")
            }
        );
    }
    eprintln!(
        "guestbox worker: bot {} joining {} (instance {:?}), up to {} action(s) at once",
        config.bot_id, config.endpoint, config.instance_name, config.max_concurrent
    );
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(drain_on_signal(shutdown.clone()));
    let result = tokio::select! {
        r = worker.run(shutdown.clone()) => Some(r),
        // A second signal: stop now. Returning drops the leases' sessions (both VMs of
        // each are killed) when the runtime shuts down.
        _ = second_signal(&shutdown) => None,
    };
    signals.abort();
    match result {
        Some(Ok(stats)) => {
            eprintln!(
                "guestbox worker: drained: {} action(s) run, {} succeeded, {} failed, {} given back",
                stats.leases_accepted,
                stats.leases_succeeded,
                stats.leases_failed,
                stats.leases_returned
            );
            Ok(0)
        }
        Some(Err(e)) => {
            eprintln!("guestbox worker: error: {}", chain(&e));
            Ok(match e {
                reapi::Error::BadEndpoint { .. } | reapi::Error::BadConfig(_) => 2,
                _ => 125,
            })
        }
        None => {
            eprintln!("guestbox worker: second signal: stopping the running actions now");
            Ok(130)
        }
    }
}

/// Fires `shutdown` on the first SIGTERM or SIGINT.
async fn drain_on_signal(shutdown: CancellationToken) {
    if let Some(name) = next_signal().await {
        eprintln!("guestbox worker: {name}: draining (no new actions; running ones finish)");
        shutdown.cancel();
    }
}

/// Completes on a signal that comes after `shutdown` fired.
async fn second_signal(shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    // The first signal was consumed by drain_on_signal; listen for the next.
    if next_signal().await.is_none() {
        std::future::pending::<()>().await;
    }
}

async fn next_signal() -> Option<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return None;
    };
    tokio::select! {
        _ = int.recv() => Some("interrupted"),
        _ = term.recv() => Some("terminated"),
    }
}

/// An error and its sources, one message.
pub fn chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_for_a_base_not_held_is_a_failed_precondition() {
        let held = ["aaa", "bbb"];
        assert_eq!(choose_base(&held, Some("bbb")).unwrap(), 1);
        let e = choose_base(&held, Some("ccc")).unwrap_err();
        assert_eq!(e.code(), reapi::InfraCode::FailedPrecondition);
        assert!(e.to_string().contains("\"ccc\""), "{e}");
        assert!(e.to_string().contains("aaa, bbb"), "{e}");
        let e = choose_base(&held, None).unwrap_err();
        assert_eq!(e.code(), reapi::InfraCode::FailedPrecondition);
        assert!(e.to_string().contains("guestbox-base="), "{e}");
    }

    #[test]
    fn properties_name_every_base_by_id_and_each_os_family_once() {
        let held = [("aaa", "debian"), ("bbb", "debian"), ("ccc", "windows-xp")];
        assert_eq!(
            properties(&held),
            [
                ("guestbox-base".to_string(), "aaa".to_string()),
                ("guestbox-base".to_string(), "bbb".to_string()),
                ("guestbox-base".to_string(), "ccc".to_string()),
                ("OSFamily".to_string(), "linux".to_string()),
                ("OSFamily".to_string(), "windows".to_string()),
            ]
        );
    }

    #[test]
    fn guestbox_failures_map_to_infrastructure_codes() {
        let e = infra("reviving", Error::Usage("bad".into()));
        assert_eq!(e.code(), reapi::InfraCode::FailedPrecondition);
        let e = infra(
            "reviving",
            Error::VmDied {
                vm: "guest".into(),
                status: "killed".into(),
                stderr: String::new(),
                tail: String::new(),
            },
        );
        assert_eq!(e.code(), reapi::InfraCode::Unavailable);
        assert!(e.to_string().contains("the guest VM stopped"), "{e}");
    }
}
