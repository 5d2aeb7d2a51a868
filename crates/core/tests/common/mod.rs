//! Shared by the integration tests: one set of images per test run, built (or found in the
//! cache) once, in a home shared by every test binary of the workspace.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use guestbox::host::Dirs;
use guestbox::images::{self, DebianSource, GuestRecipe, Images};
use guestbox::progress::Progress;

pub fn test_home() -> PathBuf {
    std::env::var_os("GUESTBOX_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                // Deep on purpose: a run's socket paths under it are longer than unix
                // sockets allow, which guestbox must handle (see short_dir.rs).
                "/../../target/guestbox-test-home/deep-on-purpose-to-exceed-the-unix-socket-path-limit"
            ))
        })
}

pub fn dirs() -> Dirs {
    Dirs::under(test_home())
}

pub fn qemu() -> PathBuf {
    guestbox::host::programs::path_of(guestbox::host::programs::QEMU)
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

/// The default Debian base (1 GiB, TCG), bootstrapped once per test run.
pub fn base() -> &'static guestbox::store::Base {
    static BASE: OnceLock<guestbox::store::Base> = OnceLock::new();
    BASE.get_or_init(|| {
        images();
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let opts = guestbox::bootstrap::BootstrapOptions {
                profile: guestbox::profile::Profile::Debian(GuestRecipe::new(vec![])),
                name: Some("test-default".into()),
                memory_mib: 1024,
                cpus: 1,
                accel: guestbox::machine::accel::AccelChoice::Tcg,
                timeout: std::time::Duration::from_secs(300),
            };
            rt.block_on(guestbox::bootstrap::bootstrap(
                &dirs(),
                &opts,
                &Progress::quiet(),
            ))
            .unwrap_or_else(|e| panic!("bootstrapping the test base failed: {e}"))
        })
        .join()
        .expect("bootstrap thread")
    })
}

pub fn store() -> guestbox::store::Store {
    guestbox::store::Store::new(&dirs())
}

#[derive(Debug)]
pub struct RunResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `opts` on the test base, capturing output.
pub async fn run(opts: guestbox::run::RunOptions) -> guestbox::Result<RunResult> {
    run_on(&store(), base(), &opts).await
}

/// Runs `opts` on `base` of `store`, capturing output.
pub async fn run_on(
    store: &guestbox::store::Store,
    base: &guestbox::store::Base,
    opts: &guestbox::run::RunOptions,
) -> guestbox::Result<RunResult> {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut streams = guestbox::run::Streams {
        stdin: None,
        stdout: &mut out,
        stderr: &mut err,
        window: None,
    };
    let outcome = guestbox::run::run(store, base, opts, &mut streams).await?;
    Ok(RunResult {
        code: outcome.exit_code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

/// Runs `argv` in a revived `session`, then discards it; output captured as [`run`]'s.
pub async fn exec(mut session: guestbox::run::Session, argv: &[&str]) -> RunResult {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut streams = guestbox::run::Streams {
        stdin: None,
        stdout: &mut out,
        stderr: &mut err,
        window: None,
    };
    let command = guestbox::run::Command {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..guestbox::run::Command::default()
    };
    let outcome = session.exec(&command, &mut streams).await.unwrap();
    session.discard().await;
    RunResult {
        code: outcome.exit_code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    }
}

pub fn cmd(argv: &[&str]) -> guestbox::run::RunOptions {
    let mut opts = guestbox::run::RunOptions::default();
    opts.command.argv = argv.iter().map(|s| s.to_string()).collect();
    opts.session.boot_timeout = std::time::Duration::from_secs(300);
    opts
}

mod procs;
mod users;
#[allow(unused_imports)] // Not every test file looks for processes.
pub use procs::*;
#[allow(unused_imports)] // Not every test file needs the test user.
pub use users::*;
