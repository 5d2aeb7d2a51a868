//! What the controller exports: its 9p devices and the one SMB share over them.
//!
//! The 9p devices exist from bootstrap on (unmounted, so the controller can be snapshotted)
//! and are pointed at a run's host directories when it is revived. The controller mounts
//! each tag under [`SHARE_ROOT`], which Samba serves as [`SMB_SHARE`]; the guest mounts
//! that share once at bootstrap, so every run's directories appear under it.

/// The exchange directory (the original's `xchg`: `in-vm-exit` lands here).
pub const XCHG_TAG: &str = "xchg";
/// How many `-v` volumes one run can have; each is a 9p device of the controller.
pub const VOLUME_SLOTS: usize = 8;

/// The 9p tag of volume slot `slot` (`vol0` …).
pub fn volume_tag(slot: usize) -> String {
    format!("vol{slot}")
}

/// All 9p tags of the controller, in device order: the exchange dir, then the volumes.
/// The order is part of a snapshot: bootstrap and revive must list the same devices.
pub fn all_tags() -> Vec<String> {
    std::iter::once(XCHG_TAG.to_string())
        .chain((0..VOLUME_SLOTS).map(volume_tag))
        .collect()
}

/// Where the controller mounts each 9p tag; the SMB share is this directory.
pub const SHARE_ROOT: &str = "/srv/guestbox";
/// The SMB share name and the only user that may open it.
pub const SMB_SHARE: &str = "guestbox";
pub const SMB_USER: &str = "guestbox";
/// The file in the exchange directory that receives the command's exit status, as in the
/// original.
pub const EXIT_CODE_FILE: &str = "in-vm-exit";
