//! Test support: a real registry on 127.0.0.1 (`registry.rs`) and test bases.

#![allow(dead_code)]

mod registry;
pub use registry::*;

use std::path::Path;

/// A small deterministic generator (xorshift64*): test data without a rand crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Writes a RAM-like file: `size` bytes, a hole except `data` random MiB scattered in it.
pub fn ram_file(path: &Path, size: u64, data_mib: &[u64], rng: &mut Rng) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &mib in data_mib {
        f.write_all_at(&rng.bytes(1 << 20), mib << 20).unwrap();
    }
}

/// A disk-like file: half random, half repetitive text (compressible, like a filesystem).
pub fn disk_file(path: &Path, size: usize, rng: &mut Rng) {
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        if rng.next().is_multiple_of(2) {
            v.extend_from_slice(&rng.bytes(4096));
        } else {
            for i in 0..64 {
                v.extend_from_slice(format!("/usr/lib/x86_64-linux-gnu/lib{i:04}.so\n").as_bytes());
            }
        }
    }
    v.truncate(size);
    std::fs::write(path, v).unwrap();
}

pub const FILES: &[&str] = &[
    "secrets.json",
    "guest.qcow2",
    "guest.ram",
    "guest.state",
    "vmlinuz",
    "empty",
];

/// A small base in `dir`: every kind of file a guestbox base has, unique to `seed`.
pub fn make_base(dir: &Path, seed: u64) {
    let mut rng = Rng::new(seed);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        format!(r#"{{"format":3,"id":"base-{seed}","files":{{}},"seal":"x{seed}"}}"#),
    )
    .unwrap();
    std::fs::write(
        dir.join("secrets.json"),
        format!(r#"{{"k":"{}"}}"#, rng.next()),
    )
    .unwrap();
    disk_file(&dir.join("guest.qcow2"), (3 << 20) + 12345, &mut rng);
    ram_file(&dir.join("guest.ram"), 16 << 20, &[1, 2, 9, 15], &mut rng);
    std::fs::write(dir.join("guest.state"), rng.bytes(300_000)).unwrap();
    std::fs::write(dir.join("vmlinuz"), rng.bytes(1_500_000)).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
}

pub fn base_of(dir: &Path) -> oci::Base {
    oci::Base::from_dir(dir, "manifest.json", FILES).unwrap()
}

/// Every file of `FILES` is byte-identical in `a` and `b`.
pub fn assert_same_files(a: &Path, b: &Path) {
    for f in FILES {
        let x = std::fs::read(a.join(f)).unwrap();
        let y = std::fs::read(b.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(x == y, "{f} differs ({} vs {} bytes)", x.len(), y.len());
    }
}

/// Bytes the file takes on disk.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn client() -> oci::Client {
    oci::Client::new(oci::Options {
        // No credentials from the environment or ~/.docker: tests say what they use.
        lookup_credentials: false,
        ..oci::Options::default()
    })
    .unwrap()
}
