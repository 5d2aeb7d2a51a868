//! Image builds without root leave trees holding files of subordinate ids (a build killed
//! half-way, or one that failed): this user cannot remove those as itself, `gc` must still.
//! Run as root, the test runs itself again as a user without root (`guestbox-test`).

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use guestbox::host::users::Ids;
use guestbox::host::Dirs;
use guestbox::store::gc;

const INSIDE: &str = "GUESTBOX_TEST_AS_USER";
const NAME: &str = "gc_removes_a_half_built_tree_of_subordinate_ids";

#[test]
fn gc_removes_a_half_built_tree_of_subordinate_ids() {
    if Ids::current().is_root() {
        assert!(
            std::env::var_os(INSIDE).is_none(),
            "still root after the switch"
        );
        let who = common::test_user();
        // A copy of this test binary the user can reach (the checkout may not be).
        let dir = tempfile::Builder::new()
            .prefix("guestbox-userns-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let exe = dir.path().join("test");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        guestbox::host::users::chown(dir.path(), who).unwrap();
        let out = Command::new(&exe)
            .args(["--exact", NAME, "--nocapture"])
            .env(INSIDE, "1")
            .env("HOME", dir.path())
            .env("TMPDIR", dir.path())
            .uid(who.uid)
            .gid(who.gid)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let dirs = Dirs::under(home.path().to_path_buf());
    let images = dirs.images();
    let build = images.join(".tmp-guest-0123456789abcdef01234567-AbCdEf");
    std::fs::create_dir_all(&build).unwrap();
    // What a killed mmdebstrap leaves: a tree whose files belong to system users of the
    // namespace (here _apt, 42), which outside are subordinate ids of this user.
    let script = "mkdir -p \"$1/root/var/cache/apt/archives/partial\" && \
                  echo x > \"$1/root/var/cache/apt/archives/partial/pkg.deb\" && \
                  chown -R 42:42 \"$1/root/var/cache/apt\" && \
                  chmod 700 \"$1/root/var/cache/apt/archives/partial\"";
    let made = Command::new("unshare")
        .args([
            "--user",
            "--map-auto",
            "--map-root-user",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&build)
        .status()
        .unwrap();
    assert!(made.success(), "no user namespace here: see scripts/setup");
    // As this user, the tree cannot be removed.
    let plain = std::fs::remove_dir_all(&build).unwrap_err();
    assert_eq!(
        plain.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{plain}"
    );
    assert!(build.exists());

    let report = gc::collect(&dirs).unwrap();
    assert!(!build.exists(), "gc left {}", build.display());
    assert!(
        report
            .removed
            .iter()
            .any(|r| Path::new(r) == build.as_path()),
        "{:?}",
        report.removed
    );
}
