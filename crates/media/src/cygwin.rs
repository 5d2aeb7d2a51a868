//! An offline Cygwin package CD from a local mirror.
//!
//! Input is the directory `setup-x86_64.exe --download` leaves: a directory
//! named after the mirror URL (e.g. `https%3a%2f%2fmirrors.kernel.org%2fsourceware%2fcygwin%2f`)
//! holding `x86_64/setup.ini` and `x86_64/release/...`. We parse setup.ini,
//! take the closure of the requested packages (their `requires:` and
//! `depends2:`, and everything in category Base, as setup itself installs
//! Base), verify each archive's size and SHA-512 against setup.ini, and lay
//! the files out at their mirror paths so `setup -L -l CDROOT` finds them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha512};

use crate::iso9660::{FileSource, IsoBuilder, IsoError, IsoOptions};

/// File at the CD root whose presence tells the bootstrap script which
/// drive letter the package CD got.
pub const CD_MARKER: &str = "guestbox-cygwin.tag";

#[derive(Debug, thiserror::Error)]
pub enum CygwinError {
    #[error("setup.ini line {line}{}: {reason}", package_suffix(.package))]
    Malformed {
        line: usize,
        package: Option<String>,
        reason: String,
    },
    #[error("package {name:?}{} is not in setup.ini", required_by_suffix(.required_by))]
    MissingPackage {
        name: String,
        /// The package (and its setup.ini line) that asked for it; None if
        /// the caller asked for it.
        required_by: Option<(String, usize)>,
    },
    #[error("package {package:?} (setup.ini line {line}) has no install: line")]
    NoInstall { package: String, line: usize },
    #[error("package {package:?} (setup.ini line {line}): {path} is missing from the mirror")]
    MissingFile {
        package: String,
        line: usize,
        path: PathBuf,
    },
    #[error("package {package:?} (setup.ini line {line}): {path} has {actual} bytes, setup.ini says {expected}")]
    SizeMismatch {
        package: String,
        line: usize,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("package {package:?} (setup.ini line {line}): {path} has SHA-512 {actual}, setup.ini says {expected}")]
    ChecksumMismatch {
        package: String,
        line: usize,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("the mirror directory {path}: {reason}")]
    BadMirror { path: PathBuf, reason: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Iso(#[from] IsoError),
}

fn package_suffix(p: &Option<String>) -> String {
    p.as_ref()
        .map(|p| format!(" (package {p:?})"))
        .unwrap_or_default()
}

fn required_by_suffix(r: &Option<(String, usize)>) -> String {
    r.as_ref()
        .map(|(p, l)| format!(", required by {p:?} (setup.ini line {l}),"))
        .unwrap_or_default()
}

/// The Cygwin architecture, which names the setup program and the
/// directory in the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CygwinArch {
    #[default]
    X86_64,
    /// 32-bit; only old mirrors (e.g. for Windows XP) still have it.
    X86,
}

impl CygwinArch {
    pub fn dir(self) -> &'static str {
        match self {
            CygwinArch::X86_64 => "x86_64",
            CygwinArch::X86 => "x86",
        }
    }

    pub fn setup_exe(self) -> &'static str {
        match self {
            CygwinArch::X86_64 => "setup-x86_64.exe",
            CygwinArch::X86 => "setup-x86.exe",
        }
    }
}

/// An `install:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallFile {
    /// Relative to the mirror directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha512: [u8; 64],
    pub line: usize,
}

/// One `@ name` stanza (its current version; `[prev]`/`[test]` skipped).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Package {
    pub name: String,
    /// Line of the `@ name` header.
    pub line: usize,
    pub sdesc: Option<String>,
    pub ldesc: Option<String>,
    pub version: Option<String>,
    pub categories: Vec<String>,
    /// Names from `requires:` and `depends2:`, in order, without versions.
    pub depends: Vec<String>,
    pub provides: Vec<String>,
    pub install: Option<InstallFile>,
}

impl Package {
    pub fn in_category(&self, category: &str) -> bool {
        self.categories
            .iter()
            .any(|c| c.eq_ignore_ascii_case(category))
    }
}

/// A parsed setup.ini.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetupIni {
    /// `key: value` lines before the first package (release, arch, setup-timestamp, ...).
    pub header: BTreeMap<String, String>,
    pub packages: BTreeMap<String, Package>,
}

fn malformed(line: usize, package: Option<&str>, reason: impl Into<String>) -> CygwinError {
    CygwinError::Malformed {
        line,
        package: package.map(str::to_owned),
        reason: reason.into(),
    }
}

fn parse_hex64(s: &str) -> Option<[u8; 64]> {
    if s.len() != 128 {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_package_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

/// Where the lines being read belong.
#[derive(PartialEq, Eq)]
enum Section {
    Header,
    Current,
    /// `[prev]`, `[test]` and any other alternative version: skipped.
    Skipped,
}

impl SetupIni {
    /// Parses setup.ini text. Unknown keys are ignored (setup.ini grows
    /// keys over time); lines that fit no form are errors.
    pub fn parse(text: &str) -> Result<SetupIni, CygwinError> {
        let mut ini = SetupIni::default();
        let mut current: Option<Package> = None;
        let mut section = Section::Header;
        let lines: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        let mut i = 0;
        while i < lines.len() {
            let lineno = i + 1;
            let line = lines[i];
            i += 1;
            let pkg_name = current.as_ref().map(|p| p.name.clone());
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('@') {
                let name = rest.trim();
                if !valid_package_name(name) {
                    return Err(malformed(
                        lineno,
                        None,
                        format!("bad package name {name:?}"),
                    ));
                }
                if let Some(done) = current.take() {
                    ini.finish(done)?;
                }
                current = Some(Package {
                    name: name.to_owned(),
                    line: lineno,
                    ..Package::default()
                });
                section = Section::Current;
                continue;
            }
            if trimmed.starts_with('[') {
                let Some(tag) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
                    return Err(malformed(lineno, pkg_name.as_deref(), "unclosed '['"));
                };
                if current.is_none() {
                    return Err(malformed(
                        lineno,
                        None,
                        format!("[{tag}] before any package"),
                    ));
                }
                section = if tag == "curr" {
                    Section::Current
                } else {
                    Section::Skipped
                };
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(malformed(
                    lineno,
                    pkg_name.as_deref(),
                    "expected 'key: value', '@ package' or '[section]'",
                ));
            };
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(malformed(
                    lineno,
                    pkg_name.as_deref(),
                    format!("bad key {key:?}"),
                ));
            }
            // A value may hold a quoted string running over several lines.
            let mut value = value.trim().to_owned();
            if let Some(open) = value.find('"') {
                if !value[open + 1..].contains('"') {
                    loop {
                        let Some(next) = lines.get(i) else {
                            return Err(malformed(
                                lineno,
                                pkg_name.as_deref(),
                                format!("{key}: quoted string never closed"),
                            ));
                        };
                        i += 1;
                        value.push('\n');
                        value.push_str(next);
                        if next.contains('"') {
                            break;
                        }
                    }
                }
            }
            match section {
                Section::Header => {
                    ini.header.insert(key.to_owned(), value);
                }
                Section::Skipped => {}
                Section::Current => {
                    let Some(pkg) = current.as_mut() else {
                        continue;
                    };
                    apply_key(pkg, key, &value, lineno)?;
                }
            }
        }
        if let Some(done) = current.take() {
            ini.finish(done)?;
        }
        Ok(ini)
    }

    fn finish(&mut self, pkg: Package) -> Result<(), CygwinError> {
        if let Some(first) = self.packages.get(&pkg.name) {
            return Err(malformed(
                pkg.line,
                Some(&pkg.name),
                format!("package defined twice (first at line {})", first.line),
            ));
        }
        self.packages.insert(pkg.name.clone(), pkg);
        Ok(())
    }

    /// Who provides `name`: the package itself, or the first package (by
    /// name) whose `provides:` lists it.
    fn resolve(&self, name: &str) -> Option<&Package> {
        self.packages.get(name).or_else(|| {
            self.packages
                .values()
                .find(|p| p.provides.iter().any(|v| v == name))
        })
    }

    /// The requested packages, everything in category Base, and all that
    /// they depend on, sorted by name. Cycles are fine.
    pub fn closure<S: AsRef<str>>(&self, requested: &[S]) -> Result<Vec<&Package>, CygwinError> {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut queue: VecDeque<(&str, Option<&Package>)> = VecDeque::new();
        for r in requested {
            queue.push_back((r.as_ref(), None));
        }
        for p in self.packages.values().filter(|p| p.in_category("Base")) {
            queue.push_back((p.name.as_str(), None));
        }
        let mut out: BTreeMap<&str, &Package> = BTreeMap::new();
        while let Some((name, by)) = queue.pop_front() {
            if !seen.insert(name) {
                continue;
            }
            let Some(pkg) = self.resolve(name) else {
                return Err(CygwinError::MissingPackage {
                    name: name.to_owned(),
                    required_by: by.map(|p| (p.name.clone(), p.line)),
                });
            };
            if out.insert(pkg.name.as_str(), pkg).is_none() {
                for dep in &pkg.depends {
                    queue.push_back((dep.as_str(), Some(pkg)));
                }
            }
        }
        Ok(out.into_values().collect())
    }
}

fn apply_key(pkg: &mut Package, key: &str, value: &str, line: usize) -> Result<(), CygwinError> {
    let unquote = |v: &str| v.trim().trim_matches('"').to_owned();
    match key {
        "sdesc" => pkg.sdesc = Some(unquote(value)),
        "ldesc" => pkg.ldesc = Some(unquote(value)),
        "version" => pkg.version = Some(value.trim().to_owned()),
        "category" => pkg.categories = value.split_whitespace().map(str::to_owned).collect(),
        "requires" => {
            for dep in value.split_whitespace() {
                if !valid_package_name(dep) {
                    return Err(malformed(
                        line,
                        Some(&pkg.name),
                        format!("requires: bad name {dep:?}"),
                    ));
                }
                pkg.depends.push(dep.to_owned());
            }
        }
        "depends2" | "provides" => {
            // "a, b (>= 1.2), c": names before any version constraint.
            for entry in value.split(',') {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let name = entry
                    .split(|c: char| c.is_whitespace() || c == '(')
                    .next()
                    .unwrap_or_default();
                if !valid_package_name(name) {
                    return Err(malformed(
                        line,
                        Some(&pkg.name),
                        format!("{key}: bad entry {entry:?}"),
                    ));
                }
                if key == "provides" {
                    pkg.provides.push(name.to_owned());
                } else {
                    pkg.depends.push(name.to_owned());
                }
            }
        }
        "install" => {
            let fields: Vec<&str> = value.split_whitespace().collect();
            let [path, size, hash] = fields[..] else {
                return Err(malformed(
                    line,
                    Some(&pkg.name),
                    "install: expected PATH SIZE SHA512",
                ));
            };
            let size: u64 = size.parse().map_err(|_| {
                malformed(line, Some(&pkg.name), format!("install: bad size {size:?}"))
            })?;
            let sha512 = parse_hex64(hash).ok_or_else(|| {
                let what = if hash.len() == 32 {
                    "an MD5 sum (old setup.ini); only SHA-512 is supported"
                } else {
                    "not a SHA-512 sum (128 hex digits)"
                };
                malformed(line, Some(&pkg.name), format!("install: {what}"))
            })?;
            if path.starts_with('/')
                || path.contains('\\')
                || path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(malformed(
                    line,
                    Some(&pkg.name),
                    format!("install: bad path {path:?}"),
                ));
            }
            pkg.install = Some(InstallFile {
                path: path.to_owned(),
                size,
                sha512,
                line,
            });
        }
        _ => {}
    }
    Ok(())
}

/// A local mirror as `setup --download` leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CygwinMirror {
    /// The directory named after the mirror URL; holds `<arch>/setup.ini`.
    pub dir: PathBuf,
    /// The setup program to put on the CD (setup-x86_64.exe or setup-x86.exe).
    pub setup_exe: PathBuf,
    pub arch: CygwinArch,
}

/// One verified file for the CD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// Path on the CD, `/`-separated.
    pub cd_path: String,
    pub source: PathBuf,
    pub size: u64,
}

/// The verified contents of the package CD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineRepo {
    pub arch: CygwinArch,
    /// Name of the mirror directory on the CD.
    pub mirror_name: String,
    /// Every package installed, by name.
    pub packages: Vec<String>,
    /// setup program, setup.ini (and .sig) and the package archives.
    pub files: Vec<RepoFile>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CygwinError + '_ {
    move |source| CygwinError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sha512_file(path: &Path) -> Result<[u8; 64], CygwinError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha512::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

impl CygwinMirror {
    pub fn setup_ini_path(&self) -> PathBuf {
        self.dir.join(self.arch.dir()).join("setup.ini")
    }

    /// Parses setup.ini, resolves `packages` (plus Base) and verifies
    /// every archive's size and SHA-512.
    pub fn resolve(&self, packages: &[String]) -> Result<OfflineRepo, CygwinError> {
        let mirror_name = self
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| CygwinError::BadMirror {
                path: self.dir.clone(),
                reason: "its name must be valid UTF-8 (it names the mirror on the CD)".into(),
            })?;
        let ini_path = self.setup_ini_path();
        let text = std::fs::read_to_string(&ini_path).map_err(io_err(&ini_path))?;
        let ini = SetupIni::parse(&text)?;
        let closure = ini.closure(packages)?;

        let mut files = Vec::new();
        let setup_len = std::fs::metadata(&self.setup_exe)
            .map_err(io_err(&self.setup_exe))?
            .len();
        files.push(RepoFile {
            cd_path: self.arch.setup_exe().to_owned(),
            source: self.setup_exe.clone(),
            size: setup_len,
        });
        let arch_dir = self.dir.join(self.arch.dir());
        // setup.ini as it is, byte for byte: its signature covers it.
        for name in ["setup.ini", "setup.ini.sig"] {
            let source = arch_dir.join(name);
            match std::fs::metadata(&source) {
                Ok(m) => files.push(RepoFile {
                    cd_path: format!("{mirror_name}/{}/{name}", self.arch.dir()),
                    source,
                    size: m.len(),
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound && name.ends_with(".sig") => {}
                Err(e) => return Err(io_err(&source)(e)),
            }
        }
        for pkg in &closure {
            let Some(inst) = &pkg.install else {
                return Err(CygwinError::NoInstall {
                    package: pkg.name.clone(),
                    line: pkg.line,
                });
            };
            let source = inst
                .path
                .split('/')
                .fold(self.dir.clone(), |p, c| p.join(c));
            let meta = match std::fs::metadata(&source) {
                Ok(m) if m.is_file() => m,
                Ok(_) | Err(_) => {
                    return Err(CygwinError::MissingFile {
                        package: pkg.name.clone(),
                        line: inst.line,
                        path: source,
                    })
                }
            };
            if meta.len() != inst.size {
                return Err(CygwinError::SizeMismatch {
                    package: pkg.name.clone(),
                    line: inst.line,
                    path: source,
                    expected: inst.size,
                    actual: meta.len(),
                });
            }
            let actual = sha512_file(&source)?;
            if actual != inst.sha512 {
                return Err(CygwinError::ChecksumMismatch {
                    package: pkg.name.clone(),
                    line: inst.line,
                    path: source,
                    expected: hex(&inst.sha512),
                    actual: hex(&actual),
                });
            }
            files.push(RepoFile {
                cd_path: format!("{mirror_name}/{}", inst.path),
                source,
                size: inst.size,
            });
        }
        files.sort_by(|a, b| a.cd_path.cmp(&b.cd_path));
        files.dedup_by(|a, b| a.cd_path == b.cd_path);
        Ok(OfflineRepo {
            arch: self.arch,
            mirror_name,
            packages: closure.iter().map(|p| p.name.clone()).collect(),
            files,
        })
    }
}

impl OfflineRepo {
    /// An ISO builder holding the repository, the marker file and `extra`
    /// files (scripts) at the CD root; add more before writing if needed.
    pub fn iso(&self, extra: &[(String, Vec<u8>)]) -> Result<IsoBuilder, CygwinError> {
        let mut b = IsoBuilder::new(IsoOptions {
            volume_id: "CYGWIN".to_owned(),
            ..IsoOptions::default()
        });
        for f in &self.files {
            b.add_file(
                &f.cd_path,
                FileSource::Path {
                    path: f.source.clone(),
                    len: f.size,
                },
            )?;
        }
        b.add_file(
            CD_MARKER,
            FileSource::Bytes(b"guestbox offline Cygwin package CD\r\n".to_vec()),
        )?;
        for (name, data) in extra {
            b.add_file(name, FileSource::Bytes(data.clone()))?;
        }
        Ok(b)
    }
}
