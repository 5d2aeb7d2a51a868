//! Guest and controller images built from Debian packages, cached by their inputs.
//!
//! - [`kernel`]: Debian's generic kernel (it has 9p, virtio and cifs as modules), busybox,
//!   and the closure of the modules guestbox loads.
//! - [`initramfs`]: a tiny init, written as a cpio in Rust, that loads exactly those modules,
//!   mounts the root disk and hands over to it.
//! - [`rootfs`]: root filesystems made by mmdebstrap, turned into ext4 and qcow2.
//! - [`cache`]: the content-addressed artifact cache.

pub mod cache;
pub mod debian;
pub mod initramfs;
pub mod kernel;
pub mod rootfs;

use serde::{Deserialize, Serialize};

use crate::host::Dirs;
use crate::progress::Progress;
use crate::Result;

/// Bump when a change to the recipes below would make an older artifact wrong.
pub const RECIPE_VERSION: u32 = 2;

/// What every artifact's recorded inputs say of its origin. `gc` reads exactly this type to
/// tell a stale artifact, and every builder writes it (flattened into its inputs), so a
/// renamed field changes both sides at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// [`RECIPE_VERSION`] at build time.
    pub recipe: u32,
    /// The fingerprint of the Debian index the packages came from (kernel, root disks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// The kernel artifact (its directory name) an initramfs was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// blake3 of the agent an initramfs carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

impl Provenance {
    /// Made now from `source`'s packages.
    pub fn from_packages(source: &DebianSource) -> Self {
        Provenance {
            recipe: RECIPE_VERSION,
            index: source.index.clone(),
            kernel: None,
            agent: None,
        }
    }
}

/// Kernel command line of every guestbox VM: serial console, quiet, power off on panic
/// (a panicking guest then ends its QEMU, which the host sees), and the init to start.
pub fn kernel_append(init: &str) -> String {
    format!("console=ttyS0 quiet loglevel=3 panic=-1 guestbox.init={init}")
}

/// Where Debian packages come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianSource {
    pub suite: String,
    pub mirror: String,
    /// Fingerprint (blake3) of the suite's signed index (`InRelease`) at build time. It is
    /// part of every image key, so a mirror that now resolves other package versions gives
    /// new images; None until [`ensure`] fills it in.
    #[serde(default)]
    pub index: Option<String>,
    /// Where `<suite>-security` comes from (security updates, the kernel's included); None:
    /// the suite and `<suite>-updates` only.
    #[serde(default)]
    pub security_mirror: Option<String>,
}

impl DebianSource {
    /// `(mirror, suite)` of each source: the suite, its point updates, and its security
    /// updates.
    fn suites(&self) -> Vec<(&str, String)> {
        let mirror = self.mirror.trim_end_matches('/');
        let mut suites = vec![
            (mirror, self.suite.clone()),
            (mirror, format!("{}-updates", self.suite)),
        ];
        if let Some(security) = &self.security_mirror {
            suites.push((
                security.trim_end_matches('/'),
                format!("{}-security", self.suite),
            ));
        }
        suites
    }

    /// The sources mmdebstrap installs from, as sources.list lines.
    pub fn sources(&self) -> Vec<String> {
        self.suites()
            .into_iter()
            .map(|(mirror, suite)| format!("deb {mirror} {suite} main"))
            .collect()
    }

    /// The signed index (`InRelease`) of each source, by URL.
    pub fn index_urls(&self) -> Vec<String> {
        self.suites()
            .into_iter()
            .map(|(mirror, suite)| format!("{mirror}/dists/{suite}/InRelease"))
            .collect()
    }
}

impl Default for DebianSource {
    /// bookworm from deb.debian.org, with its security updates. `GUESTBOX_DEBIAN_MIRROR`
    /// picks another mirror; `GUESTBOX_DEBIAN_SECURITY_MIRROR` another security mirror, or
    /// none when empty (for a local mirror without one).
    fn default() -> Self {
        Self {
            suite: "bookworm".into(),
            mirror: std::env::var("GUESTBOX_DEBIAN_MIRROR")
                .ok()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "http://deb.debian.org/debian".into()),
            index: None,
            security_mirror: match std::env::var("GUESTBOX_DEBIAN_SECURITY_MIRROR") {
                Ok(m) if m.is_empty() => None,
                Ok(m) => Some(m),
                Err(_) => Some("http://deb.debian.org/debian-security".into()),
            },
        }
    }
}

/// What the default Debian guest is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRecipe {
    /// Extra Debian packages (`--packages build-essential,...`).
    pub packages: Vec<String>,
    /// Size of the guest's root filesystem in MiB (sparse: unused space costs nothing).
    pub disk_mib: u64,
}

impl GuestRecipe {
    pub fn new(packages: Vec<String>) -> Self {
        let mut packages = packages;
        packages.sort();
        packages.dedup();
        Self {
            packages,
            disk_mib: 8192,
        }
    }
}

/// Everything needed to boot the guest and the controller.
#[derive(Debug, Clone)]
pub struct Images {
    pub kernel: kernel::Kernel,
    pub guest_initrd: std::path::PathBuf,
    pub controller_initrd: std::path::PathBuf,
    pub guest: rootfs::Rootfs,
    pub controller: rootfs::Rootfs,
}

/// What the controller boots, the same for every guest: the kernel, its initramfs, its
/// root disk.
#[derive(Debug, Clone)]
pub struct ControllerImages {
    pub kernel: kernel::Kernel,
    pub initrd: std::path::PathBuf,
    pub rootfs: rootfs::Rootfs,
}

/// Builds (or finds in the cache) what the controller boots (a guest that is not built
/// from Debian packages needs nothing else from here).
pub async fn ensure_controller(
    dirs: &Dirs,
    source: &DebianSource,
    progress: &Progress,
) -> Result<ControllerImages> {
    let cache = cache::ArtifactCache::new(dirs.images());
    let pinned = debian::pin_index(&cache, source, progress).await?;
    let kernel = kernel::ensure(&cache, &pinned, progress).await?;
    let initrd = initramfs::ensure(&cache, &kernel, initramfs::Role::Controller).await?;
    let rootfs = rootfs::ensure_controller(&cache, &pinned, progress).await?;
    Ok(ControllerImages {
        kernel,
        initrd,
        rootfs,
    })
}

/// Builds (or finds in the cache) the kernel, both initramfs images and both root disks.
pub async fn ensure(
    dirs: &Dirs,
    source: &DebianSource,
    guest: &GuestRecipe,
    progress: &Progress,
) -> Result<Images> {
    let cache = cache::ArtifactCache::new(dirs.images());
    let pinned = debian::pin_index(&cache, source, progress).await?;
    let source = &pinned;
    let kernel = kernel::ensure(&cache, source, progress).await?;
    let guest_initrd = initramfs::ensure(&cache, &kernel, initramfs::Role::Guest).await?;
    let controller_initrd = initramfs::ensure(&cache, &kernel, initramfs::Role::Controller).await?;
    let guest = rootfs::ensure_guest(&cache, source, guest, progress).await?;
    let controller = rootfs::ensure_controller(&cache, source, progress).await?;
    Ok(Images {
        kernel,
        guest_initrd,
        controller_initrd,
        guest,
        controller,
    })
}
