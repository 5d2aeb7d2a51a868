//! Bootstrap: profile → base. Boots the pair once with RAM in files, waits until the
//! guest is ready for jobs (sshd up, the controller connected to it and its share mounted
//! there), and freezes both VMs together, links up, into an immutable base.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::accel::{self, AccelChoice};
use crate::boot::Vm;
use crate::boot_image::kernel_append;
use crate::control::Control;
use crate::images::cache::{lock_exclusive, BuildDir};
use crate::images::rootfs::{CONTROLLER_ADDRESS, GUEST_ADDRESS, GUEST_READY_MARKER};
use crate::images::{self, DebianSource, Images};
use crate::pair::{share_tags, ControllerShare, PairConfig, PairFiles, PairSockets, RamMode};
use crate::paths::Dirs;
use crate::process::run_tool;
use crate::profile::Profile;
use crate::progress::Progress;
use crate::store::{self, files, Base, Manifest, Secrets, Store, BASE_FORMAT};
use crate::{hostcheck, qemu_info, snapshot, Error, IoContext, Result};

#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub profile: Profile,
    pub name: Option<String>,
    pub memory_mib: u64,
    pub cpus: u32,
    pub accel: AccelChoice,
    /// How long the guest and controller may take to become ready.
    pub timeout: Duration,
}

pub const CONTROLLER_MEMORY_MIB: u64 = 256;
/// The guest's clock at every cold boot, as in the original (`-rtc base=2010-01-01`).
pub const RTC_BASE: &str = "2010-01-01";

/// Checks sizes given by the user before anything starts.
pub fn check_resources(memory_mib: u64, cpus: u32) -> Result<()> {
    if !(128..=1 << 20).contains(&memory_mib) {
        return Err(Error::Usage(format!(
            "--memory {memory_mib} MiB is out of range (128 MiB to 1 TiB)"
        )));
    }
    if !(1..=64).contains(&cpus) {
        return Err(Error::Usage(format!(
            "--cpus {cpus} is out of range (1 to 64)"
        )));
    }
    Ok(())
}

#[derive(Serialize)]
struct BaseInputs<'a> {
    format: u32,
    profile: &'a Profile,
    pair: &'a PairConfig,
    qemu: (u32, u32, u32),
    images: [String; 5],
}

fn artifact_name(path: &Path) -> String {
    path.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Makes the base for `opts` (or finds it: bases are content-addressed) and names it.
pub async fn bootstrap(dirs: &Dirs, opts: &BootstrapOptions, progress: &Progress) -> Result<Base> {
    check_resources(opts.memory_mib, opts.cpus)?;
    if let Some(name) = &opts.name {
        store::check_name(name)?;
    }
    hostcheck::require(hostcheck::VM)?;
    dirs.create()?;
    let store = Store::new(dirs);
    store.create()?;
    let Profile::Debian(recipe) = &opts.profile;
    let built = images::ensure(dirs, &DebianSource::default(), recipe, progress).await?;
    let qemu = hostcheck::path_of(hostcheck::QEMU)?;
    let accel = accel::resolve(
        opts.accel,
        dirs,
        &qemu,
        &built.kernel.vmlinuz,
        &built.guest_initrd,
        progress,
    )
    .await?;
    let qemu_version = qemu_info::version(&qemu).await?;
    let pair = PairConfig {
        accel,
        machine: qemu_info::resolve_machine(&qemu, "q35").await?,
        cpu: accel.cpu_model().into(),
        guest_memory_mib: opts.memory_mib,
        guest_cpus: opts.cpus,
        controller_memory_mib: CONTROLLER_MEMORY_MIB,
        guest_append: kernel_append(&built.guest.init),
        controller_append: kernel_append(&built.controller.init),
        rtc_base: RTC_BASE.into(),
    };
    let inputs = BaseInputs {
        format: BASE_FORMAT,
        profile: &opts.profile,
        pair: &pair,
        qemu: qemu_version,
        images: [
            built
                .kernel
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            artifact_name(&built.guest_initrd),
            artifact_name(&built.controller_initrd),
            artifact_name(&built.guest.disk),
            artifact_name(&built.controller.disk),
        ],
    };
    let id = crate::images::cache::Key::new("base", &inputs)?.hash;
    let lock = lock_exclusive(&store.bases.join(format!(".{id}.lock"))).await?;
    if !store.base_dir(&id).join(store::MANIFEST).is_file() {
        let tmp = BuildDir::create(&store.bases, &id)?;
        build(
            &qemu,
            &built,
            &pair,
            qemu_version,
            opts,
            &id,
            tmp.path(),
            &store,
            progress,
        )
        .await?;
        fs::rename(tmp.path(), store.base_dir(&id)).ctx(|| format!("registering base {id}"))?;
    } else {
        progress.note(&format!("base {} is already bootstrapped", &id[..12]));
    }
    drop(lock);
    if let Some(name) = &opts.name {
        store.set_name(name, &id)?;
    }
    store.load(&id)
}

/// A pair's sockets, consoles and overlays, under the runs directory. Removed on drop;
/// while it lives its `lock` file is held, so `gc` can tell it from one left by a
/// guestbox that was killed.
pub struct RunDir {
    dir: tempfile::TempDir,
    _lock: fs::File,
}

impl RunDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn socket_dir(store: &Store, prefix: &str) -> Result<RunDir> {
    fs::create_dir_all(&store.runs).ctx(|| format!("creating {}", store.runs.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&store.runs)
        .ctx(|| format!("creating a run directory in {}", store.runs.display()))?;
    let lock_path = dir.path().join("lock");
    let lock = fs::File::create(&lock_path).ctx(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .ctx(|| format!("locking {}", lock_path.display()))?;
    Ok(RunDir { dir, _lock: lock })
}

/// Empty directories behind the controller's 9p devices while no run uses them.
pub fn idle_shares(dir: &Path) -> Result<Vec<ControllerShare>> {
    share_tags()
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

/// Random hex from the kernel's generator.
pub fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .ctx(|| "reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Boots both VMs until their ready markers, concurrently.
pub async fn start_pair(
    qemu: &Path,
    guest: crate::vm::VmSpec,
    controller: crate::vm::VmSpec,
    timeout: Duration,
) -> Result<(Vm, Vm)> {
    let mut g = Vm::start(qemu, guest)?;
    let mut c = Vm::start(qemu, controller)?;
    let (rg, rc) = tokio::join!(
        g.wait_for_console(GUEST_READY_MARKER, timeout),
        c.wait_for_console(agent::READY_MARKER, timeout)
    );
    rg?;
    rc?;
    Ok((g, c))
}

/// Gives the controller its credentials and has it connect to the guest and mount the
/// share there.
pub async fn setup_pair(
    control: &Path,
    profile: &Profile,
    secrets: &Secrets,
    host_key: &str,
) -> Result<()> {
    let mut channel = Control::connect(control, Duration::from_secs(10)).await?;
    channel
        .send(&agent::Request::Setup(agent::Setup {
            client_key: secrets.client_key.clone(),
            guest_host_key: host_key.to_string(),
            guest_user: profile.guest_user().into(),
            smb_password: secrets.smb_password.clone(),
            guest_script: profile.guest_setup_script(&secrets.smb_password),
        }))
        .await?;
    match tokio::time::timeout(Duration::from_secs(180), channel.next_event()).await {
        Ok(Ok(agent::Event::SetupDone)) => Ok(()),
        Ok(Ok(agent::Event::Error { message })) => {
            Err(Error::Other(format!("controller: {message}")))
        }
        Ok(Ok(other)) => Err(Error::Other(format!(
            "controller: unexpected answer to setup: {other:?}"
        ))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Other(
            "controller: setup did not finish within 180 s".into(),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn build(
    qemu: &Path,
    built: &Images,
    pair: &PairConfig,
    qemu_version: (u32, u32, u32),
    opts: &BootstrapOptions,
    id: &str,
    dir: &Path,
    store: &Store,
    progress: &Progress,
) -> Result<()> {
    let mut timings = BTreeMap::new();
    let step = progress.step("preparing the base's disks");
    let t = Instant::now();
    let qemu_img = hostcheck::path_of(hostcheck::QEMU_IMG)?;
    for (src, name) in [
        (&built.guest.disk, files::GUEST_DISK),
        (&built.controller.disk, files::CONTROLLER_DISK),
    ] {
        let src_s = src.to_string_lossy().into_owned();
        let dst_s = dir.join(name).to_string_lossy().into_owned();
        // A full copy: a base must not depend on the image cache, which may be cleared.
        run_tool(
            "qemu-img convert",
            &qemu_img,
            &["convert", "-O", "qcow2", &src_s, &dst_s],
        )
        .await?;
    }
    for (src, name) in [
        (&built.kernel.vmlinuz, files::KERNEL),
        (&built.guest_initrd, files::GUEST_INITRD),
        (&built.controller_initrd, files::CONTROLLER_INITRD),
    ] {
        fs::copy(src, dir.join(name)).ctx(|| format!("copying {}", src.display()))?;
    }
    let secrets = Secrets {
        client_key: fs::read_to_string(built.guest.client_key())
            .ctx(|| "reading the client key")?,
        smb_password: random_hex(24)?,
    };
    let host_key =
        fs::read_to_string(built.guest.host_public_key()).ctx(|| "reading the guest host key")?;
    let host_key = host_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    step.done();
    timings.insert("prepare".into(), t.elapsed().as_secs_f64());

    let step = progress.step(format!(
        "booting the guest and the controller ({}, {} MiB)",
        pair.accel.qemu_name(),
        pair.guest_memory_mib
    ));
    let t = Instant::now();
    let sockets_dir = socket_dir(store, "bootstrap-")?;
    let sockets = PairSockets::new(sockets_dir.path())?;
    let files = PairFiles {
        kernel: dir.join(files::KERNEL),
        guest_initrd: dir.join(files::GUEST_INITRD),
        controller_initrd: dir.join(files::CONTROLLER_INITRD),
        guest_disk: dir.join(files::GUEST_DISK),
        controller_disk: dir.join(files::CONTROLLER_DISK),
    };
    let ram = RamMode::Shared {
        guest: dir.join(files::GUEST_RAM),
        controller: dir.join(files::CONTROLLER_RAM),
    };
    let shares = idle_shares(sockets_dir.path())?;
    let (mut guest, mut controller) = start_pair(
        qemu,
        pair.guest_spec(&files, &ram, &sockets),
        pair.controller_spec(&files, &ram, &sockets, &shares),
        opts.timeout,
    )
    .await?;
    step.done();
    timings.insert("boot".into(), t.elapsed().as_secs_f64());

    let step = progress.step("connecting the controller to the guest (SSH, SMB)");
    let t = Instant::now();
    setup_pair(&sockets.control(), &opts.profile, &secrets, &host_key).await?;
    step.done();
    timings.insert("setup".into(), t.elapsed().as_secs_f64());

    let step = progress.step("freezing both VMs into the base");
    let t = Instant::now();
    // Stop both before saving either, so that neither sees the other vanish mid-exchange.
    snapshot::stop(&mut guest).await?;
    snapshot::stop(&mut controller).await?;
    snapshot::save(&mut guest, &dir.join(files::GUEST_STATE)).await?;
    snapshot::save(&mut controller, &dir.join(files::CONTROLLER_STATE)).await?;
    guest.shutdown(Duration::from_secs(10)).await?;
    controller.shutdown(Duration::from_secs(10)).await?;
    step.done();
    timings.insert("snapshot".into(), t.elapsed().as_secs_f64());

    let step = progress.step("checksumming and sealing the base");
    let secrets_path = dir.join(store::SECRETS);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secrets_path)
            .ctx(|| format!("creating {}", secrets_path.display()))?;
        let json = serde_json::to_vec(&secrets).map_err(|e| Error::Other(e.to_string()))?;
        f.write_all(&json)
            .ctx(|| format!("writing {}", secrets_path.display()))?;
    }
    let mut sums = BTreeMap::new();
    for name in files::ALL {
        sums.insert(name.to_string(), store::checksum(&dir.join(name))?);
    }
    let manifest = Manifest {
        format: BASE_FORMAT,
        id: id.to_string(),
        created: now_rfc3339(),
        profile: opts.profile.name().into(),
        inputs: serde_json::to_value(&opts.profile).map_err(|e| Error::Other(e.to_string()))?,
        guestbox_version: env!("CARGO_PKG_VERSION").into(),
        agent: store::agent_id(),
        qemu_version,
        pair: pair.clone(),
        guest_address: GUEST_ADDRESS.into(),
        controller_address: CONTROLLER_ADDRESS.into(),
        guest_host_key: host_key,
        guest_packages: built.guest.packages.clone(),
        files: sums,
        timings,
        seal: None,
    }
    .sealed()?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Other(e.to_string()))?;
    fs::write(dir.join(store::MANIFEST), json).ctx(|| "writing the manifest")?;
    seal(dir, ram_needs_write_access(qemu_version))?;
    step.done();
    Ok(())
}

/// QEMU before 8.2 opens a private RAM file read-write (it never writes it); 8.2 and later
/// can map it with `readonly=on`.
pub fn ram_needs_write_access(qemu: (u32, u32, u32)) -> bool {
    qemu < (8, 2, 0)
}

/// Makes every base file read-only (but the RAM files where QEMU needs to open them RW).
fn seal(dir: &Path, ram_writable: bool) -> Result<()> {
    for e in fs::read_dir(dir)
        .ctx(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let mode = if name == store::SECRETS {
            0o400
        } else if ram_writable && (name == files::GUEST_RAM || name == files::CONTROLLER_RAM) {
            0o644
        } else {
            0o444
        };
        fs::set_permissions(e.path(), fs::Permissions::from_mode(mode))
            .ctx(|| format!("sealing {name}"))?;
    }
    Ok(())
}

/// UTC time as `YYYY-MM-DDTHH:MM:SSZ` (no date crate needed for one format).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
