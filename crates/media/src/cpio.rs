//! Initramfs archives (cpio "newc", the format the Linux kernel unpacks).
//!
//! Entries are kept in a sorted map and written with fixed inode numbers, owners and
//! times, so the same entries always give the same bytes: image cache keys stay honest.

use std::collections::BTreeMap;
use std::io::{self, Write};

use cpio::newc::{Builder, ModeFileType};

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("initramfs path {0:?} must be relative, without '..' or empty components")]
    BadPath(String),
    #[error("initramfs entry {0:?} is larger than the 4 GiB a cpio newc entry can hold")]
    TooLarge(String),
    #[error("writing initramfs: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An initramfs being assembled in memory. Parent directories are created implicitly.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    fn check(path: &str) -> Result<String, CpioError> {
        let trimmed = path.trim_start_matches('/');
        let ok = !trimmed.is_empty()
            && trimmed
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if ok {
            Ok(trimmed.to_string())
        } else {
            Err(CpioError::BadPath(path.to_string()))
        }
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<&mut Self, CpioError> {
        let path = Self::check(path)?;
        // Every ancestor must exist as a directory before the kernel unpacks the child.
        let mut parent = String::new();
        for component in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.nodes
                .entry(parent.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        self.nodes.insert(path, node);
        Ok(self)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, CpioError> {
        self.insert(path, Node::Dir { mode })
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<&mut Self, CpioError> {
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge(path.to_string()));
        }
        self.insert(path, Node::File { mode, data })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, CpioError> {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    pub fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        self.insert(path, Node::CharDev { mode, major, minor })
    }

    /// Paths in the archive, in the order they are written.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Writes the archive. BTreeMap order puts every directory before its children.
    pub fn write_to<W: Write>(&self, mut out: W) -> Result<W, CpioError> {
        for (index, (path, node)) in self.nodes.iter().enumerate() {
            // Inode 0 is reserved; the kernel links entries with equal inode numbers.
            let ino = u32::try_from(index + 1).map_err(|_| CpioError::TooLarge(path.clone()))?;
            let base = Builder::new(path).ino(ino).uid(0).gid(0).mtime(0).nlink(1);
            out = match node {
                Node::Dir { mode } => base
                    .mode(mode & 0o7777)
                    .set_mode_file_type(ModeFileType::Directory)
                    .nlink(2)
                    .write(out, 0)
                    .finish()?,
                Node::File { mode, data } => {
                    let len =
                        u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(path.clone()))?;
                    let mut w = base
                        .mode(mode & 0o7777)
                        .set_mode_file_type(ModeFileType::Regular)
                        .write(out, len);
                    w.write_all(data)?;
                    w.finish()?
                }
                Node::Symlink { target } => {
                    let len = u32::try_from(target.len())
                        .map_err(|_| CpioError::TooLarge(path.clone()))?;
                    let mut w = base
                        .mode(0o777)
                        .set_mode_file_type(ModeFileType::Symlink)
                        .write(out, len);
                    w.write_all(target.as_bytes())?;
                    w.finish()?
                }
                Node::CharDev { mode, major, minor } => base
                    .mode(mode & 0o7777)
                    .set_mode_file_type(ModeFileType::Char)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(out, 0)
                    .finish()?,
            };
        }
        Ok(cpio::newc::trailer(out)?)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, CpioError> {
        self.write_to(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_back(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        loop {
            let mut reader = cpio::NewcReader::new(rest).expect("valid header");
            if reader.entry().is_trailer() {
                break;
            }
            let name = reader.entry().name().to_string();
            let mode = reader.entry().mode();
            let mut data = Vec::new();
            reader.read_to_end(&mut data).expect("read entry");
            out.push((name, mode, data));
            rest = reader.finish().expect("finish entry");
        }
        out
    }

    #[test]
    fn parents_come_first_and_content_round_trips() {
        let mut fs = Initramfs::new();
        fs.file("/lib/modules/x/virtio.ko", 0o644, b"module".to_vec())
            .unwrap();
        fs.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        fs.symlink("bin/sh", "busybox").unwrap();
        fs.char_device("dev/console", 0o600, 5, 1).unwrap();
        let entries = read_back(&fs.to_bytes().unwrap());
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/virtio.ko"
            ]
        );
        let init = entries.iter().find(|e| e.0 == "init").unwrap();
        assert_eq!(init.1, 0o100755);
        assert_eq!(init.2, b"#!/bin/sh\n");
        let link = entries.iter().find(|e| e.0 == "bin/sh").unwrap();
        assert_eq!(link.1 & 0o170000, 0o120000);
        assert_eq!(link.2, b"busybox");
        let console = entries.iter().find(|e| e.0 == "dev/console").unwrap();
        assert_eq!(console.1, 0o020600);
    }

    #[test]
    fn same_entries_give_same_bytes_in_any_insertion_order() {
        let mut a = Initramfs::new();
        a.file("b", 0o644, vec![1]).unwrap();
        a.file("a/c", 0o644, vec![2, 3]).unwrap();
        let mut b = Initramfs::new();
        b.file("a/c", 0o644, vec![2, 3]).unwrap();
        b.file("b", 0o644, vec![1]).unwrap();
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
    }

    #[test]
    fn rejects_escaping_paths() {
        let mut fs = Initramfs::new();
        for bad in ["", "/", "a/../b", "a//b", "./x"] {
            assert!(
                matches!(fs.file(bad, 0o644, vec![]), Err(CpioError::BadPath(_))),
                "{bad:?} accepted"
            );
        }
    }
}
