//! `--accel auto` as a user meets it: KVM is probed once per host, with a one-line notice
//! when it falls back, and the verdict is reused.

mod common;
use common::{guestbox_in, test_home, text};

use std::path::Path;
use std::process::Output;

fn guestbox(home: &Path, args: &[&str]) -> Output {
    guestbox_in(home).args(args).output().unwrap()
}

#[test]
fn auto_probes_kvm_once_falls_back_with_one_line_and_reuses_the_verdict() {
    let shared = test_home();
    let o = guestbox(&shared, &["images"]);
    assert!(o.status.success(), "{}", text(&o).1);
    // A fresh home (so no earlier verdict) that borrows the shared images.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("cache")).unwrap();
    std::os::unix::fs::symlink(
        shared.join("cache/images"),
        home.path().join("cache/images"),
    )
    .unwrap();
    let verdict = home.path().join("cache/kvm-probe.json");
    let kvm_openable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();

    let boot = || {
        guestbox(
            home.path(),
            &["boot", "guest", "--accel", "auto", "--timeout", "300"],
        )
    };
    let first = boot();
    let (out1, err1) = text(&first);
    assert_eq!(first.status.code(), Some(0), "{err1}");
    let used = if out1.contains("(kvm)") {
        "(kvm)"
    } else {
        "(tcg)"
    };
    assert!(out1.contains(used), "{out1}");
    let notices: Vec<&str> = err1.lines().filter(|l| l.contains("using TCG")).collect();
    if kvm_openable {
        assert!(
            err1.contains("checking whether KVM can run guests"),
            "no probe: {err1}"
        );
        assert!(verdict.is_file(), "the probe's verdict was not kept");
        if used == "(tcg)" {
            assert_eq!(notices.len(), 1, "one notice line expected: {err1}");
            assert!(notices[0].contains("--accel tcg"), "{}", notices[0]);
        } else {
            assert!(notices.is_empty(), "{err1}");
        }
    } else {
        // Nothing to probe: TCG without a probe or a notice.
        assert_eq!(used, "(tcg)");
        assert!(!err1.contains("checking whether KVM"), "{err1}");
        assert!(!verdict.exists());
    }

    let second = boot();
    let (out2, err2) = text(&second);
    assert_eq!(second.status.code(), Some(0), "{err2}");
    assert!(out2.contains(used), "the verdict changed: {out2}");
    assert!(
        !err2.contains("checking whether KVM"),
        "probed again instead of reusing the verdict: {err2}"
    );
    assert!(!err2.contains("using TCG"), "{err2}");
}
