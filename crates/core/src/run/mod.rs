//! Run: base → revived pair → result.
//!
//! - [`compat`]: can this host revive that base exactly (checked before QEMU starts)?
//! - [`volumes`]: the host directories a run shares, checked.
//! - [`job`]: one command's I/O on the control channel.
//! - this module: [`Session`] — a base revived on fresh overlays with its directories
//!   shared, commands run in it, then discarded — and [`run`], one command in one session,
//!   which is what `guestbox run` does. Front-ends (CI executors, remote-execution
//!   workers) use [`Session`] directly.
//!
//! Each session has its own overlays over the base's disks, its own sockets and link, its
//! RAM mapped copy-on-write from the base; nothing is shared with other sessions but
//! read-only files.

pub mod compat;
pub mod job;
pub mod volumes;

use std::fs::{self, File};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use link::{proto, shares};
use tokio::io::AsyncWriteExt;

pub use job::{Ended, Streams};
pub use volumes::{check_volumes, CheckedVolume, Volume};

use crate::host::{fs::random_hex, programs};
use crate::machine::confine::{self, Confinement, Policy};
use crate::machine::{overlay, qemu, tpm, Vm};
use crate::pair::lifecycle::{self, SetupRequest};
use crate::pair::{generation, ControllerShare, PairFiles, PairSockets, RamMode, RunDir};
use crate::profile::{GuestJob, GuestMount, Profile};
use crate::store::{files, quick_check, Base, Store};
use crate::{Error, IoContext, Result};

/// Exit status of a command stopped by `--timeout`, as timeout(1) has it.
pub const TIMEOUT_EXIT: i32 = 124;

/// How a session is set up: what it shares and how the pair starts.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub volumes: Vec<Volume>,
    /// Host directory that receives the exchange files (`in-vm-exit`); a temporary one
    /// if None.
    pub xchg: Option<PathBuf>,
    /// Boot the base's disks from scratch instead of reviving the snapshot.
    pub cold: bool,
    /// Cold boot readiness timeout.
    pub boot_timeout: Duration,
    /// INSECURE, for debugging only: revive with the snapshot's randomness, bit for bit (no
    /// new VM generation, no reseed from the host), so every run sees the random numbers,
    /// keys and UUIDs of every other.
    pub replay_snapshot_randomness: bool,
    /// INSECURE, for measuring what confinement costs (`guestbox bench`) only: start both
    /// QEMUs without their seccomp sandbox and, as root, without leaving root.
    pub unconfined: bool,
}

/// One command in a session.
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub timeout: Option<Duration>,
    /// Keep the guest's clock where the snapshot froze it instead of setting host time.
    pub keep_snapshot_time: bool,
    /// Give the command a terminal in the guest (`guestbox shell`).
    pub tty: Option<Terminal>,
}

/// What `guestbox shell` runs (with a [`Terminal`]): the guest's login bash where there is
/// one (Debian; Cygwin's on Windows, which starts in the user's home as Cygwin's
/// terminal does), else its login sh.
pub const LOGIN_SHELL: [&str; 3] = [
    "sh",
    "-c",
    "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi",
];

/// The terminal a command gets in the guest.
#[derive(Debug, Clone, Default)]
pub struct Terminal {
    /// `$TERM` there.
    pub term: String,
    /// The host terminal's size when the command starts; later changes come through
    /// [`Streams::window`].
    pub rows: u16,
    pub cols: u16,
}

/// `guestbox run`: one command in a fresh session.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub session: SessionOptions,
    pub command: Command,
}

/// How long each stage took, from the start of the session.
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

/// A base revived (or cold-booted) with its directories shared, ready for commands.
/// Dropping it kills both VMs and removes its run directory.
pub struct Session {
    profile: Profile,
    /// The base's SMB password, for a run that maps a drive (Windows); empty otherwise.
    smb_password: String,
    runs: PathBuf,
    guest: Vm,
    controller: Vm,
    sockets: PairSockets,
    /// The 9p devices to mount and bind in the guest on the first command.
    pending: Option<(Vec<proto::Mount>, Vec<GuestMount>)>,
    started: Instant,
    revive: Duration,
    /// Set once a command was cut off: the guest may still be running it.
    spent: bool,
    replay_snapshot_randomness: bool,
    // Dropped after the VMs (declaration order): their files live in it.
    _run_dir: RunDir,
    _hold: File,
}

impl Session {
    /// Revives `base` on fresh overlays with `opts.volumes` behind the controller's 9p
    /// devices. Returns once both VMs run.
    pub async fn revive(store: &Store, base: &Base, opts: &SessionOptions) -> Result<Session> {
        let volumes = check_volumes(&opts.volumes)?;
        let profile: Profile =
            serde_json::from_value(base.manifest.inputs.clone()).map_err(|e| {
                Error::DamagedBase {
                    id: base.manifest.id.clone(),
                    problem: format!(
                        "its manifest records a guest profile this guestbox does not know ({e})"
                    ),
                }
            })?;
        for v in &volumes {
            profile.check_volume_path(&v.volume.guest)?;
        }
        programs::require(programs::VM)?;
        let qemu = programs::path_of(programs::QEMU)?;
        if opts.cold {
            compat::check_agent(base)?;
            quick_check(base)?;
        } else {
            compat::check_compatible(store, base, &qemu).await?;
        }
        let hold = base.lock_shared()?;
        let started = Instant::now();
        let policy = Policy::for_host(&store.cache, &qemu).await?;
        let runs = store.runs.clone();
        let run_dir = RunDir::create(&runs, "run-")?;
        // The controller's QEMU serves the user's directories as their owner (as root).
        let mut served: Vec<PathBuf> = volumes.iter().map(|v| v.host.clone()).collect();
        served.extend(opts.xchg.iter().cloned());
        let confinement = if opts.unconfined {
            let off = Confinement {
                off: true,
                ..Confinement::default()
            };
            (off.clone(), off)
        } else {
            let empty = confine::empty_root(run_dir.path())?;
            (
                policy.plain().in_empty_root(&empty),
                policy.serving(&served)?,
            )
        };
        let xchg = match &opts.xchg {
            Some(dir) => dir.clone(),
            None => {
                let dir = run_dir.path().join(shares::XCHG_TAG);
                fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
                confinement.1.hand_over(&[&dir])?;
                dir
            }
        };
        // Device order is fixed at bootstrap: xchg, vol0..vol7. Unused slots get empty dirs.
        let mut devices = lifecycle::idle_shares(run_dir.path())?;
        devices[0] = ControllerShare {
            tag: shares::XCHG_TAG.into(),
            path: xchg,
            readonly: false,
        };
        // The exchange directory only when asked for (`--xchg`): a 9p mount is paid in
        // the controller at every run.
        let mut mounts = Vec::new();
        if opts.xchg.is_some() {
            mounts.push(proto::Mount {
                tag: shares::XCHG_TAG.into(),
                readonly: false,
            });
        }
        let mut guest_mounts = Vec::new();
        for (slot, v) in volumes.iter().enumerate() {
            let tag = shares::volume_tag(slot);
            devices[slot + 1] = ControllerShare {
                tag: tag.clone(),
                path: v.host.clone(),
                readonly: v.volume.readonly,
            };
            mounts.push(proto::Mount {
                tag: tag.clone(),
                readonly: v.volume.readonly,
            });
            guest_mounts.push(GuestMount {
                tag,
                guest_path: v.volume.guest.clone(),
                readonly: v.volume.readonly,
            });
        }
        let smb_password = match profile.windows() {
            Some(_) => base.secrets()?.smb_password,
            None => String::new(),
        };
        let (guest, controller, sockets) = launch(
            &qemu,
            store,
            base,
            &profile,
            &run_dir,
            &devices,
            confinement,
            opts,
        )
        .await?;
        Ok(Session {
            profile,
            smb_password,
            runs,
            guest,
            controller,
            sockets,
            pending: Some((mounts, guest_mounts)),
            started,
            revive: started.elapsed(),
            spent: false,
            replay_snapshot_randomness: opts.replay_snapshot_randomness,
            _run_dir: run_dir,
            _hold: hold,
        })
    }

    /// Runs `command` in the guest, streaming its output; its exit status (or
    /// [`TIMEOUT_EXIT`] when `command.timeout` expired) comes back in the outcome.
    pub async fn exec(&mut self, command: &Command, streams: &mut Streams<'_>) -> Result<Outcome> {
        if command.argv.is_empty() {
            return Err(Error::Usage(
                "no command given: guestbox run [OPTIONS] -- COMMAND [ARGS...]".into(),
            ));
        }
        if let Some(dir) = &command.workdir {
            self.profile.check_workdir(dir)?;
        }
        if self.spent {
            return Err(Error::Usage(
                "this session's last command was cut off by its timeout; start a new session"
                    .into(),
            ));
        }
        let mut timings = Timings {
            revive: self.revive,
            ..Timings::default()
        };
        let time = if command.keep_snapshot_time {
            None
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs() as i64)
        };
        let (mounts, guest_mounts) = self.pending.take().unwrap_or_default();
        let seed = if self.replay_snapshot_randomness {
            None
        } else {
            Some(random_hex(64)?)
        };
        let job = GuestJob {
            time,
            seed,
            mounts: guest_mounts,
            env: command.env.clone(),
            workdir: command.workdir.clone(),
            argv: command.argv.clone(),
            stdin: streams.stdin.is_some(),
        };
        let request = proto::Run {
            time,
            mounts,
            script: self.profile.run_script(&job, &self.smb_password)?,
            stdin: streams.stdin.is_some(),
            tty: command.tty.clone().map(|t| proto::Tty {
                term: t.term,
                rows: t.rows,
                cols: t.cols,
            }),
        };
        let console = self.sockets.console("controller");
        let channel = lifecycle::connect(&self.sockets).await?;
        let started = self.started;
        let (guest, controller) = (&mut self.guest, &mut self.controller);
        let drive = job::drive(channel, request, streams, started, &mut timings, &console);
        // Either VM may die under the job (a guest kernel panic powers off, see
        // images::kernel_append; QEMU may be killed from outside): then nothing would ever
        // answer, so watch both.
        let watched = async {
            tokio::select! {
                biased;
                r = drive => r,
                (vm, status) = lifecycle::first_exit(guest, controller) => Err(vm_died(vm, status)),
            }
        };
        let result = match command.timeout {
            Some(limit) => match tokio::time::timeout(limit, watched).await {
                Ok(r) => r,
                Err(_) => {
                    self.spent = true;
                    let _ = streams
                        .stderr
                        .write_all(
                            format!(
                                "guestbox: the command did not finish within {} s; stopped it\n",
                                limit.as_secs_f64()
                            )
                            .as_bytes(),
                        )
                        .await;
                    Ok(Ended::Exited(TIMEOUT_EXIT))
                }
            },
            None => watched.await,
        };
        // A dying VM can break the job's channel a moment before QEMU is reaped: say which.
        let result = match result {
            Err(e) if !matches!(e, Error::VmDied { .. }) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match (
                    self.guest.process.try_wait(),
                    self.controller.process.try_wait(),
                ) {
                    (Ok(Some(status)), _) => Err(vm_died(&self.guest, Ok(status))),
                    (_, Ok(Some(status))) => Err(vm_died(&self.controller, Ok(status))),
                    _ => Err(e),
                }
            }
            other => other,
        };
        if self.guest.host_disk_was_full() || self.controller.host_disk_was_full() {
            self.spent = true;
            return Err(Error::HostDiskFull {
                dir: self.runs.clone(),
            });
        }
        match result? {
            Ended::Exited(exit_code) => Ok(Outcome { exit_code, timings }),
        }
    }

    /// The QEMU processes of the guest and the controller (for measurements).
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (self.guest.process.pid(), self.controller.process.pid())
    }

    /// Kills both VMs (their state dies with the overlays: no shutdown needed) and removes
    /// the run directory.
    pub async fn discard(mut self) {
        self.guest.kill().await;
        self.controller.kill().await;
    }
}

/// Revives `base`, runs one command, streams its output, tears everything down.
pub async fn run(
    store: &Store,
    base: &Base,
    opts: &RunOptions,
    streams: &mut Streams<'_>,
) -> Result<Outcome> {
    if opts.command.argv.is_empty() {
        return Err(Error::Usage(
            "no command given: guestbox run [OPTIONS] -- COMMAND [ARGS...]".into(),
        ));
    }
    let mut session = Session::revive(store, base, &opts.session).await?;
    let outcome = session.exec(&opts.command, streams).await;
    session.discard().await;
    outcome
}

/// Revives the base's pair (or cold-boots and sets it up) in `run_dir`, on fresh
/// overlays, with `devices` behind the controller's 9p devices, each QEMU confined as
/// given (guest, controller). Returns once both run.
#[allow(clippy::too_many_arguments)]
async fn launch(
    qemu: &std::path::Path,
    store: &Store,
    base: &Base,
    profile: &Profile,
    run_dir: &RunDir,
    devices: &[ControllerShare],
    confinement: (Confinement, Confinement),
    opts: &SessionOptions,
) -> Result<(Vm, Vm, PairSockets)> {
    let sockets = PairSockets::new(run_dir.path())?;
    let sockets = &sockets;
    let overlays = PairFiles {
        kernel: base.file(files::KERNEL),
        guest_initrd: base.file(files::GUEST_INITRD),
        controller_initrd: base.file(files::CONTROLLER_INITRD),
        guest_disk: run_dir.path().join("guest.qcow2"),
        controller_disk: run_dir.path().join("controller.qcow2"),
        guest_vars: run_dir.path().join(files::GUEST_VARS),
        guest_tpm: run_dir.path().join(files::GUEST_TPM),
    };
    // What a firmware guest writes besides its disk is the run's own copy: QEMU writes the
    // UEFI variables back once the state is loaded, and swtpm its state when it ends.
    if let Some(g) = &base.manifest.pair.guest {
        if g.uefi.is_some() {
            let vars = &overlays.guest_vars;
            fs::copy(base.file(files::GUEST_VARS), vars)
                .ctx(|| format!("copying the UEFI variables to {}", vars.display()))?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(vars, fs::Permissions::from_mode(0o600))
                .ctx(|| format!("setting the mode of {}", vars.display()))?;
        }
        if g.tpm {
            tpm::copy_state(&base.file(files::GUEST_TPM), &overlays.guest_tpm)?;
        }
    }
    let (guest_disk, controller_disk) = (
        base.file(files::GUEST_DISK),
        base.file(files::CONTROLLER_DISK),
    );
    let templates = store.cache.join(overlay::TEMPLATES_DIR);
    let (g, c) = tokio::join!(
        overlay::create_from_template(&guest_disk, &overlays.guest_disk, &templates),
        overlay::create_from_template(&controller_disk, &overlays.controller_disk, &templates)
    );
    g?;
    c?;
    let pair = &base.manifest.pair;
    if opts.cold {
        let mut guest = pair.guest_spec(&overlays, &RamMode::Anonymous, sockets);
        let mut controller = pair.controller_spec(&overlays, &RamMode::Anonymous, sockets, devices);
        guest.confinement = confinement.0;
        controller.confinement = confinement.1;
        let (g, c) = lifecycle::start(
            qemu,
            guest,
            controller,
            profile.guest_ready_marker(),
            opts.boot_timeout,
        )
        .await?;
        let secrets = base.secrets()?;
        lifecycle::setup(
            sockets,
            SetupRequest {
                client_key: secrets.client_key,
                guest_host_key: base.manifest.guest_host_key.clone(),
                guest_user: profile.guest_user(),
                guest_script: profile.guest_setup_script(&secrets.smb_password)?,
                guest_command: profile.guest_setup_command().into(),
                job_server: profile.job_server(),
                ssh_wait: opts.boot_timeout,
                smb_password: secrets.smb_password,
            },
        )
        .await?;
        Ok((g, c, sockets.clone()))
    } else {
        let ram = RamMode::Revive {
            guest: base.file(files::GUEST_RAM),
            controller: base.file(files::CONTROLLER_RAM),
            readonly: qemu::private_ram_can_be_readonly(base.manifest.qemu_version),
        };
        let mut guest = pair.guest_spec(&overlays, &ram, sockets);
        let mut controller = pair.controller_spec(&overlays, &ram, sockets, devices);
        guest.confinement = confinement.0;
        controller.confinement = confinement.1;
        // The guest's device is the snapshot's; a fresh generation makes its kernel reseed.
        if pair.guest_has_generation_id() {
            guest.generation_id = Some(generation(
                &base.manifest.id,
                !opts.replay_snapshot_randomness,
            ));
        }
        let (g, c) = lifecycle::revive(
            qemu,
            guest,
            controller,
            &base.file(files::GUEST_STATE),
            &base.file(files::CONTROLLER_STATE),
        )
        .await?;
        Ok((g, c, sockets.clone()))
    }
}

/// The error for a VM whose QEMU exited while it was needed.
pub(crate) fn vm_died(vm: &Vm, status: Result<std::process::ExitStatus>) -> Error {
    // A panic's own line scrolls away under its backtrace: put it first.
    let mut tail = fs::read_to_string(&vm.spec.console_log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("Kernel panic"))
        .map(|l| format!("    {}\n    ...\n", l.trim()))
        .unwrap_or_default();
    tail.push_str(&crate::host::process::tail_of_file(
        &vm.spec.console_log,
        15,
    ));
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
