//! Bootstrap: profile → base, the same for every profile. Makes the guest's disk (the
//! Debian images, or a Windows install), boots the pair once with RAM in files, waits until
//! the guest is ready for jobs (sshd up, the controller connected to it and its share
//! mounted or mapped there), and freezes both VMs together, links up, into an immutable
//! base.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use link::net;

use media::windows::Profile as WinKind;

use crate::host::fs::{random_hex, write_private, BuildDir, FileLock};
use crate::host::process::run_tool;
use crate::host::{programs, Dirs};
use crate::images::{self, kernel_append, ControllerImages, DebianSource, Images};
use crate::machine::accel::{self, AccelChoice};
use crate::machine::confine::{self, Policy};
use crate::machine::qemu::{QemuFacts, Version};
use crate::pair::lifecycle::{self, SetupRequest};
use crate::pair::{generation, PairConfig, PairFiles, PairSockets, RamMode, RunDir};
use crate::profile::windows::{self, Hardware, WindowsProfile};
use crate::profile::Profile;
use crate::progress::Progress;
use crate::store::{self, files, Base, Manifest, Secrets, Store, BASE_FORMAT};
use crate::{Error, IoContext, Result};

#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// The guest; a Windows profile carries where its media are (`sources`).
    pub profile: Profile,
    pub name: Option<String>,
    pub memory_mib: u64,
    pub cpus: u32,
    pub accel: AccelChoice,
    /// How long the guest and controller may take to become ready (a Windows guest: its
    /// first boot until SSH answers; the install has its own limit).
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

/// What the pair boots: the controller's images, and the guest's — the Debian images, or
/// the Windows install the first boot starts from (made inside the build, so a base that
/// exists costs no install).
// One value per bootstrap: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Parts {
    Debian(Images),
    Windows {
        controller: ControllerImages,
        kind: WinKind,
        profile: WindowsProfile,
        hardware: Hardware,
        install: String,
    },
}

impl Parts {
    fn kernel(&self) -> &images::kernel::Kernel {
        match self {
            Parts::Debian(i) => &i.kernel,
            Parts::Windows { controller, .. } => &controller.kernel,
        }
    }
    /// The names of every artifact the base is made of.
    fn names(&self) -> [String; 5] {
        let kernel = self
            .kernel()
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match self {
            Parts::Debian(built) => [
                kernel,
                artifact_name(&built.guest_initrd),
                artifact_name(&built.controller_initrd),
                artifact_name(&built.guest.disk),
                artifact_name(&built.controller.disk),
            ],
            Parts::Windows {
                controller,
                install,
                ..
            } => [
                kernel,
                String::new(),
                artifact_name(&controller.initrd),
                install.clone(),
                artifact_name(&controller.rootfs.disk),
            ],
        }
    }
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
    // A Windows base is named by the digests of its media: read them (and check the host
    // has the firmware and the TPM the settings want) before anything is built.
    let profile = match &opts.profile {
        Profile::Debian(r) => Profile::Debian(r.clone()),
        Profile::Windows(w) => Profile::Windows(windows::bootstrap::with_digests(dirs, w).await?),
        Profile::WindowsXp(w) => {
            Profile::WindowsXp(windows::bootstrap::with_digests(dirs, w).await?)
        }
    };
    if let Some((kind, w)) = profile.windows() {
        windows::check_host(&w.public_settings(kind)?)?;
    }
    let source = DebianSource::default();
    let qemu = programs::path_of(programs::QEMU)?;
    let (debian, controller) = match &profile {
        Profile::Debian(recipe) => (
            Some(images::ensure(dirs, &source, recipe, progress).await?),
            None,
        ),
        _ => (
            None,
            Some(images::ensure_controller(dirs, &source, progress).await?),
        ),
    };
    // The KVM probe boots the kernel with an initramfs of the pair (the guest's, as ever
    // for Debian).
    let (kernel, probe_initrd) = match (&debian, &controller) {
        (Some(i), _) => (i.kernel.vmlinuz.clone(), i.guest_initrd.clone()),
        (None, Some(c)) => (c.kernel.vmlinuz.clone(), c.initrd.clone()),
        (None, None) => unreachable!("one of the two was made above"),
    };
    let accel = accel::resolve(opts.accel, dirs, &qemu, &kernel, &probe_initrd, progress).await?;
    let facts = QemuFacts::of(&dirs.cache, &qemu).await?;
    let qemu_version = facts.version;
    let mut guest = None;
    let parts = match (debian, controller, profile.windows()) {
        (Some(built), _, _) => Parts::Debian(built),
        (None, Some(controller), Some((kind, w))) => {
            let settings = w.public_settings(kind)?;
            let alias = if kind == WinKind::Windows {
                "q35"
            } else {
                "pc"
            };
            let hardware = w.hardware(
                kind,
                accel,
                facts.machine(&qemu, alias)?,
                opts.memory_mib,
                opts.cpus,
            )?;
            hardware.check(&settings)?;
            guest = Some(windows::firmware_guest(&settings, &hardware));
            Parts::Windows {
                controller,
                kind,
                profile: w.clone(),
                install: windows::bootstrap::install_name(kind, w, &hardware)?,
                hardware,
            }
        }
        _ => unreachable!("a profile is Debian or Windows"),
    };
    let guest_append = match &parts {
        Parts::Debian(i) => kernel_append(&i.guest.init),
        Parts::Windows { .. } => String::new(),
    };
    let controller_init = match &parts {
        Parts::Debian(i) => i.controller.init.clone(),
        Parts::Windows { controller, .. } => controller.rootfs.init.clone(),
    };
    let pair = PairConfig {
        accel,
        machine: facts.machine(&qemu, "q35")?,
        cpu: accel.cpu_model().into(),
        guest_memory_mib: opts.memory_mib,
        guest_cpus: opts.cpus,
        controller_memory_mib: CONTROLLER_MEMORY_MIB,
        guest_append,
        controller_append: format!(
            "{} {}",
            kernel_append(&controller_init),
            profile.share_semantics().kernel_param()
        ),
        rtc_base: RTC_BASE.into(),
        guest,
    };
    let inputs = BaseInputs {
        format: BASE_FORMAT,
        profile: &profile,
        pair: &pair,
        qemu: qemu_version,
        images: parts.names(),
        guest_setup: profile.guest_setup_script("PASSWORD")?,
    };
    let id = crate::images::cache::Key::new("base", &inputs)?.hash;
    let lock = FileLock::exclusive(&store.bases.join(format!(".{id}.lock"))).await?;
    if !store.base_dir(&id).join(store::MANIFEST).is_file() {
        let tmp = BuildDir::create(&store.bases, &id)?;
        let job = Job {
            qemu: &qemu,
            dirs,
            parts: &parts,
            profile: &profile,
            pair: &pair,
            qemu_version,
            opts,
            id: &id,
            store: &store,
            progress,
        };
        job.build(tmp.path()).await?;
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

/// One base being made.
struct Job<'a> {
    qemu: &'a Path,
    dirs: &'a Dirs,
    parts: &'a Parts,
    profile: &'a Profile,
    pair: &'a PairConfig,
    qemu_version: Version,
    opts: &'a BootstrapOptions,
    id: &'a str,
    store: &'a Store,
    progress: &'a Progress,
}

/// What the guest's preparation leaves for the rest of the build.
struct Prepared {
    secrets: Secrets,
    /// The guest's SSH host key; empty: learned at setup (Windows made its own).
    host_key: String,
    packages: BTreeMap<String, String>,
}

impl Job<'_> {
    async fn build(&self, dir: &Path) -> Result<()> {
        let (qemu, pair, opts, id, store, progress) = (
            self.qemu,
            self.pair,
            self.opts,
            self.id,
            self.store,
            self.progress,
        );
        let mut timings = BTreeMap::new();
        let prepared = self.prepare(dir, &mut timings).await?;

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
            guest_vars: dir.join(files::GUEST_VARS),
            guest_tpm: dir.join(files::GUEST_TPM),
        };
        let ram = RamMode::Shared {
            guest: dir.join(files::GUEST_RAM),
            controller: dir.join(files::CONTROLLER_RAM),
        };
        let shares = lifecycle::idle_shares(sockets_dir.path())?;
        let mut guest_spec = pair.guest_spec(&files, &ram, &sockets);
        let mut controller_spec = pair.controller_spec(&files, &ram, &sockets, &shares);
        // Neither VM serves a host directory yet: as root, both become the QEMU user, and
        // the guest's, which has no 9p device at all, sees an empty root.
        let policy = Policy::for_host(&store.cache, qemu).await?;
        guest_spec.confinement = policy
            .plain()
            .in_empty_root(&confine::empty_root(sockets_dir.path())?);
        controller_spec.confinement = policy.plain();
        // Only the guest gets a VM Generation ID: the job's randomness is the guest's. (The
        // controller's kernel would reseed too, but its notification costs a revived TCG
        // controller ~0.1 CPU-s of ACPI interpretation per run, and nothing of a job draws
        // on it: the SSH and SMB sessions it serves were keyed at bootstrap either way.)
        if pair.guest_has_generation_id() {
            guest_spec.generation_id = Some(generation(id, false));
        }
        let powered_on = Instant::now();
        let (mut guest, mut controller) = lifecycle::start(
            qemu,
            guest_spec,
            controller_spec,
            self.profile.guest_ready_marker(),
            opts.timeout,
        )
        .await?;
        step.done();
        timings.insert("boot".into(), t.elapsed().as_secs_f64());

        let step = progress.step(match self.profile.windows() {
            None => "connecting the controller to the guest (SSH, SMB)".to_string(),
            Some(_) => format!(
                "waiting for the guest's SSH, then mapping the share ({}: with net use, the \
                 volume slots mounted in Cygwin)",
                windows::SHARE_DRIVE
            ),
        });
        let t = Instant::now();
        let request = SetupRequest {
            client_key: prepared.secrets.client_key.clone(),
            guest_host_key: prepared.host_key.clone(),
            guest_user: self.profile.guest_user(),
            smb_password: prepared.secrets.smb_password.clone(),
            guest_script: self
                .profile
                .guest_setup_script(&prepared.secrets.smb_password)?,
            guest_command: self.profile.guest_setup_command().into(),
            job_server: self.profile.job_server(),
            // A guest without a marker is ready when SSH answers: within the timeout from
            // its power-on (the controller's own boot is not the guest's to pay).
            ssh_wait: if self.profile.guest_ready_marker().is_some() {
                SSH_WAIT_AFTER_MARKER
            } else {
                opts.timeout.saturating_sub(powered_on.elapsed())
            },
        };
        // The guest may die while the controller waits for it (a Windows that refuses to
        // boot powers off): then say so at once.
        let set_up = async {
            let r = tokio::select! {
                r = lifecycle::setup(&sockets, request) => r,
                (vm, status) = lifecycle::first_exit(&mut guest, &mut controller) => {
                    Err(crate::run::vm_died(vm, status))
                }
            };
            let r = match r {
                Ok(key) => {
                    let seed = crate::host::fs::random_hex(64)?;
                    lifecycle::settle(&sockets, self.profile.settle_scripts(seed)?, SETTLE_QUIET)
                        .await
                        .map(|()| key)
                }
                Err(e) => Err(e),
            };
            r
        };
        let learned = match set_up.await {
            Ok(key) => key,
            Err(e) if self.profile.keeps_failures() && guest.process.try_wait()?.is_none() => {
                let keep = store.failure_dir(windows::STAGE_FIRST_BOOT)?;
                let (console, screenshot) =
                    windows::install::keep_evidence(&mut guest, &keep).await?;
                let _ = windows::install::keep_evidence(&mut controller, &keep).await;
                return Err(Error::StageFailed(Box::new(crate::error::StageFailure {
                    stage: windows::STAGE_FIRST_BOOT.into(),
                    problem: format!(
                        "got no SSH session in the guest within {} s of its power-on (a \
                         slow host or disk may need a longer --timeout): {e}",
                        opts.timeout.as_secs()
                    ),
                    tail: crate::host::process::tail_of_file(&console, 15),
                    console,
                    screenshot,
                })));
            }
            Err(e) => return Err(e),
        };
        let host_key = if learned.trim().is_empty() {
            prepared.host_key.clone()
        } else {
            learned.trim().to_string()
        };
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
        crate::machine::tpm::take_back(&dir.join(files::GUEST_TPM))?;
        step.done();
        timings.insert("snapshot".into(), t.elapsed().as_secs_f64());

        let step = progress.step("checksumming and sealing the base");
        let json =
            serde_json::to_vec(&prepared.secrets).ctx(|| "serialising the base's secrets")?;
        write_private(&dir.join(store::SECRETS), &json, false)?;
        let mut sums = BTreeMap::new();
        for name in base_files(dir)? {
            sums.insert(name.clone(), store::checksum(&dir.join(&name))?);
        }
        let manifest = Manifest {
            format: BASE_FORMAT,
            id: id.to_string(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            profile: self.profile.name().into(),
            inputs: serde_json::to_value(self.profile).ctx(|| "recording the profile's inputs")?,
            guestbox_version: env!("CARGO_PKG_VERSION").into(),
            agent: store::agent_id(),
            qemu_version: self.qemu_version,
            pair: pair.clone(),
            guest_address: net::GUEST_ADDRESS.to_string(),
            controller_address: net::CONTROLLER_ADDRESS.to_string(),
            guest_host_key: host_key,
            guest_packages: prepared.packages,
            files: sums,
            timings,
            seal: None,
        }
        .sealed()?;
        let json = serde_json::to_vec_pretty(&manifest).ctx(|| "writing the manifest")?;
        fs::write(dir.join(store::MANIFEST), json).ctx(|| "writing the manifest")?;
        store::import::seal(dir, store::import::ram_mode(store, self.qemu_version))?;
        step.done();
        Ok(())
    }

    /// The base's disks, kernel and initramfs images, secrets: copied from the images, or
    /// (Windows) from the install, made now if it is not cached.
    async fn prepare(&self, dir: &Path, timings: &mut BTreeMap<String, f64>) -> Result<Prepared> {
        let qemu_img = programs::path_of(programs::QEMU_IMG)?;
        // A full copy: a base must not depend on the image cache, which may be cleared.
        let copy_disk = |src: PathBuf, name: &'static str| {
            let qemu_img = qemu_img.clone();
            let dst = dir.join(name);
            async move {
                let src_s = src.to_string_lossy().into_owned();
                let dst_s = dst.to_string_lossy().into_owned();
                run_tool(
                    "qemu-img convert",
                    &qemu_img,
                    &["convert", "-O", "qcow2", &src_s, &dst_s],
                )
                .await
                .map(|_| ())
            }
        };
        let copy = |src: &Path, name: &str| -> Result<()> {
            fs::copy(src, dir.join(name)).ctx(|| format!("copying {}", src.display()))?;
            Ok(())
        };
        match self.parts {
            Parts::Debian(built) => {
                let step = self.progress.step("preparing the base's disks");
                let t = Instant::now();
                copy_disk(built.guest.disk.clone(), files::GUEST_DISK).await?;
                copy_disk(built.controller.disk.clone(), files::CONTROLLER_DISK).await?;
                copy(&built.kernel.vmlinuz, files::KERNEL)?;
                copy(&built.guest_initrd, files::GUEST_INITRD)?;
                copy(&built.controller_initrd, files::CONTROLLER_INITRD)?;
                let secrets = Secrets {
                    client_key: fs::read_to_string(built.guest.client_key())
                        .ctx(|| "reading the client key")?,
                    smb_password: random_hex(24)?,
                    admin_password: None,
                };
                let host_key = fs::read_to_string(built.guest.host_public_key())
                    .ctx(|| "reading the guest host key")?;
                let host_key = host_key
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                step.done();
                timings.insert("prepare".into(), t.elapsed().as_secs_f64());
                Ok(Prepared {
                    secrets,
                    host_key,
                    packages: built.guest.packages.clone(),
                })
            }
            Parts::Windows {
                controller,
                kind,
                profile,
                hardware,
                ..
            } => {
                let t = Instant::now();
                let installed = windows::bootstrap::ensure_installed(
                    self.dirs,
                    self.store,
                    self.qemu,
                    *kind,
                    profile,
                    hardware,
                    self.progress,
                )
                .await?;
                timings.insert("install".into(), t.elapsed().as_secs_f64());
                let step = self.progress.step("preparing the base's disks");
                let t = Instant::now();
                copy_disk(installed.disk(), files::GUEST_DISK).await?;
                copy_disk(controller.rootfs.disk.clone(), files::CONTROLLER_DISK).await?;
                copy(&controller.kernel.vmlinuz, files::KERNEL)?;
                copy(&controller.initrd, files::CONTROLLER_INITRD)?;
                if self.pair.guest.as_ref().is_some_and(|g| g.uefi.is_some()) {
                    copy(&installed.vars(), files::GUEST_VARS)?;
                    use std::os::unix::fs::PermissionsExt;
                    let vars = dir.join(files::GUEST_VARS);
                    fs::set_permissions(&vars, fs::Permissions::from_mode(0o644))
                        .ctx(|| format!("setting the mode of {}", vars.display()))?;
                }
                if self.pair.guest.as_ref().is_some_and(|g| g.tpm) {
                    crate::machine::tpm::copy_state(&installed.tpm(), &dir.join(files::GUEST_TPM))?;
                }
                let secrets = Secrets {
                    client_key: installed.secrets.client_key.clone(),
                    smb_password: random_hex(24)?,
                    admin_password: Some(installed.secrets.admin_password.clone()),
                };
                step.done();
                timings.insert("prepare".into(), t.elapsed().as_secs_f64());
                Ok(Prepared {
                    secrets,
                    host_key: String::new(),
                    packages: BTreeMap::new(),
                })
            }
        }
    }
}

/// How long the controller waits for SSH once the guest printed its ready marker.
const SSH_WAIT_AFTER_MARKER: Duration = Duration::from_secs(120);

/// Every file of a base directory but the manifest and secrets, by its name in the
/// directory (`tpm/…` for the TPM state), sorted.
fn base_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))? {
        let e = e.ctx(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == store::MANIFEST || name == store::SECRETS {
            continue;
        }
        let kind = e.file_type().ctx(|| format!("reading {}", dir.display()))?;
        if kind.is_dir() {
            for f in fs::read_dir(e.path()).ctx(|| format!("reading {}", e.path().display()))? {
                let f = f.ctx(|| format!("reading {}", e.path().display()))?;
                if f.file_type().is_ok_and(|t| t.is_file()) {
                    names.push(format!("{name}/{}", f.file_name().to_string_lossy()));
                }
            }
        } else if kind.is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
