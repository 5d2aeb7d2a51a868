//! Run: base → revived pair → result. Each run gets its own overlays over the base's
//! disks, its own sockets and link, its RAM mapped copy-on-write from the base; nothing is
//! shared with other runs but read-only files.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::boot::Vm;
use crate::boot_image::create_overlay;
use crate::bootstrap::{
    idle_shares, ram_needs_write_access, setup_pair, socket_dir, start_pair, RunDir,
};
use crate::control::{read_frame, write_frame, Control};
use crate::pair::{ControllerShare, PairFiles, PairSockets, RamMode};
use crate::profile::{GuestJob, GuestMount, Profile};
use crate::store::{files, Base, Store};
use crate::{hostcheck, qemu_info, snapshot, Error, IoContext, Result};

/// A host directory shared with the guest (`-v HOST:GUEST[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    pub readonly: bool,
}

impl std::str::FromStr for Volume {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "-v {s:?}: {why} (expected HOST:GUEST or HOST:GUEST:ro)"
            ))
        };
        let (rest, readonly) = match s.rsplit_once(':') {
            Some((rest, "ro")) => (rest, true),
            Some((rest, "rw")) => (rest, false),
            _ => (s, false),
        };
        let (host, guest) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("missing ':GUEST'"))?;
        if host.is_empty() {
            return Err(bad("empty host directory"));
        }
        if !guest.starts_with('/') {
            return Err(bad("the guest path must be absolute"));
        }
        if guest.contains('\0') || guest.contains('\n') || guest.split('/').any(|c| c == "..") {
            return Err(bad("the guest path may not contain '..', newlines or NUL"));
        }
        Ok(Volume {
            host: PathBuf::from(host),
            guest: guest.to_string(),
            readonly,
        })
    }
}

/// `-e K=V`: K must be a shell variable name.
pub fn parse_env(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| Error::Usage(format!("-e {s:?}: expected NAME=VALUE")))?;
    let valid = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(Error::Usage(format!(
            "-e {s:?}: {k:?} is not a valid variable name (letters, digits, _; not starting with a digit)"
        )));
    }
    if v.contains('\0') {
        return Err(Error::Usage(format!(
            "-e {k}: the value contains a NUL byte"
        )));
    }
    Ok((k.to_string(), v.to_string()))
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub volumes: Vec<Volume>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub argv: Vec<String>,
    pub timeout: Option<Duration>,
    /// Keep the guest's clock where the snapshot froze it instead of setting host time.
    pub keep_snapshot_time: bool,
    /// Boot the base's disks from scratch instead of reviving the snapshot.
    pub cold: bool,
    /// Host directory that receives the exchange files (`in-vm-exit`); a temporary one
    /// if None.
    pub xchg: Option<PathBuf>,
    /// Cold boot readiness timeout.
    pub boot_timeout: Duration,
    /// Give the command a terminal in the guest with this `$TERM` (`guestbox shell`).
    pub tty: Option<String>,
}

/// How long each stage took.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Overlays, checks, QEMU started, state loaded, both running.
    pub revive: Duration,
    /// Agent answered on the control channel.
    pub controller_ready: Duration,
    /// Volumes mounted and the command started in the guest (SSH channel open).
    pub command_started: Duration,
    /// The command's exit status arrived.
    pub command_done: Duration,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit_code: i32,
    pub timings: Timings,
}

/// What went wrong with a run in a way that has its own exit code.
pub const TIMEOUT_EXIT: i32 = 124;

/// Refuses a base whose controller agent speaks another protocol than this guestbox.
pub fn check_agent(base: &Base) -> Result<()> {
    let m = &base.manifest;
    if m.agent != crate::store::agent_id() {
        return Err(Error::Usage(format!(
            "base {} was made by another build of guestbox ({}; its controller agent differs from this one's): bootstrap it again with this guestbox",
            &m.id[..12.min(m.id.len())],
            m.guestbox_version
        )));
    }
    Ok(())
}

/// Refuses, before QEMU starts, a base this host cannot revive exactly.
pub async fn check_compatible(base: &Base, qemu: &Path) -> Result<()> {
    check_agent(base)?;
    let m = &base.manifest;
    let version = qemu_info::version(qemu).await?;
    if version != m.qemu_version {
        return Err(Error::Usage(format!(
            "base {} was made by QEMU {}.{}.{} but this host has QEMU {}.{}.{}: a snapshot only revives on the QEMU that made it. Bootstrap a new base (`guestbox bootstrap`) or run with --cold",
            &m.id[..12], m.qemu_version.0, m.qemu_version.1, m.qemu_version.2, version.0, version.1, version.2
        )));
    }
    qemu_info::resolve_machine(qemu, &m.pair.machine)
        .await
        .map_err(|_| {
            Error::Usage(format!(
                "base {} needs machine type {} which this QEMU does not have",
                &m.id[..12],
                m.pair.machine
            ))
        })?;
    if m.pair.accel == crate::accel::Accel::Kvm
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
    {
        return Err(Error::Usage(format!(
            "base {} was made under KVM, which this host cannot use now; bootstrap a base with --accel tcg",
            &m.id[..12]
        )));
    }
    crate::store::quick_check(base)?;
    Ok(())
}

/// Checks `-v` volumes: count, host directories that exist, no guest path twice.
pub fn check_volumes(volumes: &[Volume]) -> Result<Vec<(Volume, PathBuf)>> {
    if volumes.len() > agent::VOLUME_SLOTS {
        return Err(Error::Usage(format!(
            "{} volumes given; at most {} -v per run",
            volumes.len(),
            agent::VOLUME_SLOTS
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    volumes
        .iter()
        .map(|v| {
            let host = v.host.canonicalize().map_err(|e| {
                Error::Usage(format!(
                    "-v {}: the host directory cannot be used: {e}",
                    v.host.display()
                ))
            })?;
            if !host.is_dir() {
                return Err(Error::Usage(format!(
                    "-v {}: not a directory",
                    v.host.display()
                )));
            }
            if !seen.insert(v.guest.trim_end_matches('/').to_string()) {
                return Err(Error::Usage(format!(
                    "-v: guest path {} is given twice",
                    v.guest
                )));
            }
            Ok((v.clone(), host))
        })
        .collect()
}

/// Revives `base`, runs the job, streams its output, tears everything down. The command
/// reads nothing on stdin.
pub async fn run<O, E>(
    store: &Store,
    base: &Base,
    opts: &RunOptions,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<Outcome>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    run_with_stdin(
        store,
        base,
        opts,
        None::<&mut tokio::io::Empty>,
        stdout,
        stderr,
    )
    .await
}

/// [`run`], with `stdin` (if any) forwarded to the command as it arrives.
pub async fn run_with_stdin<I, O, E>(
    store: &Store,
    base: &Base,
    opts: &RunOptions,
    stdin: Option<&mut I>,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<Outcome>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    if opts.argv.is_empty() {
        return Err(Error::Usage(
            "no command given: guestbox run [OPTIONS] -- COMMAND [ARGS...]".into(),
        ));
    }
    if let Some(dir) = &opts.workdir {
        if !dir.starts_with('/') {
            return Err(Error::Usage(format!(
                "-w {dir:?}: the working directory must be an absolute path"
            )));
        }
    }
    let volumes = check_volumes(&opts.volumes)?;
    let profile: Profile = serde_json::from_value(base.manifest.inputs.clone()).map_err(|e| {
        Error::Other(format!(
            "base {}: unknown profile inputs: {e}",
            base.manifest.id
        ))
    })?;
    hostcheck::require(hostcheck::VM)?;
    let qemu = hostcheck::path_of(hostcheck::QEMU)?;
    if opts.cold {
        check_agent(base)?;
        crate::store::quick_check(base)?;
    } else {
        check_compatible(base, &qemu).await?;
    }
    let _hold = base.lock_shared()?;
    let started = Instant::now();
    let run_dir = socket_dir(store, "run-")?;
    let xchg_tmp;
    let xchg = match &opts.xchg {
        Some(dir) => dir.clone(),
        None => {
            xchg_tmp = run_dir.path().join("xchg");
            fs::create_dir_all(&xchg_tmp).ctx(|| format!("creating {}", xchg_tmp.display()))?;
            xchg_tmp
        }
    };
    // Device order is fixed at bootstrap: xchg, vol0..vol7. Unused slots get empty dirs.
    let mut shares = idle_shares(run_dir.path())?;
    shares[0] = ControllerShare {
        tag: agent::XCHG_TAG.into(),
        path: xchg,
        readonly: false,
    };
    let mut mounts = vec![agent::Mount {
        tag: agent::XCHG_TAG.into(),
        readonly: false,
    }];
    let mut guest_mounts = Vec::new();
    for (slot, (v, host)) in volumes.iter().enumerate() {
        let tag = agent::volume_tag(slot);
        shares[slot + 1] = ControllerShare {
            tag: tag.clone(),
            path: host.clone(),
            readonly: v.readonly,
        };
        mounts.push(agent::Mount {
            tag: tag.clone(),
            readonly: v.readonly,
        });
        guest_mounts.push(GuestMount {
            tag,
            guest_path: v.guest.clone(),
            readonly: v.readonly,
        });
    }
    let pair = launch(
        &qemu,
        base,
        &profile,
        &run_dir,
        &shares,
        opts.cold,
        opts.boot_timeout,
    )
    .await?;
    let (mut guest, mut controller, sockets) = (pair.guest, pair.controller, pair.sockets);
    let mut timings = Timings {
        revive: started.elapsed(),
        ..Timings::default()
    };
    let time = if opts.keep_snapshot_time {
        None
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs() as i64)
    };
    let job = GuestJob {
        time,
        mounts: guest_mounts,
        env: opts.env.clone(),
        workdir: opts.workdir.clone(),
        argv: opts.argv.clone(),
    };
    let request = agent::Run {
        time,
        mounts,
        script: profile.run_script(&job),
        stdin: stdin.is_some(),
        tty: opts.tty.clone().map(|term| agent::Tty { term }),
    };
    let control = sockets.control();
    let drive = drive_job(
        &control,
        request,
        stdin,
        stdout,
        stderr,
        started,
        &mut timings,
    );
    // Either VM may die under the job (a guest kernel panic powers off, see kernel_append;
    // QEMU may be killed from outside): then nothing would ever answer, so watch both.
    let watched = async {
        tokio::select! {
            biased;
            r = drive => r,
            (vm, status) = first_exit(&mut guest, &mut controller) => Err(vm_died(vm, status)),
        }
    };
    let result = match opts.timeout {
        Some(limit) => match tokio::time::timeout(limit, watched).await {
            Ok(r) => r,
            Err(_) => {
                let _ = stderr
                    .write_all(
                        format!(
                            "guestbox: the command did not finish within {} s; stopped it\n",
                            limit.as_secs_f64()
                        )
                        .as_bytes(),
                    )
                    .await;
                Ok(TIMEOUT_EXIT)
            }
        },
        None => watched.await,
    };
    // A dying VM can break the job's channel a moment before QEMU is reaped: say which.
    let result = match result {
        Err(e) if !matches!(e, Error::VmDied { .. }) => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match (guest.process.try_wait(), controller.process.try_wait()) {
                (Ok(Some(status)), _) => Err(vm_died(&guest, Ok(status))),
                (_, Ok(Some(status))) => Err(vm_died(&controller, Ok(status))),
                _ => Err(e),
            }
        }
        other => other,
    };
    let host_full = guest.host_disk_was_full() || controller.host_disk_was_full();
    // The guest's state dies with its overlay: no shutdown needed.
    guest.process.kill().await;
    controller.process.kill().await;
    if host_full {
        return Err(Error::Other(format!(
            "the filesystem holding {} ran out of space during the run, so the guest's disk writes failed and its results cannot be trusted; free space there (or set GUESTBOX_HOME to a larger filesystem) and run again",
            store.runs.display()
        )));
    }
    let exit_code = result.map_err(|e| match e {
        Error::VmDied { .. } => e,
        e => {
            let tail = crate::process::tail_of_file(&sockets.console("controller"), 10);
            Error::Other(format!("{e}\n  controller console:\n{tail}"))
        }
    })?;
    Ok(Outcome { exit_code, timings })
}

/// The running pair of one run.
pub struct Launched {
    pub guest: Vm,
    pub controller: Vm,
    pub sockets: PairSockets,
}

/// Revives the base's pair (or cold-boots and sets it up) in `run_dir`, on fresh
/// overlays, with `shares` behind the controller's 9p devices. Returns once both run.
pub async fn launch(
    qemu: &Path,
    base: &Base,
    profile: &Profile,
    run_dir: &RunDir,
    shares: &[ControllerShare],
    cold: bool,
    boot_timeout: Duration,
) -> Result<Launched> {
    let sockets = PairSockets::new(run_dir.path())?;
    let overlays = PairFiles {
        kernel: base.file(files::KERNEL),
        guest_initrd: base.file(files::GUEST_INITRD),
        controller_initrd: base.file(files::CONTROLLER_INITRD),
        guest_disk: run_dir.path().join("guest.qcow2"),
        controller_disk: run_dir.path().join("controller.qcow2"),
    };
    let (guest_disk, controller_disk) = (
        base.file(files::GUEST_DISK),
        base.file(files::CONTROLLER_DISK),
    );
    let (g, c) = tokio::join!(
        create_overlay(&guest_disk, &overlays.guest_disk),
        create_overlay(&controller_disk, &overlays.controller_disk)
    );
    g?;
    c?;
    let pair = &base.manifest.pair;
    let (guest, controller) = if cold {
        let (g, c) = start_pair(
            qemu,
            pair.guest_spec(&overlays, &RamMode::Anonymous, &sockets),
            pair.controller_spec(&overlays, &RamMode::Anonymous, &sockets, shares),
            boot_timeout,
        )
        .await?;
        setup_pair(
            &sockets.control(),
            profile,
            &base.secrets()?,
            &base.manifest.guest_host_key,
        )
        .await?;
        (g, c)
    } else {
        let ram = RamMode::Revive {
            guest: base.file(files::GUEST_RAM),
            controller: base.file(files::CONTROLLER_RAM),
            readonly: !ram_needs_write_access(base.manifest.qemu_version),
        };
        let mut g = Vm::start(qemu, pair.guest_spec(&overlays, &ram, &sockets))?;
        let mut c = Vm::start(
            qemu,
            pair.controller_spec(&overlays, &ram, &sockets, shares),
        )?;
        let (guest_state, controller_state) = (
            base.file(files::GUEST_STATE),
            base.file(files::CONTROLLER_STATE),
        );
        let (lg, lc) = tokio::join!(
            snapshot::load(&mut g, &guest_state),
            snapshot::load(&mut c, &controller_state)
        );
        lg.map_err(|e| with_log(e, &g))?;
        lc.map_err(|e| with_log(e, &c))?;
        snapshot::resume(&mut g).await?;
        snapshot::resume(&mut c).await?;
        (g, c)
    };
    Ok(Launched {
        guest,
        controller,
        sockets,
    })
}

/// Waits until either VM's QEMU exits.
async fn first_exit<'a>(
    guest: &'a mut Vm,
    controller: &'a mut Vm,
) -> (&'a Vm, Result<std::process::ExitStatus>) {
    tokio::select! {
        s = guest.process.wait() => (&*guest, s),
        s = controller.process.wait() => (&*controller, s),
    }
}

fn vm_died(vm: &Vm, status: Result<std::process::ExitStatus>) -> Error {
    // A panic's own line scrolls away under its backtrace: put it first.
    let mut tail = std::fs::read_to_string(&vm.spec.console_log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("Kernel panic"))
        .map(|l| format!("    {}\n    ...\n", l.trim()))
        .unwrap_or_default();
    tail.push_str(&crate::process::tail_of_file(&vm.spec.console_log, 15));
    Error::VmDied {
        vm: vm.spec.name.clone(),
        status: match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        },
        stderr: vm.process.stderr_tail(5).trim().to_string(),
        tail,
    }
}

fn with_log(e: Error, vm: &Vm) -> Error {
    Error::Other(format!(
        "reviving the {} failed: {e}\n  QEMU said: {}",
        vm.spec.name,
        vm.process.stderr_tail(5).trim()
    ))
}

async fn drive_job<I, O, E>(
    control: &Path,
    request: agent::Run,
    stdin: Option<&mut I>,
    stdout: &mut O,
    stderr: &mut E,
    started: Instant,
    timings: &mut Timings,
) -> Result<i32>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut channel = Control::connect(control, Duration::from_secs(10)).await?;
    timings.controller_ready = started.elapsed();
    channel.send(&agent::Request::Run(request)).await?;
    let (mut from_agent, mut to_agent) = channel.stream.split();
    // Input goes to the agent as it comes, once the command has started (before that the
    // agent has nowhere to put it); after EOF (an empty frame) this waits forever, so only
    // the output side below ends the job.
    let started_signal = tokio::sync::Notify::new();
    let pump = async {
        if let Some(input) = stdin {
            started_signal.notified().await;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = input.read(&mut buf).await.ctx(|| "reading stdin")?;
                write_frame(&mut to_agent, agent::FrameKind::Stdin, &buf[..n]).await?;
                if n == 0 {
                    break;
                }
            }
        }
        std::future::pending::<Result<i32>>().await
    };
    let output = async {
        loop {
            let (kind, payload) = read_frame(&mut from_agent).await?;
            match kind {
                agent::FrameKind::Stdout => {
                    stdout
                        .write_all(&payload)
                        .await
                        .ctx(|| "writing the command's stdout")?;
                    stdout
                        .flush()
                        .await
                        .ctx(|| "writing the command's stdout")?;
                }
                agent::FrameKind::Stderr => {
                    stderr
                        .write_all(&payload)
                        .await
                        .ctx(|| "writing the command's stderr")?;
                    stderr
                        .flush()
                        .await
                        .ctx(|| "writing the command's stderr")?;
                }
                agent::FrameKind::Stdin => {}
                agent::FrameKind::Message => {
                    let event: agent::Event = serde_json::from_slice(&payload)
                        .map_err(|e| Error::Other(format!("controller agent: bad message: {e}")))?;
                    match event {
                        agent::Event::Started => {
                            timings.command_started = started.elapsed();
                            started_signal.notify_one();
                        }
                        agent::Event::Exit { code } => {
                            timings.command_done = started.elapsed();
                            return Ok(code);
                        }
                        agent::Event::Error { message } => {
                            return Err(Error::Other(format!("controller: {message}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_and_reject() {
        let v: Volume = "/src:/work:ro".parse().unwrap();
        assert_eq!(
            v,
            Volume {
                host: "/src".into(),
                guest: "/work".into(),
                readonly: true
            }
        );
        let v: Volume = "./out:/out".parse().unwrap();
        assert!(!v.readonly);
        assert_eq!(v.host, PathBuf::from("./out"));
        for bad in ["/src", "/src:work", ":/x", "/a:/b/../c", "/a:"] {
            let e = bad.parse::<Volume>().unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn env_parses_and_rejects() {
        assert_eq!(parse_env("A_1=x=y").unwrap(), ("A_1".into(), "x=y".into()));
        assert_eq!(
            parse_env("EMPTY=").unwrap(),
            ("EMPTY".into(), String::new())
        );
        for bad in ["NOEQUALS", "=v", "1A=v", "A-B=v", "A B=v"] {
            assert_eq!(parse_env(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }
}
