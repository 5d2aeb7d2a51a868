//! Checking a base against its manifest: all of it ([`verify`]), or what a revive can
//! afford before QEMU starts ([`quick_check`]).

use std::fs::File;
use std::path::Path;

use super::manifest::{files, FileSum};
use super::Base;
use crate::{Error, IoContext, Result};

/// What `verify` found wrong with a base's files, one line each; empty when intact.
pub fn verify(base: &Base) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let m = &base.manifest;
    if m.pair.guest.as_ref().is_some_and(|g| g.tpm)
        && !m.files.keys().any(|k| k.starts_with(files::GUEST_TPM))
    {
        problems.push(format!(
            "{}: the TPM's state is not in the manifest",
            files::GUEST_TPM
        ));
    }
    for name in m.required_files() {
        let name = name.as_str();
        let path = base.file(name);
        let Some(expected) = base.manifest.files.get(name) else {
            problems.push(format!("{name}: not in the manifest"));
            continue;
        };
        match checksum(&path) {
            Ok(actual) if &actual == expected => {}
            Ok(actual) if actual.size != expected.size => problems.push(format!(
                "{}: {} bytes, the manifest says {}",
                path.display(),
                actual.size,
                expected.size
            )),
            Ok(_) => problems.push(format!(
                "{}: content differs from the manifest's checksum",
                path.display()
            )),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    Ok(problems)
}

/// The checks a revive can afford before QEMU starts: every file has its recorded size,
/// the disks start like qcow2 files, and the device states (small, and what QEMU would
/// choke on) match their checksums. RAM and disk contents are left to [`verify`].
pub fn quick_check(base: &Base) -> Result<()> {
    let m = &base.manifest;
    let damaged = |path: &Path, why: String| Error::DamagedBase {
        id: short_id(&m.id).to_string(),
        problem: format!(
            "{}: {why} (`guestbox verify {}` checks every file)",
            path.display(),
            short_id(&m.id)
        ),
    };
    for name in m.required_files() {
        let path = base.file(&name);
        let Some(expected) = m.files.get(&name) else {
            return Err(damaged(&path, "not in the manifest".into()));
        };
        match std::fs::metadata(&path) {
            Ok(md) if md.len() == expected.size => {}
            Ok(md) => {
                return Err(damaged(
                    &path,
                    format!("{} bytes, expected {}", md.len(), expected.size),
                ))
            }
            Err(e) => return Err(damaged(&path, format!("cannot be read ({e})"))),
        }
    }
    for name in [files::GUEST_DISK, files::CONTROLLER_DISK] {
        let path = base.file(name);
        let mut magic = [0u8; 4];
        let read = File::open(&path).and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut magic)
        });
        if read.is_err() || &magic != b"QFI\xfb" {
            return Err(damaged(&path, "not a qcow2 image any more".into()));
        }
    }
    for name in [files::GUEST_STATE, files::CONTROLLER_STATE] {
        let path = base.file(name);
        if m.files.get(name) != Some(&checksum(&path)?) {
            return Err(damaged(&path, "content differs from its checksum".into()));
        }
    }
    Ok(())
}

fn short_id(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// blake3 of the programs this guestbox puts in the VMs (the controller's agent and the
/// guest's exec helper), as recorded in the bases and initramfs images it makes: a base
/// made by another build speaks another protocol.
pub fn agent_id() -> String {
    let mut h = blake3::Hasher::new();
    h.update(crate::AGENT);
    h.update(crate::EXEC_HELPER);
    h.finalize().to_hex().to_string()
}

/// blake3 and size of a file, read in large blocks.
pub fn checksum(path: &Path) -> Result<FileSum> {
    let mut hasher = blake3::Hasher::new();
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let size = file
        .metadata()
        .ctx(|| format!("reading {}", path.display()))?
        .len();
    hasher
        .update_reader(file)
        .ctx(|| format!("reading {}", path.display()))?;
    Ok(FileSum {
        size,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}
