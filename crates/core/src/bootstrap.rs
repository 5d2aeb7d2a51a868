//! Bootstrap: profile → base. Boots the pair once with RAM in files, waits until the
//! guest is ready for jobs (sshd up, the controller connected to it and its share mounted
//! there), and freezes both VMs together, links up, into an immutable base.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use link::net;

use crate::host::fs::{random_hex, write_private, BuildDir, FileLock};
use crate::host::process::run_tool;
use crate::host::{programs, Dirs};
use crate::images::{self, kernel_append, DebianSource, Images};
use crate::machine::accel::{self, AccelChoice};
use crate::machine::confine::{self, Policy};
use crate::machine::qemu::{QemuFacts, Version};
use crate::pair::lifecycle::{self, SetupRequest};
use crate::pair::{generation, PairConfig, PairFiles, PairSockets, RamMode, RunDir};
use crate::profile::Profile;
use crate::progress::Progress;
use crate::store::{self, files, Base, Manifest, Secrets, Store, BASE_FORMAT};
use crate::{Error, IoContext, Result};

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
/// How long the pair idles after setup before it is frozen (see `lifecycle::settle`):
/// longer than the guest kernel's periodic housekeeping that setup sets off.
const SETTLE_QUIET: Duration = Duration::from_secs(3);
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
    qemu: Version,
    images: [String; 5],
    /// The guest's bootstrap script (its share mount options live in the snapshot), with
    /// a stand-in for the per-base password: new options must not revive an old base.
    guest_setup: String,
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
    programs::require(programs::VM)?;
    dirs.create()?;
    let store = Store::new(dirs);
    store.create()?;
    let Profile::Debian(recipe) = &opts.profile;
    let built = images::ensure(dirs, &DebianSource::default(), recipe, progress).await?;
    let qemu = programs::path_of(programs::QEMU)?;
    let accel = accel::resolve(
        opts.accel,
        dirs,
        &qemu,
        &built.kernel.vmlinuz,
        &built.guest_initrd,
        progress,
    )
    .await?;
    let facts = QemuFacts::of(&dirs.cache, &qemu).await?;
    let qemu_version = facts.version;
    let pair = PairConfig {
        accel,
        machine: facts.machine(&qemu, "q35")?,
        cpu: accel.cpu_model().into(),
        guest_memory_mib: opts.memory_mib,
        guest_cpus: opts.cpus,
        controller_memory_mib: CONTROLLER_MEMORY_MIB,
        guest_append: kernel_append(&built.guest.init),
        controller_append: format!(
            "{} {}",
            kernel_append(&built.controller.init),
            opts.profile.share_semantics().kernel_param()
        ),
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
        guest_setup: opts.profile.guest_setup_script("PASSWORD"),
    };
    let id = crate::images::cache::Key::new("base", &inputs)?.hash;
    let lock = FileLock::exclusive(&store.bases.join(format!(".{id}.lock"))).await?;
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

#[allow(clippy::too_many_arguments)]
async fn build(
    qemu: &Path,
    built: &Images,
    pair: &PairConfig,
    qemu_version: Version,
    opts: &BootstrapOptions,
    id: &str,
    dir: &Path,
    store: &Store,
    progress: &Progress,
) -> Result<()> {
    let mut timings = BTreeMap::new();
    let step = progress.step("preparing the base's disks");
    let t = Instant::now();
    let qemu_img = programs::path_of(programs::QEMU_IMG)?;
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
    let sockets_dir = RunDir::create(&store.runs, "bootstrap-")?;
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
    let shares = lifecycle::idle_shares(sockets_dir.path())?;
    let mut guest_spec = pair.guest_spec(&files, &ram, &sockets);
    let mut controller_spec = pair.controller_spec(&files, &ram, &sockets, &shares);
    // Neither VM serves a host directory yet: as root, both become the QEMU user, and the
    // guest's, which has no 9p device at all, sees an empty root.
    let policy = Policy::for_host(&store.cache, qemu).await?;
    guest_spec.confinement = policy
        .plain()
        .in_empty_root(&confine::empty_root(sockets_dir.path())?);
    controller_spec.confinement = policy.plain();
    // Only the guest gets a VM Generation ID: the job's randomness is the guest's. (The
    // controller's kernel would reseed too, but its notification costs a revived TCG
    // controller ~0.1 CPU-s of ACPI interpretation per run, and nothing of a job draws on
    // it: the SSH and SMB sessions it serves were keyed at bootstrap either way.)
    guest_spec.generation_id = Some(generation(id, false));
    let (guest, controller) =
        lifecycle::start(qemu, guest_spec, controller_spec, opts.timeout).await?;
    step.done();
    timings.insert("boot".into(), t.elapsed().as_secs_f64());

    let step = progress.step("connecting the controller to the guest (SSH, SMB)");
    let t = Instant::now();
    lifecycle::setup(
        &sockets,
        SetupRequest {
            client_key: secrets.client_key.clone(),
            guest_host_key: host_key.clone(),
            guest_user: opts.profile.guest_user().into(),
            smb_password: secrets.smb_password.clone(),
            guest_script: opts.profile.guest_setup_script(&secrets.smb_password),
        },
    )
    .await?;
    let seed = crate::host::fs::random_hex(64)?;
    lifecycle::settle(&sockets, opts.profile.settle_scripts(seed)?, SETTLE_QUIET).await?;
    step.done();
    timings.insert("setup".into(), t.elapsed().as_secs_f64());

    let step = progress.step("freezing both VMs into the base");
    let t = Instant::now();
    lifecycle::freeze(
        guest,
        controller,
        &dir.join(files::GUEST_STATE),
        &dir.join(files::CONTROLLER_STATE),
    )
    .await?;
    step.done();
    timings.insert("snapshot".into(), t.elapsed().as_secs_f64());

    let step = progress.step("checksumming and sealing the base");
    let json = serde_json::to_vec(&secrets).ctx(|| "serialising the base's secrets")?;
    write_private(&dir.join(store::SECRETS), &json, false)?;
    let mut sums = BTreeMap::new();
    for name in files::ALL {
        sums.insert(name.to_string(), store::checksum(&dir.join(name))?);
    }
    let manifest = Manifest {
        format: BASE_FORMAT,
        id: id.to_string(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        profile: opts.profile.name().into(),
        inputs: serde_json::to_value(&opts.profile).ctx(|| "recording the profile's inputs")?,
        guestbox_version: env!("CARGO_PKG_VERSION").into(),
        agent: store::agent_id(),
        qemu_version,
        pair: pair.clone(),
        guest_address: net::GUEST_ADDRESS.to_string(),
        controller_address: net::CONTROLLER_ADDRESS.to_string(),
        guest_host_key: host_key,
        guest_packages: built.guest.packages.clone(),
        files: sums,
        timings,
        seal: None,
    }
    .sealed()?;
    let json = serde_json::to_vec_pretty(&manifest).ctx(|| "writing the manifest")?;
    fs::write(dir.join(store::MANIFEST), json).ctx(|| "writing the manifest")?;
    store::import::seal(dir, store::import::ram_mode(store, qemu_version))?;
    step.done();
    Ok(())
}
