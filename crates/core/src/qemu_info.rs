//! Facts about the host's QEMU that snapshots depend on.

use std::path::Path;

use crate::process::run_tool;
use crate::{Error, Result};

/// `(major, minor, micro)` from `qemu-system-x86_64 --version`.
pub async fn version(qemu: &Path) -> Result<(u32, u32, u32)> {
    let out = run_tool("qemu --version", qemu, &["--version"]).await?;
    parse_version(&String::from_utf8_lossy(&out)).ok_or_else(|| {
        Error::Other(format!(
            "cannot read QEMU's version from {}",
            qemu.display()
        ))
    })
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut it = number.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// The versioned machine type behind an alias (`q35` → `pc-q35-7.2`), so a snapshot is
/// revived on exactly the machine it was taken on even after QEMU moves the alias.
pub async fn resolve_machine(qemu: &Path, alias: &str) -> Result<String> {
    let out = run_tool("qemu -machine help", qemu, &["-machine", "help"]).await?;
    resolve_machine_in(&String::from_utf8_lossy(&out), alias).ok_or_else(|| {
        Error::Other(format!(
            "QEMU at {} has no machine type {alias:?}",
            qemu.display()
        ))
    })
}

fn resolve_machine_in(help: &str, alias: &str) -> Option<String> {
    for line in help.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some(alias) {
            continue;
        }
        if let Some((_, rest)) = line.split_once("(alias of ") {
            return rest.split(')').next().map(str::to_string);
        }
        return Some(alias.to_string());
    }
    None
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
        assert_eq!(
            resolve_machine_in(help, "q35").as_deref(),
            Some("pc-q35-7.2")
        );
        assert_eq!(
            resolve_machine_in(help, "pc-q35-7.2").as_deref(),
            Some("pc-q35-7.2")
        );
        assert_eq!(resolve_machine_in(help, "virt"), None);
    }
}
