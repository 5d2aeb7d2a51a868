//! Debian's generic kernel and the closure of the modules guestbox loads.
//!
//! The cloud kernel would be smaller but has no 9p; the generic one has 9p, virtio and cifs
//! as modules, so we keep exactly the modules we need and their dependencies, read from each
//! module's own `.modinfo` (no depmod on the host needed).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::{ArtifactCache, Key};
use super::debian::{mmdebstrap, Variant};
use super::{DebianSource, Provenance};
use crate::host::userns::remove_tree;
use crate::progress::Progress;
use crate::{Error, IoContext, Result};

/// Modules both VMs need: PCI virtio transport, disk, network, virtio-serial, ext4 root.
pub const COMMON_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "crc32c_generic",
    "ext4",
];
/// The guest mounts the controller's SMB shares.
pub const GUEST_MODULES: &[&str] = &[
    "cifs",
    // `iocharset=iso8859-1` on the cifs mount (profile::debian::CIFS_OPTIONS: byte-exact
    // names). Without the table the mount fails; without any table but the kernel's
    // built-in one, cifs mangles every non-ASCII name.
    "nls_iso8859_1",
    // SMB3 signing and encryption look these up by name at mount time: no module
    // dependency names them, so they are listed here.
    "cmac",
    "ccm",
    "gcm",
    "ctr",
    "ghash_generic",
    "ecb",
    "seqiv",
    "sha512_generic",
];
/// The controller reads the host's directories over virtio-9p.
pub const CONTROLLER_MODULES: &[&str] = &["9p", "9pnet_virtio"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// File name inside the artifact's `modules/` directory.
    pub file: String,
    pub depends: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kernel {
    pub dir: PathBuf,
    pub release: String,
    pub vmlinuz: PathBuf,
    pub busybox: PathBuf,
    pub modules: BTreeMap<String, ModuleInfo>,
}

const MANIFEST: &str = "kernel.json";

impl Kernel {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        let mut kernel: Kernel =
            serde_json::from_slice(&text).map_err(|e| Error::DamagedArtifact {
                path: dir.to_path_buf(),
                problem: format!("its {MANIFEST} does not parse: {e}"),
            })?;
        kernel.dir = dir.to_path_buf();
        kernel.vmlinuz = dir.join(&kernel.vmlinuz);
        kernel.busybox = dir.join(&kernel.busybox);
        Ok(kernel)
    }

    pub fn module_path(&self, name: &str) -> Option<PathBuf> {
        self.modules
            .get(name)
            .map(|m| self.dir.join("modules").join(&m.file))
    }

    /// `roots` and their dependencies, dependencies first: the order to insmod them.
    /// Roots the kernel has built in (no module file) are skipped.
    pub fn load_order(&self, roots: &[&str]) -> Vec<String> {
        load_order(&self.modules, roots)
    }
}

pub fn load_order(modules: &BTreeMap<String, ModuleInfo>, roots: &[&str]) -> Vec<String> {
    fn visit(
        name: &str,
        modules: &BTreeMap<String, ModuleInfo>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some(info) = modules.get(name) else {
            return;
        };
        for dep in &info.depends {
            visit(dep, modules, seen, out);
        }
        out.push(name.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for root in roots {
        visit(&normalize(root), modules, &mut seen, &mut out);
    }
    out
}

/// Module names use `_` and `-` interchangeably; the kernel treats them as equal.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The `key=value` strings of an ELF module's `.modinfo` section.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, String> {
    let rd_u16 = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let rd_u32 = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let rd_u64 = |o: usize| {
        elf.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a) as usize
        })
    };
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file (compressed module?)".into());
    }
    let bad = || "truncated ELF header".to_string();
    let shoff = rd_u64(0x28).ok_or_else(bad)?;
    let shentsize = rd_u16(0x3a).ok_or_else(bad)?;
    let shnum = rd_u16(0x3c).ok_or_else(bad)?;
    let shstrndx = rd_u16(0x3e).ok_or_else(bad)?;
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((rd_u32(base)?, rd_u64(base + 0x18)?, rd_u64(base + 0x20)?))
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or_else(bad)?;
    let names = elf
        .get(stroff..stroff.saturating_add(strsize))
        .ok_or_else(bad)?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i).ok_or_else(bad)?;
        let name = names
            .get(name_off..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            let data = elf.get(off..off.saturating_add(size)).ok_or_else(bad)?;
            return Ok(data
                .split(|&b| b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect());
        }
    }
    Err("no .modinfo section".into())
}

/// Hard dependencies plus `softdep pre:` ones (ext4 wants crc32c, cifs its ciphers).
fn dependencies(info: &[(String, String)]) -> Vec<String> {
    let mut deps = Vec::new();
    for (k, v) in info {
        match k.as_str() {
            "depends" => deps.extend(v.split(',').filter(|d| !d.is_empty()).map(normalize)),
            "softdep" => {
                if let Some(pre) = v.strip_prefix("pre:") {
                    let pre = pre.split("post:").next().unwrap_or_default();
                    deps.extend(pre.split_whitespace().map(normalize));
                }
            }
            _ => {}
        }
    }
    deps
}

fn all_modules(tree: &Path) -> Result<BTreeMap<String, (PathBuf, Vec<String>)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
            let entry = entry.ctx(|| format!("reading {}", dir.display()))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
                let info = modinfo(&bytes).map_err(|e| Error::Package {
                    package: "linux-image-amd64".into(),
                    problem: format!(
                        "its module {} has no readable .modinfo: {e}",
                        path.display()
                    ),
                })?;
                out.insert(normalize(stem), (path, dependencies(&info)));
            }
        }
    }
    Ok(out)
}

#[derive(Serialize)]
struct Inputs<'a> {
    #[serde(flatten)]
    provenance: Provenance,
    source: &'a DebianSource,
    packages: [&'a str; 2],
    modules: Vec<&'a str>,
}

pub async fn ensure(
    cache: &ArtifactCache,
    source: &DebianSource,
    progress: &Progress,
) -> Result<Kernel> {
    let inputs = Inputs {
        provenance: Provenance::from_packages(source),
        source,
        packages: ["linux-image-amd64", "busybox-static"],
        modules: COMMON_MODULES
            .iter()
            .chain(GUEST_MODULES)
            .chain(CONTROLLER_MODULES)
            .copied()
            .collect(),
    };
    let key = Key::new("kernel", &inputs)?;
    let dir = cache
        .get_or_build(&key, &inputs, |out| {
            let inputs = &inputs;
            async move {
                let step = progress.step("fetching Debian's kernel and busybox");
                let tree = out.join("tree");
                let packages: Vec<String> = inputs.packages.iter().map(|s| s.to_string()).collect();
                mmdebstrap(source, Variant::Extract, &packages, &tree, &step).await?;
                assemble(&tree, &out, &inputs.modules)?;
                remove_tree(&tree).ctx(|| format!("removing {}", tree.display()))?;
                step.done();
                Ok(())
            }
        })
        .await?;
    Kernel::load(&dir)
}

/// Takes vmlinuz, busybox and the module closure out of the unpacked packages in `tree`.
fn assemble(tree: &Path, out: &Path, roots: &[&str]) -> Result<()> {
    let boot = tree.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .ctx(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| Error::Package {
            package: "linux-image-amd64".into(),
            problem: "it has no /boot/vmlinuz-*".into(),
        })?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let module_tree = tree.join("lib/modules").join(&release);
    let found = all_modules(&module_tree)?;
    let infos: BTreeMap<String, ModuleInfo> = found
        .iter()
        .map(|(name, (path, deps))| {
            let file = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            (
                name.clone(),
                ModuleInfo {
                    file,
                    depends: deps.clone(),
                },
            )
        })
        .collect();
    let wanted = load_order(&infos, roots);
    let modules_dir = out.join("modules");
    fs::create_dir_all(&modules_dir).ctx(|| format!("creating {}", modules_dir.display()))?;
    let mut kept = BTreeMap::new();
    for name in &wanted {
        let (path, _) = &found[name];
        let info = infos[name].clone();
        fs::copy(path, modules_dir.join(&info.file))
            .ctx(|| format!("copying {}", path.display()))?;
        kept.insert(name.clone(), info);
    }
    let busybox_src = tree.join("bin/busybox");
    let kernel = Kernel {
        dir: out.to_path_buf(),
        release,
        vmlinuz: out.join("vmlinuz"),
        busybox: out.join("busybox"),
        modules: kept,
    };
    fs::copy(&vmlinuz, &kernel.vmlinuz).ctx(|| format!("copying {}", vmlinuz.display()))?;
    fs::copy(&busybox_src, &kernel.busybox).ctx(|| format!("copying {}", busybox_src.display()))?;
    // Paths are recorded relative to where the artifact ends up, not the build directory.
    let mut manifest = kernel.clone();
    manifest.dir = PathBuf::new();
    manifest.vmlinuz = PathBuf::from("vmlinuz");
    manifest.busybox = PathBuf::from("busybox");
    let json = serde_json::to_vec_pretty(&manifest).ctx(|| "writing kernel.json")?;
    fs::write(out.join(MANIFEST), json).ctx(|| "writing kernel.json")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(deps: &[&str]) -> ModuleInfo {
        ModuleInfo {
            file: String::new(),
            depends: deps.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let mut m = BTreeMap::new();
        m.insert("ext4".to_string(), info(&["jbd2", "mbcache", "crc16"]));
        m.insert("jbd2".to_string(), info(&[]));
        m.insert("mbcache".to_string(), info(&[]));
        m.insert("crc16".to_string(), info(&[]));
        m.insert("virtio_blk".to_string(), info(&["virtio", "virtio_ring"]));
        m.insert("virtio".to_string(), info(&[]));
        m.insert("virtio_ring".to_string(), info(&["virtio"]));
        let order = load_order(&m, &["virtio-blk", "ext4", "builtin_thing", "virtio_ring"]);
        assert_eq!(
            order,
            [
                "virtio",
                "virtio_ring",
                "virtio_blk",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4"
            ]
        );
    }

    #[test]
    fn softdeps_count_as_dependencies() {
        let info = vec![
            ("depends".to_string(), "jbd2,mbcache".to_string()),
            ("softdep".to_string(), "pre: crc32c post: foo".to_string()),
        ];
        assert_eq!(dependencies(&info), ["jbd2", "mbcache", "crc32c"]);
    }

    #[test]
    fn modinfo_rejects_non_elf() {
        assert!(modinfo(b"\xfd7zXZ\0 compressed").is_err());
        assert!(modinfo(b"\x7fELF").is_err());
    }
}
