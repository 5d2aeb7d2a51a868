//! The host programs guestbox drives, and the package that provides each.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct Program {
    pub name: &'static str,
    pub package: &'static str,
    pub why: &'static str,
}

pub const QEMU: Program = Program {
    name: "qemu-system-x86_64",
    package: "qemu-system-x86",
    why: "it runs the guest and controller VMs",
};
pub const QEMU_IMG: Program = Program {
    name: "qemu-img",
    package: "qemu-utils",
    why: "it makes the qcow2 disks and copy-on-write overlays",
};
pub const MMDEBSTRAP: Program = Program {
    name: "mmdebstrap",
    package: "mmdebstrap",
    why: "it builds the Debian guest and controller root filesystems from packages",
};
pub const UNSHARE: Program = Program {
    name: "unshare",
    package: "util-linux",
    why: "it gives mmdebstrap namespaces that die with guestbox, mounts and all",
};
pub const MKFS_EXT4: Program = Program {
    name: "mkfs.ext4",
    package: "e2fsprogs",
    why: "it turns a root filesystem directory into a disk image",
};
pub const DEBUGFS: Program = Program {
    name: "debugfs",
    package: "e2fsprogs",
    why: "it writes /dev's device nodes into a disk image built without root",
};
pub const SSH_KEYGEN: Program = Program {
    name: "ssh-keygen",
    package: "openssh-client",
    why: "it generates the guest's host key and the controller's client key",
};

/// What building images needs.
pub const IMAGE_BUILD: &[Program] = &[
    MMDEBSTRAP, UNSHARE, MKFS_EXT4, DEBUGFS, QEMU_IMG, SSH_KEYGEN,
];
/// What booting or reviving VMs needs.
pub const VM: &[Program] = &[QEMU, QEMU_IMG];

/// Finds `name` on PATH, then in the sbin directories that a non-root PATH often lacks.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves each program, failing on the first one missing with the package to install.
pub fn require(programs: &[Program]) -> Result<Vec<PathBuf>> {
    programs
        .iter()
        .map(|p| {
            find(p.name).ok_or(Error::MissingProgram {
                program: p.name,
                package: p.package,
                why: p.why,
            })
        })
        .collect()
}

/// Path of one program, or the error naming its package.
pub fn path_of(program: Program) -> Result<PathBuf> {
    require(&[program]).map(|mut v| v.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_its_package() {
        let ghost = Program {
            name: "guestbox-no-such-program",
            package: "guestbox-ghost",
            why: "tests need it",
        };
        let err = require(&[ghost]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("guestbox-no-such-program"), "{text}");
        assert!(text.contains("apt-get install guestbox-ghost"), "{text}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn finds_a_program_that_exists() {
        assert!(find("sh").is_some());
    }
}
