//! Mount points from `/proc/self/mountinfo`.
//!
//! The kernel escapes four bytes in its path fields as octal: space (`\040`), tab (`\011`),
//! newline (`\012`) and backslash (`\134`). A reader that undoes only some of them judges a
//! mount below such a path "not mounted" — and a recursive delete then walks into it.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Undoes the kernel's octal escapes (`\ooo`) in one mountinfo field.
pub fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = &bytes[i + 1..(i + 4).min(bytes.len())];
            if digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The mount points listed in `text` (mountinfo's fifth field), unescaped.
pub fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// The mount points of this process's mount namespace.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    Ok(parse_mount_points(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The mount points at or below `dir` (which should be canonical), deepest first.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_four_escapes_are_undone() {
        let line =
            r"36 35 98:0 / /mnt/a\040b\011c\012d\134e rw,noatime master:1 - ext3 /dev/root rw";
        assert_eq!(
            parse_mount_points(line),
            [PathBuf::from("/mnt/a b\tc\nd\\e")]
        );
        // A backslash not followed by three octal digits is kept as it is.
        assert_eq!(unescape(r"/x\9y\04"), PathBuf::from(r"/x\9y\04"));
    }
}
