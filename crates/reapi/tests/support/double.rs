//! A test double of the guestbox executor: runs the command on the host, in the
//! materialised input root, instead of in a revived guest.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};

use reapi::{ActionJob, ActionOutcome, CancellationToken, Executor, ExecutorError};
use tokio::sync::watch;

/// What the double does with each action.
#[derive(Clone)]
pub enum Behaviour {
    /// Run the command on the host.
    Run,
    /// Fail as the executor's infrastructure would (e.g. a guest that does not revive).
    InfraFailure(String),
}

pub struct HostExecutorDouble {
    behaviour: Behaviour,
    started: watch::Sender<usize>,
    calls: AtomicUsize,
}

impl HostExecutorDouble {
    pub fn new(behaviour: Behaviour) -> Self {
        HostExecutorDouble {
            behaviour,
            started: watch::channel(0).0,
            calls: AtomicUsize::new(0),
        }
    }

    /// How many actions it was handed.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until it has started `n` actions.
    pub async fn wait_started(&self, n: usize) {
        let mut rx = self.started.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}

impl Executor for HostExecutorDouble {
    async fn execute(
        &self,
        job: &ActionJob,
        cancel: CancellationToken,
    ) -> Result<ActionOutcome, ExecutorError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.send_modify(|c| *c += 1);
        if let Behaviour::InfraFailure(msg) = &self.behaviour {
            return Err(ExecutorError::unavailable(msg.clone()));
        }
        let open = |p: &std::path::Path| {
            std::fs::File::create(p).map_err(|e| {
                ExecutorError::internal(format!("cannot create {}", p.display())).with_source(e)
            })
        };
        let mut cmd = tokio::process::Command::new(&job.arguments[0]);
        cmd.args(&job.arguments[1..])
            .env_clear()
            .envs(job.environment.iter().map(|(k, v)| (k, v)))
            .current_dir(job.host_working_directory())
            .stdin(Stdio::null())
            .stdout(open(&job.stdout_path)?)
            .stderr(open(&job.stderr_path)?)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            ExecutorError::internal(format!("cannot start {:?}", job.arguments[0])).with_source(e)
        })?;
        let timeout = async {
            match job.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let kill_group = |child: &tokio::process::Child| {
            if let Some(pid) = child.id() {
                // SAFETY: a signal to the process group the double made for this command.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        };
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| ExecutorError::internal("wait failed").with_source(e))?;
                use std::os::unix::process::ExitStatusExt;
                let exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                Ok(ActionOutcome { exit_code, timed_out: false })
            }
            _ = timeout => {
                kill_group(&child);
                let _ = child.wait().await;
                Ok(ActionOutcome { exit_code: 124, timed_out: true })
            }
            _ = cancel.cancelled() => {
                kill_group(&child);
                let _ = child.wait().await;
                Err(ExecutorError::unavailable("cancelled"))
            }
        }
    }
}
