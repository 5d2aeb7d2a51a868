//! What happens to a pair: booted to ready, the controller set up, both frozen together,
//! both revived together. Bootstrap and run are built from these steps.

use std::fs;
use std::path::Path;
use std::time::Duration;

use link::{markers, proto, shares};

use super::control::Control;
use super::rundir::{PairSockets, CONTROL_SOCKET};
use super::ControllerShare;
use crate::host::process::tail_of_file;
use crate::machine::{snapshot, Vm, VmSpec};
use crate::{Error, IoContext, Result};

/// The least the controller's cold boot is given, whatever the guest's limit.
const CONTROLLER_BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long the controller may take to reach the guest and mount the share there.
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);

/// Boots both VMs until their ready markers, concurrently: the controller's, and the
/// guest's `guest_ready` if it prints one (a guest without one, like Windows, is ready when
/// its SSH port answers, which [`setup`] waits for). Both QMP connections are opened from
/// the start, so that QEMU's events (a full host disk) are seen on every path.
/// `timeout` bounds the guest's marker (from power-on) and, never below
/// `CONTROLLER_BOOT_LIMIT`, the controller's.
pub async fn start(
    qemu: &Path,
    guest: VmSpec,
    controller: VmSpec,
    guest_ready: Option<&str>,
    timeout: Duration,
) -> Result<(Vm, Vm)> {
    let (g, c) = tokio::join!(Vm::start(qemu, guest), Vm::start(qemu, controller));
    let (mut g, mut c) = (g?, c?);
    let guest_marker = async {
        match guest_ready {
            Some(marker) => g.wait_for_console(marker, timeout).await,
            None => Ok(()),
        }
    };
    // The controller is guestbox's own small Linux (ready in ~10 s under TCG): a short
    // limit meant for the guest must not cut its boot, and a host too slow for it still
    // fails within CONTROLLER_BOOT_LIMIT.
    let (rg, rc) = tokio::join!(
        guest_marker,
        c.wait_for_console(
            markers::CONTROLLER_READY,
            timeout.max(CONTROLLER_BOOT_LIMIT)
        )
    );
    rg?;
    rc?;
    g.qmp().await?;
    c.qmp().await?;
    Ok((g, c))
}

/// Waits until either VM's QEMU exits.
pub async fn first_exit<'a>(
    guest: &'a mut Vm,
    controller: &'a mut Vm,
) -> (&'a Vm, Result<std::process::ExitStatus>) {
    tokio::select! {
        s = guest.process.wait() => (&*guest, s),
        s = controller.process.wait() => (&*controller, s),
    }
}

/// Connects to the controller's agent.
pub async fn connect(sockets: &PairSockets) -> Result<Control> {
    Control::connect(
        &sockets.control(),
        &sockets.real(CONTROL_SOCKET),
        Duration::from_secs(10),
    )
    .await
}

/// What the controller needs at bootstrap to reach the guest and mount the share there.
pub struct SetupRequest {
    pub client_key: String,
    /// Empty: trust the key the guest shows first (see [`proto::Setup::guest_host_key`]).
    pub guest_host_key: String,
    pub guest_user: String,
    pub smb_password: String,
    /// The profile's script that mounts (Linux) or maps (Windows) the share in the guest.
    pub guest_script: String,
    /// The remote command that runs the script from stdin.
    pub guest_command: String,
    /// Open the guest's resident job server afterwards.
    pub job_server: bool,
    /// How long the guest's SSH port may take to open.
    pub ssh_wait: Duration,
}

/// Gives the controller its credentials and has it connect to the guest and run the
/// profile's bootstrap script there. Returns the guest's host key the connection trusted.
pub async fn setup(sockets: &PairSockets, request: SetupRequest) -> Result<String> {
    let mut channel = connect(sockets).await?;
    let wait = request.ssh_wait;
    channel
        .send(&proto::Request::Setup(proto::Setup {
            client_key: request.client_key,
            guest_host_key: request.guest_host_key,
            guest_user: request.guest_user,
            smb_password: request.smb_password,
            guest_script: request.guest_script,
            guest_command: request.guest_command,
            job_server: request.job_server,
            ssh_wait_secs: wait.as_secs().max(1),
        }))
        .await?;
    let console = sockets.console("controller");
    let tail = || tail_of_file(&console, 15);
    let limit = SETUP_TIMEOUT + wait;
    match tokio::time::timeout(limit, channel.next_event()).await {
        Ok(Ok(proto::Event::SetupDone { host_key })) => Ok(host_key),
        Ok(Ok(proto::Event::Error { message })) => Err(Error::Controller {
            message,
            console: console.clone(),
            tail: tail(),
        }),
        Ok(Ok(other)) => Err(Error::Controller {
            message: format!("it answered {other:?} to the setup request"),
            console: console.clone(),
            tail: tail(),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::ControllerTimeout {
            what: "connecting to the guest (SSH) and mounting the share there",
            seconds: limit.as_secs(),
            console: console.clone(),
            tail: tail(),
        }),
    }
}

/// Lets the pair come to rest before it is frozen: runs `scripts.first` (a job for the
/// guest, e.g. `sync`) through the same path a revived pair's jobs take, waits `quiet`,
/// then runs `scripts.last`.
/// Whatever the guest and controller would otherwise still be busy with after setup —
/// dirty pages to write back, journal commits, first uses of the job path's code — is then
/// done once here instead of in every revive, where under emulation each costs a burst of
/// translation.
pub async fn settle(sockets: &PairSockets, scripts: Settle, quiet: Duration) -> Result<()> {
    let mut channel = connect(sockets).await?;
    run_to_end(&mut channel, sockets, scripts.first).await?;
    tokio::time::sleep(quiet).await;
    run_to_end(&mut channel, sockets, scripts.last).await
}

/// The two jobs of [`settle`]: `first` before the quiet time, `last` just before the
/// freeze (the guest's kernel reseeds its generator there, so that the snapshot's is
/// young: a replayed revive, `--replay-snapshot-randomness`, then draws the same numbers
/// until the kernel's own reseed interval has passed).
pub struct Settle {
    pub first: String,
    pub last: String,
}

/// Runs one job on the control channel and waits for its end (status 0).
async fn run_to_end(channel: &mut Control, sockets: &PairSockets, script: String) -> Result<()> {
    channel
        .send(&proto::Request::Run(proto::Run {
            time: None,
            mounts: vec![],
            script,
            stdin: false,
            tty: None,
        }))
        .await?;
    let console = sockets.console("controller");
    loop {
        match tokio::time::timeout(SETUP_TIMEOUT, channel.next_event()).await {
            Ok(Ok(proto::Event::Exit { code: 0 })) => return Ok(()),
            Ok(Ok(proto::Event::Exit { code })) => {
                return Err(Error::Controller {
                    message: format!("the guest's settling job ended with {code}"),
                    tail: tail_of_file(&console, 15),
                    console,
                })
            }
            Ok(Ok(proto::Event::Error { message })) => {
                return Err(Error::Controller {
                    message,
                    tail: tail_of_file(&console, 15),
                    console,
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::ControllerTimeout {
                    what: "the guest's settling job",
                    seconds: SETUP_TIMEOUT.as_secs(),
                    tail: tail_of_file(&console, 15),
                    console,
                })
            }
        }
    }
}

/// Freezes both VMs into state files, then quits them. Both are stopped before either is
/// saved, so that neither sees the other vanish mid-exchange and their TCP state (the SSH
/// master, the SMB session) survives the revive.
pub async fn freeze(
    mut guest: Vm,
    mut controller: Vm,
    guest_state: &Path,
    controller_state: &Path,
) -> Result<()> {
    snapshot::stop(&mut guest).await?;
    snapshot::stop(&mut controller).await?;
    snapshot::save(&mut guest, guest_state).await?;
    snapshot::save(&mut controller, controller_state).await?;
    guest.shutdown(Duration::from_secs(10)).await?;
    controller.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}

/// Starts both VMs waiting for their saved states (specs with `incoming`), loads the states
/// concurrently and resumes both.
pub async fn revive(
    qemu: &Path,
    guest: VmSpec,
    controller: VmSpec,
    guest_state: &Path,
    controller_state: &Path,
) -> Result<(Vm, Vm)> {
    let (g, c) = tokio::join!(Vm::start(qemu, guest), Vm::start(qemu, controller));
    let (mut g, mut c) = (g?, c?);
    let (lg, lc) = tokio::join!(
        snapshot::load(&mut g, guest_state),
        snapshot::load(&mut c, controller_state)
    );
    lg.map_err(|e| revive_error(e, &g))?;
    lc.map_err(|e| revive_error(e, &c))?;
    snapshot::resume(&mut g).await?;
    snapshot::resume(&mut c).await?;
    Ok((g, c))
}

fn revive_error(e: Error, vm: &Vm) -> Error {
    Error::Revive {
        vm: vm.spec.name.clone(),
        qemu_said: vm.process.stderr_tail(5).trim().to_string(),
        source: Box::new(e),
    }
}

/// Empty directories behind the controller's 9p devices while no run uses them.
pub fn idle_shares(dir: &Path) -> Result<Vec<ControllerShare>> {
    shares::all_tags()
        .into_iter()
        .map(|tag| {
            let path = dir.join("idle").join(&tag);
            fs::create_dir_all(&path).ctx(|| format!("creating {}", path.display()))?;
            Ok(ControllerShare {
                tag,
                path,
                readonly: true,
            })
        })
        .collect()
}
