//! The test user, shared by the core and command-line tests (the latter include this
//! file by path).

/// A user that is neither root nor the QEMU user, with subordinate ids (so it can build
/// images without root): made on first use, as `scripts/setup` would for a person. Only
/// root can make it; tests that need another user run as root (CI does).
pub fn test_user() -> guestbox::host::users::Ids {
    ensure_user(TEST_USER)
}

pub const TEST_USER: &str = "guestbox-test";

pub fn ensure_user(name: &str) -> guestbox::host::users::Ids {
    use guestbox::host::userns::{subordinate_ids, IDS_NEEDED};
    use guestbox::host::users::Ids;
    assert!(
        Ids::current().is_root(),
        "only root can make the test user {name}"
    );
    if Ids::of_user(name).is_none() {
        // A parallel test may make it at the same moment: the second useradd fails.
        let _ = std::process::Command::new("useradd")
            .args(["--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", "--user-group", name])
            .status();
    }
    let ids = Ids::of_user(name).unwrap_or_else(|| panic!("useradd {name} failed"));
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    if subordinate_ids(&read("/etc/subuid"), name, ids.uid) < IDS_NEEDED
        || subordinate_ids(&read("/etc/subgid"), name, ids.uid) < IDS_NEEDED
    {
        // After every range either file gives out, as scripts/setup picks one.
        let start = [read("/etc/subuid"), read("/etc/subgid")]
            .iter()
            .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(f.get(1)?.parse::<u64>().ok()? + f.get(2)?.parse::<u64>().ok()?)
            })
            .fold(100_000u64, u64::max);
        let range = format!("{start}-{}", start + IDS_NEEDED - 1);
        let ok = std::process::Command::new("usermod")
            .args(["--add-subuids", &range, "--add-subgids", &range, name])
            .status()
            .unwrap();
        assert!(ok.success(), "usermod --add-subuids {range} {name} failed");
    }
    ids
}
