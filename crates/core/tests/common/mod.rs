//! Shared by the integration tests: one set of images per test run, built (or found in the
//! cache) once, in a home shared by every test binary of the workspace.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use guestbox::images::{self, DebianSource, GuestRecipe, Images};
use guestbox::paths::Dirs;
use guestbox::progress::Progress;

pub fn test_home() -> PathBuf {
    std::env::var_os("GUESTBOX_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/guestbox-test-home"
            ))
        })
}

pub fn dirs() -> Dirs {
    Dirs::under(test_home())
}

pub fn qemu() -> PathBuf {
    guestbox::hostcheck::path_of(guestbox::hostcheck::QEMU)
        .expect("QEMU is installed (scripts/setup)")
}

/// The default images. Built on a thread of its own so that tests on any runtime can call it.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let dirs = dirs();
            dirs.create().expect("test home");
            rt.block_on(images::ensure(
                &dirs,
                &DebianSource::default(),
                &GuestRecipe::new(vec![]),
                &Progress::quiet(),
            ))
            .unwrap_or_else(|e| panic!("building the test images failed: {e}"))
        })
        .join()
        .expect("image build thread")
    })
}

/// PIDs of processes whose command line contains `needle`.
pub fn pids_matching(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
        {
            out.push(pid);
        }
    }
    out
}
