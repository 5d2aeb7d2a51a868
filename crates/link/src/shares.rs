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

/// How the share's names and metadata behave for the guest: chosen by the guest profile at
/// bootstrap, told to the controller on its kernel command line ([`Semantics::KERNEL_ARG`]),
/// so its Samba starts once with the matching configuration and the choice is part of the
/// base (it must be the same at the snapshot and every revive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Semantics {
    /// A local POSIX filesystem: exact mode bits, owners, symlinks, special files,
    /// case-sensitive byte-exact names (Linux guests; SMB1 with the CIFS Unix Extensions).
    Posix,
    /// What Windows clients expect of SMB: case-insensitive Unicode names, DOS attributes.
    /// The default, so a controller told nothing serves every SMB client as before.
    #[default]
    Windows,
}

impl Semantics {
    /// The controller's kernel parameter: `guestbox.shares=posix` or `=windows`.
    pub const KERNEL_ARG: &'static str = "guestbox.shares";

    pub fn name(self) -> &'static str {
        match self {
            Semantics::Posix => "posix",
            Semantics::Windows => "windows",
        }
    }

    /// `guestbox.shares=posix`, for the controller's kernel command line.
    pub fn kernel_param(self) -> String {
        format!("{}={}", Self::KERNEL_ARG, self.name())
    }

    /// The semantics a kernel command line asks for: the last `guestbox.shares=`, the
    /// default when there is none; an unknown value is an error naming it.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, String> {
        let prefix = format!("{}=", Self::KERNEL_ARG);
        match cmdline
            .split_whitespace()
            .rev()
            .find_map(|w| w.strip_prefix(&prefix))
        {
            None => Ok(Self::default()),
            Some("posix") => Ok(Semantics::Posix),
            Some("windows") => Ok(Semantics::Windows),
            Some(other) => Err(format!(
                "unknown {prefix}{other} on the kernel command line (posix or windows)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantics_round_trip_through_a_command_line() {
        for s in [Semantics::Posix, Semantics::Windows] {
            let line = format!("console=ttyS0 guestbox.init=/x {}", s.kernel_param());
            assert_eq!(Semantics::from_cmdline(&line), Ok(s));
        }
        assert_eq!(
            Semantics::from_cmdline("console=ttyS0 quiet"),
            Ok(Semantics::Windows)
        );
        let err = Semantics::from_cmdline("guestbox.shares=nfs").unwrap_err();
        assert!(err.contains("guestbox.shares=nfs"), "{err}");
        // A prefix of the parameter's name is not the parameter.
        assert_eq!(
            Semantics::from_cmdline("xguestbox.shares=posix"),
            Ok(Semantics::Windows)
        );
    }
}
