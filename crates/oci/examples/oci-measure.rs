//! Measures what the crate's choices rest on; not part of the library.
//!
//! `oci-measure parts FILE...`: per file, the bytes a hole-skipping transfer would move
//! (SEEK_DATA/SEEK_HOLE extents) against zstd at levels 1, 3 and 6 (bytes, MiB/s of
//! input per core), in 256 MiB parts as a push cuts them.
//!
//! `oci-measure pull REF`: pulls REF into a temp dir and prints the report.
//!
//! `oci-measure push-pull REF DIR FILE...`: pushes DIR's `manifest.json` and FILEs to REF
//! (with a fresh state directory), pushes again, pulls into a temp dir, and prints the
//! three JSON reports (bytes on the wire, seconds). `OCI_LEVEL` sets the zstd level,
//! `OCI_NOSYNC` pulls without fsync.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

const MIB: f64 = 1048576.0;

fn data_extents(path: &Path) -> std::io::Result<u64> {
    let f = File::open(path)?;
    let size = f.metadata()?.len() as libc::off_t;
    let fd = f.as_raw_fd();
    let (mut pos, mut data) = (0 as libc::off_t, 0u64);
    while pos < size {
        // SAFETY: lseek on an fd we own; errors come back as -1.
        let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if start < 0 {
            break; // ENXIO: only a hole is left
        }
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let end = if end < 0 { size } else { end };
        data += (end - start) as u64;
        pos = end;
    }
    Ok(data)
}

fn parts(files: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let part = oci::format::DEFAULT_PART_SIZE;
    for f in files {
        let path = Path::new(f);
        let size = std::fs::metadata(path)?.len();
        let t = Instant::now();
        let holes = data_extents(path)?;
        println!(
            "{f}: {:.1} MiB, SEEK_DATA extents {:.1} MiB ({:.3} s to map)",
            size as f64 / MIB,
            holes as f64 / MIB,
            t.elapsed().as_secs_f64()
        );
        for level in [1, 3, 6] {
            let t = Instant::now();
            let mut out = 0u64;
            let mut offset = 0;
            while offset < size.max(1) {
                let len = part.min(size - offset);
                out += oci::push::compress_part(path, offset, len, level)?.len() as u64;
                offset += part;
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "  zstd -{level}: {:.1} MiB ({:.1}% of extents), {:.0} MiB/s of file, {:.2} s",
                out as f64 / MIB,
                100.0 * out as f64 / holes.max(1) as f64,
                size as f64 / MIB / s,
                s
            );
        }
    }
    Ok(())
}

async fn push_pull(
    reference: &str,
    dir: &Path,
    files: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let r: oci::Reference = reference.parse()?;
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    let base = oci::Base::from_dir(dir, "manifest.json", &names)?;
    let client = oci::Client::new(oci::Options::default())?;
    let tmp = tempfile::tempdir()?;
    let state: PathBuf = tmp.path().join("state");
    let mut opts = oci::PushOptions::new(state);
    if let Ok(level) = std::env::var("OCI_LEVEL") {
        opts.zstd_level = level.parse()?;
    }
    for _ in 0..2 {
        let report = client.push(&r, &base, &opts, &oci::NoProgress).await?;
        println!("push {}", serde_json::to_string(&report)?);
    }
    let mut popts = oci::PullOptions::new(tmp.path().join("staging"), tmp.path().join("dest"));
    popts.sync = std::env::var_os("OCI_NOSYNC").is_none();
    let pulled = client.pull(&r, &popts, &oci::NoProgress).await?;
    println!("pull {}", serde_json::to_string(&pulled.report)?);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("parts") => parts(&args[1..]),
        Some("pull") if args.len() == 2 => {
            let r: oci::Reference = args[1].parse()?;
            let tmp = tempfile::tempdir()?;
            let mut popts =
                oci::PullOptions::new(tmp.path().join("staging"), tmp.path().join("dest"));
            popts.sync = std::env::var_os("OCI_NOSYNC").is_none();
            let client = oci::Client::new(oci::Options::default())?;
            let pulled = client.pull(&r, &popts, &oci::NoProgress).await?;
            println!("pull {}", serde_json::to_string(&pulled.report)?);
            Ok(())
        }
        Some("push-pull") if args.len() >= 4 => {
            push_pull(&args[1], Path::new(&args[2]), &args[3..]).await
        }
        _ => {
            eprintln!("usage: oci-measure parts FILE... | pull REF | push-pull REF DIR FILE...");
            std::process::exit(2)
        }
    }
}
