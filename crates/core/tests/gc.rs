//! `guestbox gc` removes what killed guestboxes left behind, and nothing in use.

use std::fs;

use guestbox::host::Dirs;
use guestbox::images::cache::write_inputs;
use guestbox::images::Provenance;

#[test]
fn gc_removes_leftovers_and_keeps_what_is_in_use() {
    let home = tempfile::tempdir().unwrap();
    let dirs = Dirs::under(home.path().to_path_buf());
    let bases = home.path().join("bases");
    let images = dirs.images();
    let runs = home.path().join("runs");
    for d in [&bases, &images, &runs] {
        fs::create_dir_all(d).unwrap();
    }
    // A half-made base and image whose builders died, a half-removed base.
    let dead_base = bases.join(".tmp-aaaa-X1");
    let dead_image = images.join(".tmp-guest-bbbb-Y2");
    let dead_rm = bases.join(".rm-cccc-123");
    // A base being built right now: its builder holds `.dddd.lock`.
    let busy_base = bases.join(".tmp-dddd-Z3");
    for d in [&dead_base, &dead_image, &dead_rm, &busy_base] {
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/file"), vec![7u8; 10_000]).unwrap();
    }
    let builder_lock = fs::File::create(bases.join(".dddd.lock")).unwrap();
    builder_lock.lock().unwrap();
    // A run that died (its lock is free) and one that is alive (lock held).
    let dead_run = runs.join("run-dead");
    let live_run = runs.join("run-live");
    for d in [&dead_run, &live_run] {
        fs::create_dir_all(d).unwrap();
        fs::write(d.join("guest.qcow2"), b"overlay").unwrap();
    }
    fs::File::create(dead_run.join("lock")).unwrap();
    let run_lock = fs::File::create(live_run.join("lock")).unwrap();
    run_lock.lock().unwrap();
    // A finished base is never touched.
    let real_base = bases.join("eeee");
    fs::create_dir_all(&real_base).unwrap();
    fs::write(real_base.join("manifest.json"), b"{}").unwrap();

    // Images: one from an old recipe, one from a superseded index, one current; an initramfs
    // of a kernel that is gone.
    // The pointer of the source this environment builds from; another family's (an old
    // mirror's) does not keep its images alive.
    let pointer = guestbox::images::debian::index_pointer(
        &images,
        &guestbox::images::DebianSource::default(),
    )
    .unwrap();
    fs::write(&pointer, "current-index\n").unwrap();
    fs::write(images.join("index-0ld0ld.txt"), "older-index\n").unwrap();
    // Each image's inputs are written as the builders write them: their provenance,
    // flattened among inputs of their own, by the cache's own writer.
    let image = |name: &str, provenance: Provenance| {
        let d = images.join(name);
        fs::create_dir_all(&d).unwrap();
        #[derive(serde::Serialize)]
        struct Inputs {
            #[serde(flatten)]
            provenance: Provenance,
            role: &'static str,
        }
        write_inputs(
            &d,
            &Inputs {
                provenance,
                role: "test",
            },
        )
        .unwrap();
        d
    };
    let recipe = guestbox::images::RECIPE_VERSION;
    let from = |recipe: u32, index: Option<&str>, kernel: Option<&str>| Provenance {
        recipe,
        index: index.map(String::from),
        kernel: kernel.map(String::from),
        agent: None,
    };
    let old_recipe = image("kernel-old", from(0, Some("current-index"), None));
    let old_index = image("guest-old", from(recipe, Some("older-index"), None));
    let current = image("kernel-new", from(recipe, Some("current-index"), None));
    let orphan = image("initrd-guest-x", from(recipe, None, Some("kernel-old")));
    let kept_initrd = image("initrd-guest-y", from(recipe, None, Some("kernel-new")));
    let other_agent = image(
        "initrd-controller-z",
        Provenance {
            agent: Some("an-older-agent".into()),
            ..from(recipe, None, Some("kernel-new"))
        },
    );
    // Lock files nobody holds (left by a builder killed at the wrong moment) go; a held
    // one stays.
    let stray_locks = [bases.join(".ffff.lock"), images.join(".kernel-gggg.lock")];
    for l in &stray_locks {
        fs::write(l, b"").unwrap();
    }

    let report = guestbox::store::gc::collect(&dirs).unwrap();
    for gone in [&old_recipe, &old_index, &orphan, &other_agent] {
        assert!(!gone.exists(), "stale image {} survived gc", gone.display());
    }
    assert!(
        current.exists() && kept_initrd.exists(),
        "gc removed current images"
    );
    for gone in stray_locks
        .iter()
        .chain([&dead_base, &dead_image, &dead_rm, &dead_run])
    {
        assert!(!gone.exists(), "{} survived gc", gone.display());
    }
    for kept in [&busy_base, &live_run, &real_base] {
        assert!(
            kept.exists(),
            "gc removed {} which is in use",
            kept.display()
        );
    }
    assert!(
        bases.join(".dddd.lock").exists(),
        "gc removed a lock file in use"
    );
    assert_eq!(report.removed.len(), 10, "{:?}", report.removed);
    assert!(report.bytes >= 30_000, "{} bytes", report.bytes);
    drop((builder_lock, run_lock));
}
