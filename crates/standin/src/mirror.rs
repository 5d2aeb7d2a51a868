//! A small local Cygwin mirror that the stand-in's Cygwin setup accepts: real `.tar.xz`
//! archives (made with the host's `tar` and `xz`) holding the files whose presence makes a
//! Cygwin program "installed" in the stand-in (`usr/bin/bash.exe`, `usr/bin/cygpath.exe`,
//! `usr/bin/ssh-host-config`, ...), a setup.ini with their sizes and SHA-512, a
//! `setup.ini.sig` (a placeholder: the stand-in checks it is there, as setup does without
//! `-X`, but cannot check Cygwin's signature) and a placeholder setup program.
//!
//! Laid out as `setup --download` leaves a mirror, so [`media::cygwin::CygwinMirror`]
//! takes it as it is.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use media::cygwin::{CygwinArch, CygwinMirror};
use sha2::{Digest, Sha512};

use crate::{IoContext, StandinError};

/// The mirror directory's name, as setup spells a mirror URL.
pub const MIRROR_NAME: &str = "https%3a%2f%2fmirror.standin.invalid%2fcygwin%2f";

/// One package of the stand-in mirror.
#[derive(Debug, Clone)]
pub struct MirrorPackage {
    pub name: &'static str,
    pub category: &'static str,
    pub requires: &'static str,
    pub depends2: &'static str,
    /// Files in the archive, relative to the Cygwin root.
    pub files: &'static [&'static str],
}

/// Cygwin's Base (cygwin, bash, coreutils), openssh and what it needs, cygrunsrv.
pub const PACKAGES: &[MirrorPackage] = &[
    MirrorPackage {
        name: "cygwin",
        category: "Base",
        requires: "",
        depends2: "",
        files: &[
            "usr/bin/cygwin1.dll",
            "usr/bin/cygpath.exe",
            "usr/bin/mount.exe",
            "usr/bin/umount.exe",
            "usr/bin/mkpasswd.exe",
            "usr/bin/mkgroup.exe",
        ],
    },
    MirrorPackage {
        name: "bash",
        category: "Base Shells",
        requires: "cygwin",
        depends2: "cygwin",
        files: &["usr/bin/bash.exe", "usr/bin/sh.exe"],
    },
    MirrorPackage {
        name: "coreutils",
        category: "Base Utils",
        requires: "cygwin",
        depends2: "cygwin",
        files: &["usr/bin/ls.exe", "usr/bin/cp.exe"],
    },
    MirrorPackage {
        name: "zlib0",
        category: "Libs",
        requires: "",
        depends2: "cygwin",
        files: &["usr/bin/cygz.dll"],
    },
    MirrorPackage {
        name: "libssl3",
        category: "Libs",
        requires: "",
        depends2: "cygwin, zlib0",
        files: &["usr/bin/cygssl-3.dll"],
    },
    MirrorPackage {
        name: "openssh",
        category: "Net",
        requires: "",
        depends2: "cygwin, libssl3 (>= 3.0), zlib0, cygrunsrv",
        files: &[
            "usr/bin/ssh.exe",
            "usr/bin/ssh-keygen.exe",
            "usr/bin/ssh-host-config",
            "usr/sbin/sshd.exe",
        ],
    },
    MirrorPackage {
        name: "cygrunsrv",
        category: "Admin",
        requires: "",
        depends2: "cygwin",
        files: &["usr/bin/cygrunsrv.exe"],
    },
];

fn sha512_hex(data: &[u8]) -> String {
    Sha512::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the mirror under `root` (`root/<MIRROR_NAME>/<arch>/...` and the setup program
/// next to it) and returns it as media's [`CygwinMirror`].
pub fn cygwin_mirror(root: &Path, arch: CygwinArch) -> Result<CygwinMirror, StandinError> {
    let dir = root.join(MIRROR_NAME);
    let arch_dir = dir.join(arch.dir());
    let mut ini = format!(
        "# stand-in Cygwin mirror for guestbox's tests (generated)\n\
         release: cygwin\narch: {}\nsetup-timestamp: 1717243200\nsetup-version: 2.932\n\n",
        arch.dir()
    );
    for p in PACKAGES {
        let rel = format!("{}/release/{}/{}-1.0-1.tar.xz", arch.dir(), p.name, p.name);
        let archive = dir.join(&rel);
        let stage = root.join(format!("stage-{}", p.name));
        for f in p.files {
            let path = stage.join(f);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            }
            fs::write(&path, format!("stand-in {} from package {}\n", f, p.name))
                .ctx(|| format!("writing {}", path.display()))?;
        }
        if let Some(parent) = archive.parent() {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        let status = Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--mtime=@0",
                "-cJf",
            ])
            .arg(&archive)
            .arg("-C")
            .arg(&stage)
            .arg("usr")
            .status()
            .ctx(|| "running tar (package: tar, xz-utils)".to_string())?;
        if !status.success() {
            return Err(StandinError::Command {
                what: format!("tar -cJf {}", archive.display()),
                status: status.to_string(),
                tail: "is xz-utils installed?".into(),
            });
        }
        fs::remove_dir_all(&stage).ctx(|| format!("removing {}", stage.display()))?;
        let data = fs::read(&archive).ctx(|| format!("reading {}", archive.display()))?;
        ini.push_str(&format!(
            "@ {name}\nsdesc: \"The {name} package (stand-in)\"\ncategory: {cat}\n",
            name = p.name,
            cat = p.category
        ));
        if !p.requires.is_empty() {
            ini.push_str(&format!("requires: {}\n", p.requires));
        }
        if !p.depends2.is_empty() {
            ini.push_str(&format!("depends2: {}\n", p.depends2));
        }
        ini.push_str(&format!(
            "version: 1.0-1\ninstall: {rel} {} {}\n\n",
            data.len(),
            sha512_hex(&data)
        ));
    }
    fs::create_dir_all(&arch_dir).ctx(|| format!("creating {}", arch_dir.display()))?;
    let ini_path = arch_dir.join("setup.ini");
    fs::write(&ini_path, &ini).ctx(|| format!("writing {}", ini_path.display()))?;
    let sig = arch_dir.join("setup.ini.sig");
    fs::write(&sig, b"stand-in placeholder: not a signature\n")
        .ctx(|| format!("writing {}", sig.display()))?;
    let setup_exe: PathBuf = root.join(arch.setup_exe());
    fs::write(
        &setup_exe,
        b"MZ stand-in Cygwin setup program (never run)\n",
    )
    .ctx(|| format!("writing {}", setup_exe.display()))?;
    Ok(CygwinMirror {
        dir,
        setup_exe,
        arch,
    })
}
