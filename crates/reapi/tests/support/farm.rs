//! A private Remote Execution farm on loopback: BuildGrid 0.4.4 (from PyPI, in a venv
//! cached in the target directory) over a private PostgreSQL cluster.
//!
//! One farm serves every test of a test binary. Its processes are started from a thread
//! that lives as long as the process and carry a parent-death signal, so they die with
//! the test binary however it ends; an exit hook also stops them and removes their files
//! when the binary exits normally (after failed tests too).

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// BuildGrid's scheduler routes on these platform properties (every property a client
/// sends must be listed, or BuildGrid refuses the action).
pub const MATCH_KEYS: &[&str] = &["guestbox-base", "OSFamily"];

const REQUIREMENTS: &str = include_str!("buildgrid-requirements.txt");

pub struct Farm {
    /// `grpc://127.0.0.1:PORT`
    pub url: String,
    /// The farm's files (logs, configuration, database).
    pub dir: PathBuf,
    /// The venv's `bin/` (bgd, python).
    pub venv_bin: PathBuf,
    /// PostgreSQL's port on 127.0.0.1 (user `postgres`, database `postgres`, no password).
    pub sql_port: u16,
    /// PostgreSQL's programs (psql).
    pub pg_bin: PathBuf,
}

impl Farm {
    /// Runs SQL on BuildGrid's database.
    pub fn sql(&self, statement: &str) -> Result<String> {
        run(
            Command::new(self.pg_bin.join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-tAc",
                    statement,
                ])
                .arg(format!("--port={}", self.sql_port)),
            "psql",
        )
    }
}

static FARM: OnceLock<Result<Farm, String>> = OnceLock::new();

/// The shared farm, started on first use.
pub fn farm() -> &'static Farm {
    let r = FARM.get_or_init(|| {
        // Parent-death signals fire when the *thread* that spawned a child ends, so the
        // children are spawned from a thread that never ends.
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("farm-keeper".into())
            .spawn(move || {
                let r = start().map_err(|e| format!("{e:#}"));
                let _ = tx.send(r);
                loop {
                    std::thread::park();
                }
            });
        match spawned {
            Ok(_) => rx
                .recv()
                .unwrap_or_else(|_| Err("the farm thread died".into())),
            Err(e) => Err(format!("cannot start the farm thread: {e}")),
        }
    });
    match r {
        Ok(f) => f,
        Err(e) => panic!("the test farm (BuildGrid + PostgreSQL) did not start: {e}"),
    }
}

/// Processes to stop and directories to remove when the test binary exits.
pub(crate) static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup {
    pids: Vec::new(),
    dirs: Vec::new(),
    commands: Vec::new(),
});

pub(crate) struct Cleanup {
    /// (pid, signal), stopped in reverse order.
    pub pids: Vec<(i32, i32)>,
    pub dirs: Vec<PathBuf>,
    /// Commands run first (e.g. `bazel shutdown`).
    pub commands: Vec<Vec<String>>,
}

extern "C" fn at_exit() {
    let Ok(mut c) = CLEANUP.lock() else { return };
    for cmd in c.commands.drain(..) {
        let _ = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for &(pid, sig) in c.pids.iter().rev() {
        // SAFETY: plain signal to a process this binary started.
        unsafe { libc::kill(pid, sig) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let mut status = 0;
            // SAFETY: reaps our own child; WNOHANG never blocks.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid || r == -1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for d in c.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(&d);
    }
}

pub(crate) fn register_exit_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: at_exit is a plain extern "C" fn without arguments.
    ONCE.call_once(|| unsafe {
        libc::atexit(at_exit);
    });
}

pub(crate) fn target_tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sets the parent-death signal of a child to `sig`.
pub(crate) fn die_with_parent(cmd: &mut Command, sig: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what} ({cmd:?})"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A venv with BuildGrid, made once and kept in the target directory.
pub fn venv() -> Result<PathBuf> {
    let dir = target_tmp().join("buildgrid-0.4.4-venv");
    let stamp = dir.join(".requirements");
    // Several test binaries may want it at once: one makes it, the others wait.
    let lock_path = target_tmp().join("buildgrid-venv.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file we hold open; released when it is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("cannot lock {}", lock_path.display());
    }
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(REQUIREMENTS)
        && dir.join("bin/bgd").exists()
    {
        return Ok(dir.join("bin"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&dir),
        "python3 -m venv (install python3 and python3-venv: scripts/setup --with-tests)",
    )?;
    let req = target_tmp().join("buildgrid-requirements.txt");
    std::fs::write(&req, REQUIREMENTS)?;
    run(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&req),
        "pip install of BuildGrid 0.4.4 (needs PyPI)",
    )?;
    std::fs::write(&stamp, REQUIREMENTS)?;
    Ok(dir.join("bin"))
}

/// Where PostgreSQL's server programs are: Debian keeps them off PATH.
fn pg_bin() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = run(Command::new("pg_config").arg("--bindir"), "pg_config")
        .context("no PostgreSQL server found (install postgresql: scripts/setup --with-tests)")?;
    Ok(PathBuf::from(out.trim()))
}

/// Who runs PostgreSQL: it refuses to run as root, so root hands it to `nobody`.
struct PgUser {
    uid: u32,
    gid: u32,
}

fn pg_user() -> Result<Option<PgUser>> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("nobody")?;
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root, but there is no user 'nobody' to run PostgreSQL as");
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(PgUser { uid, gid }))
}

fn as_pg_user(user: &Option<PgUser>, program: &Path, sig: i32) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--clear-groups")
                .arg(format!("--pdeathsig={}", signal_name(sig)))
                .arg("--")
                .arg(program);
            // setpriv's own parent-death signal, for the moment before it sets the child's.
            die_with_parent(&mut c, sig);
            c
        }
        None => {
            let mut c = Command::new(program);
            die_with_parent(&mut c, sig);
            c
        }
    }
}

/// setpriv takes signal names, not numbers.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "KILL",
        libc::SIGINT => "INT",
        _ => "TERM",
    }
}

fn chown(path: &Path, user: &Option<PgUser>) -> Result<()> {
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .with_context(|| format!("cannot chown {}", path.display()))?;
    }
    Ok(())
}

fn spawn_logged(cmd: &mut Command, log: &Path, what: &str) -> Result<Child> {
    let f = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    Ok(child)
}

fn wait_for(
    what: &str,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    let tail: String = tail
        .chars()
        .rev()
        .take(3000)
        .collect::<String>()
        .chars()
        .rev()
        .collect();
    Err(anyhow!(
        "{what} was not ready within {timeout:?}; its log ({}):\n{tail}",
        log.display()
    ))
}

/// Removes farm directories of test binaries that are gone (killed before their exit hook).
pub(crate) fn remove_stale(parent: &Path, prefix: &str) {
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn start() -> Result<Farm> {
    register_exit_hook();
    let venv_bin = venv()?;
    let pg = pg_bin()?;
    let user = pg_user()?;

    // PostgreSQL's files must be reachable by its user: under the system temp dir.
    let prefix = "guestbox-reapi-farm-";
    remove_stale(&std::env::temp_dir(), prefix);
    let dir = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    CLEANUP
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .dirs
        .push(dir.clone());
    let data = dir.join("pg");
    std::fs::create_dir(&data)?;
    chown(&data, &user)?;
    chown(&dir, &user)?;

    run(
        as_pg_user(&user, &pg.join("initdb"), libc::SIGKILL)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
        "initdb",
    )?;
    let pg_port = free_port()?;
    let pg_log = dir.join("postgres.log");
    let mut pg_cmd = as_pg_user(&user, &pg.join("postgres"), libc::SIGINT);
    pg_cmd
        .arg("-D")
        .arg(&data)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", &format!("port={pg_port}")])
        .args(["-c", "unix_socket_directories="])
        .args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    let child = spawn_logged(&mut pg_cmd, &pg_log, "postgres")?;
    // SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for clients to leave).
    CLEANUP
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .pids
        .push((child.id() as i32, libc::SIGINT));
    let isready = pg.join("pg_isready");
    wait_for("PostgreSQL", &pg_log, Duration::from_secs(60), || {
        Command::new(&isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &pg_port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    })?;

    // psycopg2 explicitly: with plain postgresql:// SQLAlchemy picks psycopg 3, and
    // BuildGrid's job notifier then stalls (jobs wait for the bot's next long-poll).
    let sql = format!("postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/postgres");
    run(
        Command::new(venv_bin.join("bgd")).args(["migrate", "apply", &sql]),
        "bgd migrate apply",
    )?;

    let port = free_port()?;
    let config = dir.join("buildgrid.yml");
    let mut f = std::fs::File::create(&config)?;
    write!(
        f,
        r#"server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
connections:
  - !sql-connection &sql
    connection-string: {sql}
    pool-size: 10
    max-overflow: 10
storages:
  - !lru-storage &cas
    size: 512MB
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 10000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *ac
    property-set: !dynamic-property-set
      match-property-keys: [{keys}]
      wildcard-property-keys: []
    bot-session-keepalive-timeout: 120
    # An infrastructure failure (UNAVAILABLE/INTERNAL) is retried by BuildGrid up to this
    # many attempts; 1 lets the tests see the worker's own status.
    max-job-attempts: 1
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *scheduler
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 40
"#,
        keys = MATCH_KEYS.join(", ")
    )?;
    drop(f);
    let bgd_log = dir.join("bgd.log");
    let mut bgd = Command::new(venv_bin.join("bgd"));
    bgd.args(["server", "start"]).arg(&config);
    die_with_parent(&mut bgd, libc::SIGTERM);
    let child = spawn_logged(&mut bgd, &bgd_log, "bgd server start")?;
    let bgd_pid = child.id() as i32;
    CLEANUP
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .pids
        .push((bgd_pid, libc::SIGTERM));
    let url = format!("grpc://127.0.0.1:{port}");
    wait_for("BuildGrid", &bgd_log, Duration::from_secs(120), || {
        serves_capabilities(port)
    })?;
    Ok(Farm {
        url,
        dir,
        venv_bin,
        sql_port: pg_port,
        pg_bin: pg,
    })
}

/// Whether BuildGrid answers GetCapabilities (it then serves every service).
fn serves_capabilities(port: u16) -> bool {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return false,
    };
    rt.block_on(async {
        use reapi::proto::re::capabilities_client::CapabilitiesClient;
        use reapi::proto::re::GetCapabilitiesRequest;
        let Ok(mut c) = CapabilitiesClient::connect(format!("http://127.0.0.1:{port}")).await
        else {
            return false;
        };
        c.get_capabilities(GetCapabilitiesRequest {
            instance_name: String::new(),
        })
        .await
        .is_ok()
    })
}
