//! `guestbox gitlab config|prepare|run|cleanup`: a GitLab Runner custom executor driver.
//!
//! GitLab Runner calls the driver once per stage, each time as a new process, and a job
//! needs one guest for all of them. So `prepare` starts a small per-job *supervisor*
//! (`guestbox gitlab supervise`, in its own session, detached) that revives the base and
//! holds the [`Session`]; `run` and `cleanup` talk to it over a unix socket in the job's
//! directory (`<guestbox data>/gitlab/jobs/runner-<CI_RUNNER_ID>-job-<CI_JOB_ID>`). The
//! supervisor goes away on `cleanup`, when the `run` it serves disappears (a cancelled
//! job: the runner SIGTERMs `run`), after `--idle-timeout` without a request, and when
//! the job's time is up; its QEMUs die with it (parent-death signal), so no guest
//! outlives its job.
//!
//! The builds and cache directories are host directories shared into the guest at the
//! same paths, so a stage's script means the same files wherever it runs. The stages that
//! need the network or the `gitlab-runner` helper — fetching sources, cache and
//! artifacts ([`HOST_STAGES`]) — run on the host, as the shell executor would run them;
//! the job's own scripts (prepare_script, step_*, build_script, after_script, and any
//! stage not named there) run in the guest, which has no network by design.
//!
//! Which base a job runs in, first match wins: the job's `GUESTBOX_BASE` variable, then
//! the job's `image:`, then `prepare --base` from the runner's config. A job that names a
//! base that does not exist fails as a build failure (its configuration is wrong); a
//! guest that does not revive, or a guestbox fault, is a system failure.
//!
//! Socket protocol: the client sends one JSON line (`{"op":"ping"}`,
//! `{"op":"run","script":PATH}`, `{"op":"cleanup"}`); the supervisor answers with frames
//! `[tag u8][length u32 BE][payload]` (see [`Tag`]).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use guestbox::host::{Dirs, ShortDir};
use guestbox::run::{Command as JobCommand, Session, SessionOptions, Streams, Volume};
use guestbox::store::Store;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::cli::{GitlabArgs, GitlabPrepareArgs, GitlabStage, SuperviseArgs};

/// Stages that run on the host: they fetch or store sources, caches and artifacts over
/// the network with git and the gitlab-runner helper; the guest has no network.
pub const HOST_STAGES: &[&str] = &[
    "get_sources",
    "restore_cache",
    "download_artifacts",
    "archive_cache",
    "archive_cache_on_failure",
    "upload_artifacts_on_success",
    "upload_artifacts_on_failure",
    "cleanup_file_variables",
];
/// The job time assumed when the runner does not say (GitLab's default is 1 h).
const DEFAULT_JOB_TIME: Duration = Duration::from_secs(3 * 3600);
/// Time beyond the job's own timeout that the supervisor waits for the runner's cleanup.
const JOB_TIME_SLACK: Duration = Duration::from_secs(10 * 60);
const SOCKET: &str = "supervisor.sock";
const PID_FILE: &str = "supervisor.pid";
const LOG_FILE: &str = "supervisor.log";

/// Frame tags from the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    Stdout = 1,
    Stderr = 2,
    /// The command's exit status, i32 big-endian.
    Exit = 3,
    /// guestbox failed (a system failure); the payload says why.
    Error = 4,
    /// The request is done (ping, cleanup).
    Done = 5,
}

impl Tag {
    fn from_u8(b: u8) -> Option<Tag> {
        Some(match b {
            1 => Tag::Stdout,
            2 => Tag::Stderr,
            3 => Tag::Exit,
            4 => Tag::Error,
            5 => Tag::Done,
            _ => return None,
        })
    }
}

/// Why a stage failed, as GitLab tells them apart.
#[derive(Debug)]
enum Failure {
    /// The job's fault (its script failed, it names no usable base).
    Build(String),
    /// guestbox's or the machine's fault: GitLab retries some stages.
    System(String),
}

impl From<guestbox::Error> for Failure {
    fn from(e: guestbox::Error) -> Self {
        Failure::System(e.to_string())
    }
}

fn system(what: impl std::fmt::Display) -> Failure {
    Failure::System(what.to_string())
}

/// What the runner tells every stage through the environment.
#[derive(Debug, Clone)]
struct JobEnv {
    /// `runner-<CI_RUNNER_ID>-job-<CI_JOB_ID>`.
    key: String,
    image: Option<String>,
    base_variable: Option<String>,
    job_timeout: Option<Duration>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// An exit code the runner gave, or `default` (GitLab always sets both).
fn exit_code_var(name: &str, default: i32) -> i32 {
    var(name)
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(default)
}

impl JobEnv {
    fn from_env() -> Result<JobEnv, Failure> {
        let id = |name: &str| -> Result<String, Failure> {
            let v = var(name).ok_or_else(|| {
                system(format!(
                    "{name} is not set: guestbox gitlab is meant to be run by GitLab Runner's \
                     custom executor, which sets it"
                ))
            })?;
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(system(format!("{name}={v:?} is not a plain id")));
            }
            Ok(v)
        };
        let runner = id("CUSTOM_ENV_CI_RUNNER_ID")?;
        let job = id("CUSTOM_ENV_CI_JOB_ID")?;
        Ok(JobEnv {
            key: format!("runner-{runner}-job-{job}"),
            image: var("CUSTOM_ENV_CI_JOB_IMAGE"),
            base_variable: var("CUSTOM_ENV_GUESTBOX_BASE"),
            job_timeout: var("CUSTOM_ENV_CI_JOB_TIMEOUT")
                .and_then(|t| t.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        })
    }
}

/// The base a job asks for, and where the request came from: the job's `GUESTBOX_BASE`
/// variable, else its `image:`, else the runner's `--base`.
pub fn chosen_base<'a>(
    variable: Option<&'a str>,
    image: Option<&'a str>,
    runner_default: Option<&'a str>,
) -> Option<(&'a str, &'static str)> {
    variable
        .map(|b| (b, "the job's GUESTBOX_BASE variable"))
        .or(image.map(|b| (b, "the job's image")))
        .or(runner_default.map(|b| (b, "the runner's prepare_args (--base)")))
}

fn jobs_dir(dirs: &Dirs) -> PathBuf {
    dirs.data.join("gitlab").join("jobs")
}

/// `guestbox gitlab ...`: runs the stage, prints what went wrong, exits as GitLab expects.
pub async fn gitlab(args: GitlabArgs) -> guestbox::Result<i32> {
    // Without the runner's variables, failures are still told apart (GitLab's own values).
    let (build_failure, system_failure) = (
        exit_code_var("BUILD_FAILURE_EXIT_CODE", 1),
        exit_code_var("SYSTEM_FAILURE_EXIT_CODE", 2),
    );
    let result = match args.stage {
        GitlabStage::Config => config(),
        GitlabStage::Prepare(a) => prepare(a).await,
        GitlabStage::Run { script, stage } => run(&script, &stage).await,
        GitlabStage::Cleanup => cleanup().await,
        GitlabStage::Supervise(a) => return supervise(a).await,
    };
    Ok(match result {
        Ok(code) => code,
        Err(Failure::Build(m)) => {
            eprintln!("guestbox: {m}");
            build_failure
        }
        Err(Failure::System(m)) => {
            eprintln!("guestbox: error: {m}");
            system_failure
        }
    })
}

/// The runner's local cache, shared by its jobs (on the host and, at the same path, in
/// each job's guest).
fn cache_dir(dirs: &Dirs) -> PathBuf {
    dirs.data.join("gitlab").join("cache")
}

/// `config_exec`: where builds and the cache are (the same paths on the host and in the
/// guest), and who the driver is.
fn config() -> Result<i32, Failure> {
    let env = JobEnv::from_env()?;
    let job = JobDir::of(&env)?;
    let json = serde_json::json!({
        "builds_dir": job.builds(),
        "cache_dir": cache_dir(&Dirs::from_env()?),
        // Each job has its own guest and its own builds directory.
        "builds_dir_is_shared": false,
        "driver": { "name": "guestbox", "version": env!("CARGO_PKG_VERSION") },
        "job_env": { "GUESTBOX_GITLAB_JOB": env.key },
    });
    println!("{json}");
    Ok(0)
}

/// A job's directory on the host, named so that later stages (new processes) find it.
struct JobDir {
    path: PathBuf,
}

impl JobDir {
    fn of(env: &JobEnv) -> Result<JobDir, Failure> {
        Ok(JobDir {
            path: jobs_dir(&Dirs::from_env()?).join(&env.key),
        })
    }

    fn builds(&self) -> PathBuf {
        self.path.join("builds")
    }

    /// The live supervisor's pid, if its pid file names a process that is one.
    fn supervisor_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.path.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_supervisor(pid, &self.path).then_some(pid)
    }

    async fn connect(&self) -> std::io::Result<UnixStream> {
        // The job directory may be deeper than a socket path may be long.
        let short = ShortDir::open(&self.path).map_err(std::io::Error::other)?;
        UnixStream::connect(short.join(SOCKET)).await
    }

    /// Stops a supervisor (asking first), waits for it, removes the directory.
    async fn tear_down(&self) -> Result<(), Failure> {
        if let Ok(mut s) = self.connect().await {
            // A supervisor busy with a stage answers only after it: don't wait long.
            let ask = async {
                request(&mut s, &serde_json::json!({"op": "cleanup"})).await?;
                wait_frames(&mut s, |_, _| Ok(()))
                    .await
                    .map_err(|_| std::io::Error::other("no answer"))
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), ask).await;
        }
        if let Some(pid) = self.supervisor_pid() {
            let start = Instant::now();
            while is_supervisor(pid, &self.path) && start.elapsed() < Duration::from_secs(20) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if is_supervisor(pid, &self.path) {
                // SAFETY: a signal to the supervisor of this job (checked by its command line).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(system(format!("removing {}: {e}", self.path.display()))),
        }
    }
}

/// Whether `pid` is this job's supervisor (a pid can be reused once it is gone).
fn is_supervisor(pid: i32, job_dir: &Path) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let cmd = String::from_utf8_lossy(&cmd);
    !zombie && cmd.contains("supervise") && cmd.contains(&*job_dir.to_string_lossy())
}

/// `prepare_exec`: revives the job's base in a supervisor that lives for the job.
async fn prepare(args: GitlabPrepareArgs) -> Result<i32, Failure> {
    let env = JobEnv::from_env()?;
    let dirs = Dirs::from_env()?;
    let (what, from) = chosen_base(
        env.base_variable.as_deref(),
        env.image.as_deref(),
        args.base.as_deref(),
    )
    .ok_or_else(|| {
        Failure::Build(
            "the job names no guestbox base: set the variable GUESTBOX_BASE or the job's image: \
             to a base (`guestbox ls`), or give the runner a default with \
             prepare_args = [\"gitlab\", \"prepare\", \"--base\", \"NAME\"]"
                .into(),
        )
    })?;
    let base = Store::new(&dirs).resolve(what).map_err(|e| match e {
        guestbox::Error::Usage(m) => Failure::Build(format!("{m} (the base comes from {from})")),
        e => e.into(),
    })?;
    let job = JobDir::of(&env)?;
    // A retried prepare (GitLab tries three times) starts from nothing.
    job.tear_down().await?;
    std::fs::create_dir_all(job.builds())
        .map_err(|e| system(format!("creating {}: {e}", job.builds().display())))?;
    let cache = cache_dir(&dirs);
    std::fs::create_dir_all(&cache)
        .map_err(|e| system(format!("creating {}: {e}", cache.display())))?;
    let max_time = args
        .max_job_time
        .unwrap_or_else(|| env.job_timeout.unwrap_or(DEFAULT_JOB_TIME) + JOB_TIME_SLACK);
    println!(
        "guestbox: reviving base {} ({}) for job {}",
        &base.manifest.id,
        base.names.join(", "),
        env.key
    );
    let started = Instant::now();
    let log = std::fs::File::create(job.path.join(LOG_FILE))
        .map_err(|e| system(format!("creating the supervisor's log: {e}")))?;
    let exe = std::env::current_exe().map_err(|e| system(format!("finding guestbox: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["gitlab", "supervise", "--job-dir"])
        .arg(&job.path)
        .args(["--base", &base.manifest.id])
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--idle-timeout")
        .arg(format!("{}ms", args.idle_timeout.as_millis()))
        .arg("--max-job-time")
        .arg(format!("{}ms", max_time.as_millis()))
        .stdin(std::process::Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| system(format!("the supervisor's log: {e}")))?,
        )
        .stderr(log);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe. Its own session: the runner's signals to this
    // stage's process group do not reach the guest of the job.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| system(format!("starting the job's supervisor: {e}")))?;
    // Until it is ready, a prepare that is stopped (its timeout) takes the supervisor with it.
    let mut guard = KillOnDrop(Some(child));
    loop {
        if let Ok(mut s) = job.connect().await {
            request(&mut s, &serde_json::json!({"op": "ping"}))
                .await
                .map_err(|e| system(format!("the job's supervisor: {e}")))?;
            wait_frames(&mut s, |_, _| Ok(())).await?;
            break;
        }
        if let Some(c) = guard.0.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                let log = std::fs::read_to_string(job.path.join(LOG_FILE)).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&job.path);
                return Err(system(format!(
                    "the job's guest did not start ({status}):\n{}",
                    log.trim_end()
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    guard.0 = None;
    println!(
        "guestbox: job {} ready in {:.1} s (the guest lives until cleanup, {} idle, {} at most)",
        env.key,
        started.elapsed().as_secs_f64(),
        secs(args.idle_timeout),
        secs(max_time)
    );
    Ok(0)
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `run_exec SCRIPT STAGE`: runs the stage's script in the job's guest (or, for
/// [`HOST_STAGES`], on the host), output live.
async fn run(script: &Path, stage: &str) -> Result<i32, Failure> {
    let env = JobEnv::from_env()?;
    let job = JobDir::of(&env)?;
    let script = std::path::absolute(script)
        .map_err(|e| system(format!("the script {}: {e}", script.display())))?;
    if !script.is_file() {
        return Err(system(format!(
            "the {stage} script {} does not exist",
            script.display()
        )));
    }
    if HOST_STAGES.contains(&stage) {
        return run_on_host(&script, stage).await;
    }
    let mut s = job.connect().await.map_err(|_| {
        system(format!(
            "job {} has no guest (prepare did not run, or the guest was stopped: cancelled, \
             idle or out of time)",
            env.key
        ))
    })?;
    request(
        &mut s,
        &serde_json::json!({"op": "run", "script": script, "stage": stage}),
    )
    .await
    .map_err(|e| system(format!("the job's supervisor: {e}")))?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let code = wait_frames(&mut s, |tag, data| {
        // Flushed frame by frame: GitLab shows the log as it comes.
        let w: &mut dyn std::io::Write = if tag == Tag::Stdout {
            &mut stdout
        } else {
            &mut stderr
        };
        w.write_all(data)
            .and_then(|()| w.flush())
            .map_err(|e| system(format!("writing the job's output: {e}")))
    })
    .await?;
    match code {
        Some(0) => Ok(0),
        Some(c) => Err(Failure::Build(format!(
            "the {stage} script exited with {c}"
        ))),
        None => Err(system("the job's supervisor answered no exit status")),
    }
}

/// A network stage, on the host as the shell executor runs it. Its output is inherited
/// (live); a cancelled job's SIGTERM reaches it with the runner's process group.
async fn run_on_host(script: &Path, stage: &str) -> Result<i32, Failure> {
    let status = tokio::process::Command::new("bash")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| {
            system(format!(
                "running the {stage} script on the host with bash: {e}"
            ))
        })?;
    match status.code() {
        Some(0) => Ok(0),
        Some(c) => Err(Failure::Build(format!(
            "the {stage} script (on the host) exited with {c}"
        ))),
        None => Err(Failure::Build(format!(
            "the {stage} script (on the host) was killed ({status})"
        ))),
    }
}

/// `cleanup_exec`: the job's guest goes, and its directory.
async fn cleanup() -> Result<i32, Failure> {
    let env = JobEnv::from_env()?;
    JobDir::of(&env)?.tear_down().await?;
    Ok(0)
}

async fn request(s: &mut UnixStream, req: &serde_json::Value) -> std::io::Result<()> {
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).await
}

/// Reads frames until the request ends: output goes to `out`; returns the exit status
/// (None for a request without one). An error frame is a system failure.
async fn wait_frames(
    s: &mut UnixStream,
    mut out: impl FnMut(Tag, &[u8]) -> Result<(), Failure>,
) -> Result<Option<i32>, Failure> {
    let lost = |e: std::io::Error| system(format!("lost the job's supervisor: {e}"));
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.map_err(lost)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).await.map_err(lost)?;
        match Tag::from_u8(head[0]) {
            Some(t @ (Tag::Stdout | Tag::Stderr)) => out(t, &data)?,
            Some(Tag::Exit) if data.len() == 4 => {
                return Ok(Some(i32::from_be_bytes([
                    data[0], data[1], data[2], data[3],
                ])))
            }
            Some(Tag::Error) => return Err(system(String::from_utf8_lossy(&data))),
            Some(Tag::Done) => return Ok(None),
            _ => {
                return Err(system(
                    "the job's supervisor sent a frame this guestbox does not know",
                ))
            }
        }
    }
}

async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    tag: Tag,
    data: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(data.len()).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(5 + data.len());
    frame.push(tag as u8);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(data);
    w.write_all(&frame).await?;
    w.flush().await
}

/// The command's output as frames on a channel (drained to the socket alongside).
struct FrameWriter {
    tag: Tag,
    tx: tokio::sync::mpsc::UnboundedSender<(Tag, Vec<u8>)>,
}

impl AsyncWrite for FrameWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.tx.send((self.tag, buf.to_vec())) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How one request ended for the supervisor.
enum Served {
    Continue,
    /// Cleanup asked for, or the client of a running command went away (a cancelled job).
    Stop(&'static str),
}

/// `guestbox gitlab supervise` (started by prepare): holds the job's session.
async fn supervise(args: SuperviseArgs) -> guestbox::Result<i32> {
    use guestbox::IoContext;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + args.max_job_time;
    std::fs::write(args.job_dir.join(PID_FILE), std::process::id().to_string())
        .ctx(|| format!("writing {}", args.job_dir.join(PID_FILE).display()))?;
    let dirs = Dirs::from_env()?;
    let store = Store::new(&dirs);
    let base = store.resolve(&args.base)?;
    let opts = SessionOptions {
        volumes: vec![
            // At the same paths as on the host: the scripts name them.
            Volume {
                host: args.job_dir.join("builds"),
                guest: args.job_dir.join("builds").to_string_lossy().into_owned(),
                readonly: false,
            },
            Volume {
                host: args.cache_dir.clone(),
                guest: args.cache_dir.to_string_lossy().into_owned(),
                readonly: false,
            },
        ],
        xchg: None,
        cold: false,
        boot_timeout: Duration::from_secs(600),
        replay_snapshot_randomness: false,
        unconfined: false,
    };
    let mut session = Session::revive(&store, &base, &opts).await?;
    let short = ShortDir::open(&args.job_dir)?;
    let socket = short.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .ctx(|| format!("listening on {}", args.job_dir.join(SOCKET).display()))?;
    eprintln!(
        "guestbox supervisor: base {} revived in {:.2} s; serving {}",
        base.manifest.id,
        started.elapsed().as_secs_f64(),
        args.job_dir.display()
    );
    let why = tokio::select! {
        why = serve(&listener, &mut session, args.idle_timeout) => why,
        _ = tokio::time::sleep_until(deadline) => "the job's time is up",
    };
    eprintln!("guestbox supervisor: {why}: discarding the guest");
    session.discard().await;
    drop(listener);
    // Cleanup after a stop by cleanup itself is done there; after a timeout or a
    // cancellation nobody else may come: leave nothing behind.
    if why != "cleanup" {
        let _ = std::fs::remove_dir_all(&args.job_dir);
    } else {
        let _ = std::fs::remove_file(args.job_dir.join(SOCKET));
    }
    Ok(0)
}

async fn serve(
    listener: &tokio::net::UnixListener,
    session: &mut Session,
    idle_timeout: Duration,
) -> &'static str {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = tokio::time::sleep(idle_timeout) => return "idle for longer than --idle-timeout",
        };
        let Ok((stream, _)) = conn else {
            continue;
        };
        match serve_one(stream, session).await {
            Served::Continue => {}
            Served::Stop(why) => return why,
        }
    }
}

async fn serve_one(stream: UnixStream, session: &mut Session) -> Served {
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    let mut line = String::new();
    if rd.read_line(&mut line).await.is_err() {
        return Served::Continue;
    }
    let req: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    match req["op"].as_str() {
        Some("ping") => {
            let _ = write_frame(&mut wr, Tag::Done, b"").await;
            Served::Continue
        }
        Some("cleanup") => {
            // Answered once the guest is gone: discarding happens in supervise; the
            // client waits for the process to end.
            let _ = write_frame(&mut wr, Tag::Done, b"").await;
            Served::Stop("cleanup")
        }
        Some("run") => {
            let script = PathBuf::from(req["script"].as_str().unwrap_or_default());
            let stage = req["stage"].as_str().unwrap_or("?").to_string();
            run_stage(&script, &stage, session, &mut rd, &mut wr).await
        }
        _ => {
            let _ = write_frame(&mut wr, Tag::Error, b"unknown request").await;
            Served::Continue
        }
    }
}

/// Runs one stage's script (on bash's stdin, as GitLab's own executors do) with its
/// output going to the client as it comes. If the client goes away (the runner stopped
/// `run`: a cancelled or timed-out job), the guest is discarded.
async fn run_stage(
    script: &Path,
    stage: &str,
    session: &mut Session,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
) -> Served {
    let mut input = match tokio::fs::File::open(script).await {
        Ok(f) => f,
        Err(e) => {
            let m = format!("cannot read the {stage} script {}: {e}", script.display());
            let _ = write_frame(wr, Tag::Error, m.as_bytes()).await;
            return Served::Continue;
        }
    };
    let command = JobCommand {
        argv: vec!["bash".into()],
        ..JobCommand::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut out = FrameWriter {
        tag: Tag::Stdout,
        tx: tx.clone(),
    };
    let mut err = FrameWriter {
        tag: Tag::Stderr,
        tx,
    };
    let exec = async {
        let mut streams = Streams {
            stdin: Some(&mut input),
            stdout: &mut out,
            stderr: &mut err,
            window: None,
        };
        let r = session.exec(&command, &mut streams).await;
        drop(streams);
        drop((out, err));
        r
    };
    let (ftx, mut frames_done) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
    let pump = async {
        let mut r = Ok(());
        while let Some((tag, data)) = rx.recv().await {
            if r.is_ok() {
                r = write_frame(wr, tag, &data).await;
            }
        }
        let _ = ftx.send(r);
    };
    // The client sends nothing more: a read that ends means it is gone.
    let gone = async {
        let mut b = [0u8; 1];
        let _ = rd.read(&mut b).await;
    };
    let result = tokio::select! {
        (r, ()) = async { tokio::join!(exec, pump) } => r,
        () = gone => return Served::Stop("the stage's client went away (job cancelled)"),
    };
    if !matches!(frames_done.try_recv(), Ok(Ok(()))) {
        return Served::Stop("the stage's client went away (job cancelled)");
    }
    match result {
        Ok(outcome) => {
            let _ = write_frame(wr, Tag::Exit, &outcome.exit_code.to_be_bytes()).await;
            Served::Continue
        }
        Err(e) => {
            let m = format!("running the {stage} script in the guest: {e}");
            let _ = write_frame(wr, Tag::Error, m.as_bytes()).await;
            // A session whose command broke is not trusted with the next stage.
            Served::Stop("the guest failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guestbox_variable_beats_the_image_which_beats_the_runner_default() {
        assert_eq!(
            chosen_base(Some("v"), Some("i"), Some("d")).map(|b| b.0),
            Some("v")
        );
        assert_eq!(
            chosen_base(None, Some("i"), Some("d")).map(|b| b.0),
            Some("i")
        );
        assert_eq!(chosen_base(None, None, Some("d")).map(|b| b.0), Some("d"));
        assert_eq!(chosen_base(None, None, None), None);
        assert!(chosen_base(None, Some("i"), None)
            .unwrap()
            .1
            .contains("image"));
    }
}
