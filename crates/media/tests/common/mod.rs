//! Shared by the integration tests: external tools and a tiny Cygwin mirror.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha512};

/// The path of `tool`, or a failing test that says which package to
/// install. Never a skip: a missing tool must not pass silently.
pub fn tool(name: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("the test needs `{name}`, which is not installed: apt-get install {debian_package}");
}

/// Runs a command, panicking with its output if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

/// Runs a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sha512_hex(data: &[u8]) -> String {
    Sha512::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The mirror directory's name, as setup --download spells a mirror URL.
pub const MIRROR_NAME: &str = "https%3a%2f%2fmirror.example%2fcygwin%2f";

/// A package of the fixture mirror.
pub struct FakePackage {
    pub name: &'static str,
    pub category: &'static str,
    pub requires: &'static str,
    pub depends2: &'static str,
    pub provides: &'static str,
}

impl FakePackage {
    pub const fn new(name: &'static str, category: &'static str) -> Self {
        FakePackage {
            name,
            category,
            requires: "",
            depends2: "",
            provides: "",
        }
    }

    pub fn archive_path(&self) -> String {
        format!("x86_64/release/{0}/{0}-1.0-1.tar.xz", self.name)
    }

    /// Deterministic fake archive contents.
    pub fn contents(&self) -> Vec<u8> {
        let mut v = b"\xFD7zXZ\0fake ".to_vec();
        v.extend(self.name.as_bytes());
        v.extend(std::iter::repeat_n(b'x', self.name.len() * 100));
        v
    }
}

/// The fixture's packages:
/// - base-a (Base) requires base-b (Base);
/// - openssh depends2 on libfoo (with a version), cygrunsrv and the
///   virtual perl_base, which perl provides;
/// - libfoo requires libbar, libbar depends2 on libfoo: a cycle;
/// - unrelated is outside the closure and has no archive in the mirror.
pub fn fixture_packages() -> Vec<FakePackage> {
    vec![
        FakePackage {
            requires: "base-b",
            ..FakePackage::new("base-a", "Base System")
        },
        FakePackage::new("base-b", "Base"),
        FakePackage {
            depends2: "libfoo (>= 1.0), cygrunsrv, perl_base",
            ..FakePackage::new("openssh", "Net")
        },
        FakePackage {
            requires: "libbar",
            ..FakePackage::new("libfoo", "Libs")
        },
        FakePackage {
            depends2: "libfoo",
            ..FakePackage::new("libbar", "Libs")
        },
        FakePackage::new("cygrunsrv", "Admin"),
        FakePackage {
            provides: "perl_base",
            ..FakePackage::new("perl", "Perl Interpreters")
        },
        FakePackage::new("unrelated", "Games"),
    ]
}

/// setup.ini text for `packages`, with multi-line ldesc, [prev] and [test]
/// sections (whose files are not in the mirror), and a message: key.
pub fn setup_ini(packages: &[FakePackage]) -> String {
    let mut s = String::from(
        "# This file was automatically generated at 2024-06-01 12:00:00 UTC.\n\
         release: cygwin\n\
         arch: x86_64\n\
         setup-timestamp: 1717243200\n\
         setup-minimum-version: 2.903\n\
         setup-version: 2.932\n\n",
    );
    for p in packages {
        let data = p.contents();
        s.push_str(&format!("@ {}\n", p.name));
        s.push_str(&format!("sdesc: \"The {} package\"\n", p.name));
        s.push_str(&format!(
            "ldesc: \"The {} package.\nIts long description spans lines\n@ and has a line that looks like a package,\ncategory: and one like a key.\"\n",
            p.name
        ));
        s.push_str(&format!("category: {}\n", p.category));
        if !p.requires.is_empty() {
            s.push_str(&format!("requires: {}\n", p.requires));
        }
        if !p.depends2.is_empty() {
            s.push_str(&format!("depends2: {}\n", p.depends2));
        }
        if !p.provides.is_empty() {
            s.push_str(&format!("provides: {}\n", p.provides));
        }
        s.push_str("version: 1.0-1\n");
        s.push_str(&format!(
            "install: {} {} {}\n",
            p.archive_path(),
            data.len(),
            sha512_hex(&data)
        ));
        s.push_str(&format!(
            "source: x86_64/release/{0}/{0}-1.0-1-src.tar.xz 10 {1}\n",
            p.name,
            "0".repeat(128)
        ));
        if p.name == "openssh" {
            s.push_str("message: openssh \"Run ssh-host-config\nafter installing\"\n");
        }
        s.push_str("[prev]\n");
        s.push_str("version: 0.9-1\n");
        s.push_str(&format!(
            "install: x86_64/release/{0}/{0}-0.9-1.tar.xz 5 {1}\n",
            p.name,
            "1".repeat(128)
        ));
        s.push_str("[test]\nversion: 2.0-0.1\n");
        s.push_str(&format!(
            "install: x86_64/release/{0}/{0}-2.0-0.1.tar.xz 5 {1}\n",
            p.name,
            "2".repeat(128)
        ));
        s.push('\n');
    }
    s
}

/// A mirror in `root`: `root/MIRROR_NAME/x86_64/setup.ini`, the archives of
/// every package but "unrelated", and a fake setup-x86_64.exe next to it.
pub struct Mirror {
    pub dir: PathBuf,
    pub setup_exe: PathBuf,
}

pub fn write_mirror(root: &Path, packages: &[FakePackage], ini: &str) -> Mirror {
    let dir = root.join(MIRROR_NAME);
    std::fs::create_dir_all(dir.join("x86_64")).unwrap();
    std::fs::write(dir.join("x86_64/setup.ini"), ini).unwrap();
    for p in packages {
        if p.name == "unrelated" {
            continue;
        }
        let path = dir.join(p.archive_path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, p.contents()).unwrap();
    }
    let setup_exe = root.join("setup-x86_64.exe");
    std::fs::write(&setup_exe, b"MZ fake cygwin setup\0").unwrap();
    Mirror { dir, setup_exe }
}

pub fn fixture_mirror(root: &Path) -> Mirror {
    let pkgs = fixture_packages();
    let ini = setup_ini(&pkgs);
    write_mirror(root, &pkgs, &ini)
}

pub const TEST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGd1ZXN0Ym94dGVzdGtleWd1ZXN0Ym94dGVzdA guestbox@test";
