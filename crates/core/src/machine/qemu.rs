//! Facts about the host's QEMU that snapshots depend on: its release and its machine types.
//!
//! Learning them means starting QEMU twice (`--version`, `-machine help`), which costs a
//! run tens of milliseconds for facts that only change with the binary. So they are kept
//! per binary — its path, size and modification time — in the cache directory, as the KVM
//! verdict is, and in memory for the life of the process.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::host::process::run_tool;
use crate::{Error, IoContext, Result};

/// `(major, minor, micro)`.
pub type Version = (u32, u32, u32);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuFacts {
    pub version: Version,
    /// `(name, alias_of)` from `-machine help`.
    machines: Vec<(String, Option<String>)>,
}

/// Identifies one build of a binary: it is only ever replaced, never edited in place.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct BinaryId {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
}

#[derive(Serialize, Deserialize)]
struct Cached {
    binary: BinaryId,
    facts: QemuFacts,
}

fn memo() -> &'static Mutex<HashMap<BinaryId, QemuFacts>> {
    static MEMO: OnceLock<Mutex<HashMap<BinaryId, QemuFacts>>> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

impl QemuFacts {
    /// The facts of `qemu`, from memory, the cache directory `cache`, or (once per binary)
    /// QEMU itself.
    pub async fn of(cache: &Path, qemu: &Path) -> Result<QemuFacts> {
        let meta = std::fs::metadata(qemu).ctx(|| format!("reading {}", qemu.display()))?;
        let binary = BinaryId {
            path: qemu.to_path_buf(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        };
        if let Some(f) = memo().lock().ok().and_then(|m| m.get(&binary).cloned()) {
            return Ok(f);
        }
        let cache_file = cache.join("qemu-facts.json");
        let cached = std::fs::read(&cache_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Cached>>(&b).ok())
            .unwrap_or_default();
        let facts = match cached.iter().find(|c| c.binary == binary) {
            Some(c) => c.facts.clone(),
            None => {
                let facts = Self::ask(qemu).await?;
                // Other binaries' entries stay (several QEMUs may be in use); this one's
                // older builds go.
                let mut kept: Vec<Cached> = cached
                    .into_iter()
                    .filter(|c| c.binary.path != binary.path)
                    .collect();
                kept.push(Cached {
                    binary: binary.clone(),
                    facts: facts.clone(),
                });
                // Best effort: a read-only cache only costs the next run two QEMU starts.
                if let Ok(json) = serde_json::to_vec_pretty(&kept) {
                    let _ = std::fs::create_dir_all(cache);
                    let tmp = cache_file.with_extension(format!("tmp-{}", std::process::id()));
                    if std::fs::write(&tmp, json).is_ok() {
                        let _ = std::fs::rename(&tmp, &cache_file);
                    }
                }
                facts
            }
        };
        if let Ok(mut m) = memo().lock() {
            m.insert(binary, facts.clone());
        }
        Ok(facts)
    }

    async fn ask(qemu: &Path) -> Result<QemuFacts> {
        let out = run_tool("qemu --version", qemu, &["--version"]).await?;
        let text = String::from_utf8_lossy(&out);
        let version = parse_version(&text).ok_or_else(|| Error::Qemu {
            program: qemu.to_path_buf(),
            problem: format!(
                "its --version output has no version number: {:?}",
                text.trim()
            ),
        })?;
        let out = run_tool("qemu -machine help", qemu, &["-machine", "help"]).await?;
        Ok(QemuFacts {
            version,
            machines: parse_machines(&String::from_utf8_lossy(&out)),
        })
    }

    /// The versioned machine type behind an alias (`q35` → `pc-q35-7.2`), so a snapshot is
    /// revived on exactly the machine it was taken on even after QEMU moves the alias.
    pub fn resolve_machine(&self, alias: &str) -> Option<String> {
        self.machines
            .iter()
            .find(|(name, _)| name == alias)
            .map(|(name, alias_of)| alias_of.clone().unwrap_or_else(|| name.clone()))
    }

    /// [`Self::resolve_machine`], or an error that says which QEMU lacks it.
    pub fn machine(&self, qemu: &Path, alias: &str) -> Result<String> {
        self.resolve_machine(alias).ok_or_else(|| Error::Qemu {
            program: qemu.to_path_buf(),
            problem: format!(
                "it has no machine type {alias:?} (see `{} -machine help`)",
                qemu.display()
            ),
        })
    }
}

/// QEMU 8.2 and later can map a private RAM file with `readonly=on`; before, QEMU opens it
/// read-write (and never writes it), and `readonly=on` alone makes guest writes hang.
pub fn private_ram_can_be_readonly(qemu: Version) -> bool {
    qemu >= (8, 2, 0)
}

fn parse_version(text: &str) -> Option<Version> {
    let rest = text.split("version ").nth(1)?;
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut it = number.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

fn parse_machines(help: &str) -> Vec<(String, Option<String>)> {
    help.lines()
        .filter(|l| !l.starts_with("Supported machines"))
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            let alias_of = line
                .split_once("(alias of ")
                .and_then(|(_, rest)| rest.split(')').next())
                .map(str::to_string);
            Some((name.to_string(), alias_of))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_and_machine_aliases() {
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"),
            Some((7, 2, 22))
        );
        assert_eq!(
            parse_version("QEMU emulator version 10.1\n"),
            Some((10, 1, 0))
        );
        let help = "Supported machines are:\n\
            q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n\
            pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\n\
            none                 empty machine\n";
        let facts = QemuFacts {
            version: (7, 2, 0),
            machines: parse_machines(help),
        };
        assert_eq!(facts.resolve_machine("q35").as_deref(), Some("pc-q35-7.2"));
        assert_eq!(
            facts.resolve_machine("pc-q35-7.2").as_deref(),
            Some("pc-q35-7.2")
        );
        assert_eq!(facts.resolve_machine("virt"), None);
    }

    /// A QEMU that counts how often it is started; the facts are asked once per binary.
    #[tokio::test]
    async fn facts_are_asked_once_per_binary_and_again_when_it_changes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let qemu = dir.path().join("qemu-system-x86_64");
        let script = format!(
            "#!/bin/sh\necho x >> {count}\ncase \"$1\" in\n  --version) echo 'QEMU emulator version 7.2.9' ;;\n  *) printf 'Supported machines are:\\nq35   Q35 (alias of pc-q35-7.2)\\npc-q35-7.2   Q35\\n' ;;\nesac\n",
            count = count.display()
        );
        std::fs::write(&qemu, &script).unwrap();
        std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = dir.path().join("cache");
        let starts = || {
            std::fs::read_to_string(&count)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let f = QemuFacts::of(&cache, &qemu).await.unwrap();
        assert_eq!(f.version, (7, 2, 9));
        assert_eq!(f.resolve_machine("q35").as_deref(), Some("pc-q35-7.2"));
        assert_eq!(starts(), 2);
        // Another process (no memory of this one) reads the cache file.
        memo().lock().unwrap().clear();
        QemuFacts::of(&cache, &qemu).await.unwrap();
        assert_eq!(starts(), 2);
        // A new build of the binary at the same path is asked again.
        std::fs::write(&qemu, script.replace("7.2.9", "7.2.10") + "\n").unwrap();
        let f = QemuFacts::of(&cache, &qemu).await.unwrap();
        assert_eq!(f.version, (7, 2, 10));
        assert_eq!(starts(), 4);
    }
}
