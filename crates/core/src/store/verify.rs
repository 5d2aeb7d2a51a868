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

/// blake3 and size of a file, read in large blocks. Holes (a RAM file's untouched memory)
/// are hashed as the zeros they read as, without reading them: reading a hole makes the
/// kernel zero-fill page-cache pages, which cost more than hashing here (a pulled default
/// base, 1 GiB of it holes, took seconds longer to check).
pub fn checksum(path: &Path) -> Result<FileSum> {
    use std::os::unix::fs::FileExt;
    let reading = || format!("reading {}", path.display());
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let size = file.metadata().ctx(reading)?.len();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        // Where data starts again; a filesystem without SEEK_DATA says "here" (all data).
        let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(size),
            Err(rustix::io::Errno::NXIO) => size,
            Err(_) => pos,
        };
        while pos < data {
            let n = (data - pos).min(zeros.len() as u64) as usize;
            hasher.update(&zeros[..n]);
            pos += n as u64;
        }
        if pos >= size {
            break;
        }
        let hole = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(pos)) {
            Ok(h) => h.clamp(pos + 1, size),
            Err(_) => size,
        };
        while pos < hole {
            let n = (hole - pos).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], pos).ctx(reading)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
    }
    Ok(FileSum {
        size,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holes hash as zeros: the same sums as hashing every byte, for sparse and dense files.
    #[test]
    fn sparse_files_hash_as_their_bytes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        // (name, size, data written at offset: length)
        type Case<'a> = (&'a str, u64, &'a [(u64, usize)]);
        let cases: [Case; 5] = [
            ("empty", 0, &[]),
            ("hole only", 5 << 20, &[]),
            ("dense", 3 << 20, &[(0, 3 << 20)]),
            (
                "data in holes",
                9 << 20,
                &[(4096, 10), (3 << 20, 70_000), ((9 << 20) - 1, 1)],
            ),
            (
                "data at the ends",
                (2 << 20) + 5,
                &[(0, 100), ((2 << 20) + 1, 4)],
            ),
        ];
        for (name, size, data) in cases {
            let path = dir.path().join(name);
            let f = File::create(&path).unwrap();
            f.set_len(size).unwrap();
            for (i, (at, len)) in data.iter().enumerate() {
                let bytes: Vec<u8> = (0..*len).map(|k| (k % 251) as u8 + i as u8 + 1).collect();
                f.write_all_at(&bytes, *at).unwrap();
            }
            drop(f);
            let all = std::fs::read(&path).unwrap();
            let sum = checksum(&path).unwrap();
            assert_eq!(sum.size, size, "{name}");
            assert_eq!(
                sum.blake3,
                blake3::hash(&all).to_hex().to_string(),
                "{name}"
            );
        }
    }
}
