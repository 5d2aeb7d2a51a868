//! Bases: content-addressed, built once under concurrency, atomic, sealed, removable only
//! when unused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use guestbox::bootstrap::{bootstrap, BootstrapOptions};
use guestbox::images::GuestRecipe;
use guestbox::machine::accel::AccelChoice;
use guestbox::profile::Profile;
use guestbox::progress::Progress;
use guestbox::store::{files, Store};

fn options(memory_mib: u64, timeout: Duration) -> BootstrapOptions {
    BootstrapOptions {
        profile: Profile::Debian(GuestRecipe::new(vec![])),
        name: None,
        memory_mib,
        cpus: 1,
        accel: AccelChoice::Tcg,
        timeout,
    }
}

/// Half-made or half-removed bases that nobody is working on (tests run concurrently:
/// another test's bootstrap in progress holds its lock and is not a leftover).
fn leftovers(store: &Store) -> Vec<String> {
    std::fs::read_dir(&store.bases)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            let Some(rest) = n.strip_prefix(".tmp-").or_else(|| n.strip_prefix(".rm-")) else {
                return false;
            };
            let id = rest.split('-').next().unwrap_or_default();
            let lock = std::fs::File::open(store.bases.join(format!(".{id}.lock")));
            lock.map(|f| f.try_lock().is_ok()).unwrap_or(true)
        })
        .collect()
}

#[tokio::test]
async fn concurrent_bootstraps_build_one_sealed_base_which_rm_removes_only_when_unused() {
    common::images();
    let dirs = common::dirs();
    let store = Store::new(&dirs);
    let opts = options(768, Duration::from_secs(300));
    let quiet = Progress::quiet();
    let (a, b) = tokio::join!(
        bootstrap(&dirs, &opts, &quiet),
        bootstrap(&dirs, &opts, &quiet)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // Had both built it, the second rename onto the finished base would have failed.
    assert_eq!(a.manifest.id, b.manifest.id);
    assert_eq!(a.manifest.created, b.manifest.created);
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));

    // The snapshot holds device state only; RAM is in its own file.
    let m = &a.manifest;
    assert!(
        m.files[files::GUEST_STATE].size < 4 << 20,
        "guest state {} bytes",
        m.files[files::GUEST_STATE].size
    );
    assert_eq!(m.files[files::GUEST_RAM].size, 768 << 20);
    assert_eq!(m.pair.guest_memory_mib, 768);
    assert!(m.pair.machine.starts_with("pc-q35-"), "{}", m.pair.machine);
    assert!(m.guest_packages.contains_key("openssh-server"));
    for name in [
        files::GUEST_DISK,
        files::GUEST_STATE,
        files::CONTROLLER_STATE,
        files::KERNEL,
    ] {
        let mode = std::fs::metadata(a.file(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o444, "{name} is not sealed read-only");
    }
    let secrets = std::fs::metadata(a.dir.join(guestbox::store::SECRETS))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(secrets, 0o400);
    let manifest_text = std::fs::read_to_string(a.dir.join(guestbox::store::MANIFEST)).unwrap();
    let secret_values = a.secrets().unwrap();
    assert!(!manifest_text.contains(&secret_values.smb_password));

    // A run holds the base; rm must refuse until it is over.
    let store2 = store.clone();
    let base = a.clone();
    let running =
        tokio::spawn(
            async move { common::run_on(&store2, &base, &common::cmd(&["sleep", "4"])).await },
        );
    // Once its guest QEMU (the only one with 768 MiB) runs, the run holds the base.
    let started = std::time::Instant::now();
    while common::pids_matching("size=768M").is_empty() {
        if running.is_finished() {
            panic!("the run ended early: {:?}", running.await);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = store
        .remove(&a)
        .expect_err("rm removed a base while a run used it");
    assert!(err.to_string().contains("in use"), "{err}");
    assert_eq!(err.exit_code(), 2);
    let outcome = running.await.unwrap().unwrap();
    assert_eq!(outcome.code, 0);
    store.remove(&a).unwrap();
    assert!(!a.dir.exists());
    assert!(store.resolve(&a.manifest.id).is_err());
    assert!(leftovers(&store).is_empty());
}

#[tokio::test]
async fn a_failed_bootstrap_registers_nothing() {
    common::images();
    let dirs = common::dirs();
    let store = Store::new(&dirs);
    // Nothing boots to ready in one second under emulation.
    let err = bootstrap(
        &dirs,
        &options(640, Duration::from_secs(1)),
        &Progress::quiet(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("did not become ready within 1 s"),
        "{err}"
    );
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    for base in store.list().unwrap() {
        assert_ne!(
            base.manifest.pair.guest_memory_mib, 640,
            "a failed bootstrap was registered"
        );
    }
    // This test's QEMUs are the only ones with 640 MiB of RAM; killed, they take a moment
    // to go.
    let alive = || -> Vec<u32> {
        common::pids_matching("size=640M")
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| !s.contains(") Z "))
                    .unwrap_or(false)
            })
            .collect()
    };
    let mut busy = alive();
    for _ in 0..40 {
        if busy.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        busy = alive();
    }
    assert!(busy.is_empty(), "processes left: {busy:?}");
}

#[test]
fn verify_finds_a_flipped_byte_in_a_copy_of_a_base() {
    let base = common::base();
    assert!(
        guestbox::store::verify(base).unwrap().is_empty(),
        "the test base is damaged"
    );
    // A sparse copy of the base, with one byte of the guest's device state flipped.
    let copy = tempfile::tempdir().unwrap();
    let dest = copy.path().join("b");
    let st = std::process::Command::new("cp")
        .args(["-r", "--sparse=always"])
        .arg(&base.dir)
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    let state = dest.join(files::GUEST_STATE);
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&state).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&state, bytes).unwrap();
    let mut damaged = base.clone();
    damaged.dir = dest.clone();
    let problems = guestbox::store::verify(&damaged).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("guest.state") && problems[0].contains("checksum"),
        "{problems:?}"
    );
    // Truncation is named with the sizes.
    std::fs::set_permissions(
        dest.join(files::KERNEL),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dest.join(files::KERNEL))
        .unwrap()
        .set_len(100)
        .unwrap();
    let problems = guestbox::store::verify(&damaged).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("vmlinuz") && p.contains("100 bytes")),
        "{problems:?}"
    );
    guestbox::host::fs::make_writable(&dest);
}
