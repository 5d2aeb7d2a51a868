//! What a Windows bootstrap does before the pair boots: the digests that name its inputs,
//! and the install, run once per install inputs and kept in the image cache as an
//! artifact (`windows-install-<hash>`), so that a new base from the same ISO, mirror and
//! choices — another memory size, a first boot that failed — does not install again (a
//! real install takes 15-30 minutes under KVM).
//!
//! The install makes its own secrets: the controller's SSH key (its public half goes on the
//! floppy as the guest's only authorized key) and the administrator password (given, or
//! generated). They are kept with the installed disk, owner-only, and copied into every
//! base made from it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use media::cygwin::CygwinMirror;
use media::windows::{Profile as WinProfile, Secret};
use serde::{Deserialize, Serialize};

use super::install::{create_disk, run_install};
use super::machine::{check_host, firmware_guest, ovmf_build, Hardware};
use super::stages::{stage_specs, WindowsPaths};
use super::{media_error, WindowsProfile, DISK_FILE, OVMF_VARS_FILE, TPM_DIR};
use crate::host::fs::{random_hex, write_private};
use crate::host::process::run_tool;
use crate::host::{programs, Dirs};
use crate::images::cache::{ArtifactCache, Key};
use crate::images::{Provenance, RECIPE_VERSION};
use crate::machine::confine::Policy;
use crate::pair::{PairSockets, RunDir};
use crate::progress::Progress;
use crate::store::Store;
use crate::{Error, IoContext, Result};

/// Bump when the install (media, stage) changes in a way its recorded inputs do not show.
pub const INSTALL_RECIPE: u32 = 1;
/// The secrets of an install, in its artifact (0600).
pub const INSTALL_SECRETS: &str = "install-secrets.json";
/// COM1 of the install, kept with it.
pub const INSTALL_CONSOLE: &str = "install.console.log";

/// What an install made besides the disk.
#[derive(Clone, Serialize, Deserialize)]
pub struct InstallSecrets {
    /// The controller's SSH key (OpenSSH private key) and its public line.
    pub client_key: String,
    pub public_key: String,
    pub admin_password: String,
}

impl std::fmt::Debug for InstallSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstallSecrets { .. }")
    }
}

/// An installed guest in the cache.
#[derive(Debug, Clone)]
pub struct Installed {
    pub dir: PathBuf,
    pub secrets: InstallSecrets,
    /// The artifact's name (`windows-install-<hash>`): part of a base's identity.
    pub name: String,
}

impl Installed {
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK_FILE)
    }
    pub fn vars(&self) -> PathBuf {
        self.dir.join(OVMF_VARS_FILE)
    }
    pub fn tpm(&self) -> PathBuf {
        self.dir.join(TPM_DIR)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Digest {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    ino: u64,
    blake3: String,
}

/// blake3 of a file, remembered per (path, size, mtime, inode) in the cache directory: an
/// install ISO is gigabytes, read once.
pub async fn file_digest(cache: &Path, path: &Path) -> Result<String> {
    let path = fs::canonicalize(path).ctx(|| format!("resolving {}", path.display()))?;
    let md = fs::metadata(&path).ctx(|| format!("reading {}", path.display()))?;
    let id = |blake3: String| Digest {
        path: path.clone(),
        size: md.size(),
        mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        ino: md.ino(),
        blake3,
    };
    let file = cache.join("digests.json");
    let known: Vec<Digest> = fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let probe = id(String::new());
    if let Some(d) = known.iter().find(|d| {
        d.path == probe.path
            && d.size == probe.size
            && d.mtime_ns == probe.mtime_ns
            && d.ino == probe.ino
    }) {
        return Ok(d.blake3.clone());
    }
    let p = path.clone();
    let sum = tokio::task::spawn_blocking(move || crate::store::checksum(&p))
        .await
        .map_err(|e| Error::Io {
            context: format!("hashing {}", path.display()),
            source: std::io::Error::other(e),
        })??;
    let mut kept: Vec<Digest> = known.into_iter().filter(|d| d.path != path).collect();
    kept.push(id(sum.blake3.clone()));
    // Best effort: without the file the next bootstrap only reads the ISO again.
    if let Ok(json) = serde_json::to_vec_pretty(&kept) {
        let _ = fs::create_dir_all(cache);
        let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
        if fs::write(&tmp, json).is_ok() {
            let _ = fs::rename(&tmp, &file);
        }
    }
    Ok(sum.blake3)
}

/// blake3 over the mirror's setup.ini (and signature, if any) and the setup program: the
/// package closure and every archive's checksum follow from them (the media check each
/// archive against setup.ini).
pub async fn mirror_digest(cache: &Path, mirror: &CygwinMirror) -> Result<String> {
    let ini = mirror.setup_ini_path();
    let sig = ini.with_extension("ini.sig");
    let mut h = blake3::Hasher::new();
    h.update(file_digest(cache, &ini).await?.as_bytes());
    if sig.is_file() {
        h.update(b"sig");
        h.update(file_digest(cache, &sig).await?.as_bytes());
    }
    h.update(b"setup");
    h.update(file_digest(cache, &mirror.setup_exe).await?.as_bytes());
    Ok(h.finalize().to_hex().to_string())
}

/// The profile with the digests of its sources filled in: what names the base.
pub async fn with_digests(dirs: &Dirs, profile: &WindowsProfile) -> Result<WindowsProfile> {
    let sources = profile.sources.as_ref().ok_or_else(|| {
        Error::Usage(
            "a Windows bootstrap needs its media: --iso (the install ISO) and --cygwin-mirror"
                .into(),
        )
    })?;
    super::emit::check_inputs(&sources.iso, &sources.mirror)?;
    let mut p = profile.clone();
    p.iso_blake3 = file_digest(&dirs.cache, &sources.iso).await?;
    p.mirror_blake3 = mirror_digest(&dirs.cache, &sources.mirror).await?;
    Ok(p)
}

#[derive(Serialize)]
struct InstallInputs<'a> {
    #[serde(flatten)]
    provenance: Provenance,
    install_recipe: u32,
    profile: &'a str,
    windows: &'a WindowsProfile,
    /// The machine the guest is installed on (and will always run on): its PCI layout
    /// decides which NIC the guest's network settings belong to.
    guest: crate::pair::FirmwareGuest,
}

fn install_key<'a>(
    kind: WinProfile,
    profile: &'a WindowsProfile,
    hw: &Hardware,
) -> Result<(Key, InstallInputs<'a>)> {
    let inputs = InstallInputs {
        provenance: Provenance {
            recipe: RECIPE_VERSION,
            index: None,
            kernel: None,
            agent: None,
        },
        install_recipe: INSTALL_RECIPE,
        profile: kind.name(),
        windows: profile,
        guest: firmware_guest(&profile.public_settings(kind)?, hw),
    };
    Ok((Key::new("windows-install", &inputs)?, inputs))
}

/// The name of the install artifact for these inputs, without building it.
pub fn install_name(kind: WinProfile, profile: &WindowsProfile, hw: &Hardware) -> Result<String> {
    Ok(install_key(kind, profile, hw)?.0.dir_name())
}

/// The install for `profile` (with digests, see [`with_digests`]) on `hw` (its machine
/// type resolved), from the cache or made now: the media written, the disk created, the
/// install stage run; a failure keeps its console (and a screenshot) under the store's
/// failures.
pub async fn ensure_installed(
    dirs: &Dirs,
    store: &Store,
    qemu: &Path,
    kind: WinProfile,
    profile: &WindowsProfile,
    hw: &Hardware,
    progress: &Progress,
) -> Result<Installed> {
    let (key, inputs) = install_key(kind, profile, hw)?;
    let cache = ArtifactCache::new(dirs.images());
    let dir = cache
        .get_or_build(&key, &inputs, |tmp| async move {
            install(&tmp, store, qemu, kind, profile, hw, progress).await
        })
        .await?;
    let path = dir.join(INSTALL_SECRETS);
    let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
    let secrets = serde_json::from_slice(&bytes).map_err(|e| Error::DamagedArtifact {
        path: dir.clone(),
        problem: format!("its {INSTALL_SECRETS} does not parse: {e}"),
    })?;
    Ok(Installed {
        name: key.dir_name(),
        dir,
        secrets,
    })
}

/// A password Windows' default complexity rules accept: upper, lower, digit, symbol.
pub fn generated_password() -> Result<String> {
    Ok(format!("Gb-{}-x9", random_hex(12)?))
}

/// The controller's ed25519 key pair at `path` (and `path.pub`), made if missing (`--emit`
/// keeps it next to the media); returns the public key line.
pub async fn ensure_controller_key(path: &Path) -> Result<String> {
    if !path.exists() {
        let keygen = programs::path_of(programs::SSH_KEYGEN)?;
        let p = path.to_string_lossy().into_owned();
        run_tool(
            "ssh-keygen",
            &keygen,
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "guestbox-controller",
                "-f",
                &p,
            ],
        )
        .await?;
    }
    let public = path.with_extension("pub");
    Ok(fs::read_to_string(&public)
        .ctx(|| format!("reading {}", public.display()))?
        .trim()
        .to_string())
}

/// A fresh key pair made in `dir`: (private key, public line); the files are removed.
async fn controller_key(dir: &Path) -> Result<(String, String)> {
    let path = dir.join("controller-key");
    let public_line = ensure_controller_key(&path).await?;
    let private = fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
    let _ = fs::remove_file(&path);
    let _ = fs::remove_file(path.with_extension("pub"));
    Ok((private, public_line))
}

async fn install(
    tmp: &Path,
    store: &Store,
    qemu: &Path,
    kind: WinProfile,
    profile: &WindowsProfile,
    hw: &Hardware,
    progress: &Progress,
) -> Result<()> {
    let sources = profile
        .sources
        .as_ref()
        .ok_or_else(|| Error::Usage("a Windows install needs --iso and --cygwin-mirror".into()))?;
    let step = progress.step(format!(
        "writing the {} install media (answer file, floppy, Cygwin CD)",
        kind.name()
    ));
    let (client_key, public_key) = controller_key(tmp).await?;
    let password = match &sources.admin_password {
        Some(p) => p.clone(),
        None => Secret::new(generated_password()?),
    };
    let settings = profile.settings(
        kind,
        password.clone(),
        &public_key,
        sources.product_key.clone(),
    )?;
    settings.validate().map_err(media_error)?;
    hw.check(&settings)?;
    check_host(&settings)?;
    let media =
        media::windows::build_install_media(&settings, &sources.mirror).map_err(media_error)?;
    let written = media.write_to_dir(tmp).map_err(media_error)?;
    let disk = tmp.join(DISK_FILE);
    create_disk(&disk, hw.disk_gib).await?;
    if let Some(o) = ovmf_build(&settings) {
        let vars = tmp.join(OVMF_VARS_FILE);
        fs::copy(o.vars_template, &vars)
            .ctx(|| format!("copying {} to {}", o.vars_template, vars.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&vars, fs::Permissions::from_mode(0o644))
            .ctx(|| format!("setting the mode of {}", vars.display()))?;
    }
    step.done();

    let iso =
        fs::canonicalize(&sources.iso).ctx(|| format!("resolving {}", sources.iso.display()))?;
    let run = RunDir::create(&store.runs, "install-")?;
    let mut paths = WindowsPaths::new(tmp, Path::new(""), &iso)?;
    paths.sockets = PairSockets::new(run.path())?;
    let stages = stage_specs(&settings, &paths, hw)?;
    let stage = stages.first().ok_or_else(|| Error::Stage {
        stage: super::STAGE_INSTALL.into(),
        problem: "there is none".into(),
    })?;
    // Confined like every QEMU of a bootstrap: as root, it (and its swtpm) runs as the
    // QEMU user, its disk and UEFI variables handed over open.
    let mut stage = stage.clone();
    stage.spec.confinement = Policy::for_host(&store.cache, qemu).await?.plain();
    let keep = store.failure_dir(super::STAGE_INSTALL)?;
    let report = run_install(qemu, &stage, sources.install_timeout, &keep, progress).await;
    crate::machine::tpm::take_back(&paths.tpm_state)?;
    let report = report?;
    fs::copy(&report.console_log, tmp.join(INSTALL_CONSOLE))
        .ctx(|| format!("copying {}", report.console_log.display()))?;
    // The media hold the password and are of no use any more.
    for f in [&written.floppy, &written.cygwin_iso, &written.answer_file]
        .into_iter()
        .chain(&written.scripts)
    {
        let _ = fs::remove_file(f);
    }
    let secrets = InstallSecrets {
        client_key,
        public_key,
        admin_password: password.expose().to_string(),
    };
    let json = serde_json::to_vec(&secrets).ctx(|| "recording the install's secrets")?;
    write_private(&tmp.join(INSTALL_SECRETS), &json, false)?;
    Ok(())
}
