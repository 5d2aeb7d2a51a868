//! A small, deterministic ISO 9660 writer with Joliet and Rock Ridge.
//!
//! Enough for a data CD of files and directories (no boot record, no
//! multi-extent files): an ECMA-119 level 1 tree whose 8.3 names are mangled,
//! Rock Ridge (RRIP 1.10: PX, TF, NM) on that tree for POSIX readers, and a
//! Joliet tree with the real names for Windows. Every directory is sorted and
//! every date is the one given in [`IsoOptions`], so the same input always
//! gives the same bytes.
//!
//! Layout: 16 empty sectors, the primary and Joliet volume descriptors, the
//! terminator, four path tables, the primary directories, the Rock Ridge
//! continuation area, the Joliet directories, then the file data in path
//! order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

pub const SECTOR: usize = 2048;
/// ECMA-119 allows eight directory levels, the root being the first.
const MAX_DIR_LEVEL: usize = 8;
/// Joliet says 64 UCS-2 characters; Windows and Linux read up to 103, the
/// limit of xorriso's `-joliet-long`, and Cygwin file names can be long.
pub const MAX_JOLIET_NAME: usize = 103;
/// A directory record's length is one byte.
const MAX_RECORD: usize = 254;
const CE_LEN: usize = 28;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("ISO path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    #[error("ISO path {path:?} is added twice")]
    Duplicate { path: String },
    #[error("ISO path {path:?} is under {file:?}, which is a file")]
    NotADirectory { path: String, file: String },
    #[error("ISO directory {path:?} is nested deeper than ISO 9660's {MAX_DIR_LEVEL} levels")]
    TooDeep { path: String },
    #[error("the ISO image is too large or has too many directories for ISO 9660")]
    TooLarge,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} changed while the image was written: expected {expected} bytes")]
    Changed { path: PathBuf, expected: u64 },
    #[error("writing the ISO image: {0}")]
    Write(#[source] io::Error),
}

/// A point in time, UTC, as ISO 9660 records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoTimestamp {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl IsoTimestamp {
    /// 2010-01-01 00:00:00 UTC, the seed's guest clock.
    pub const FIXED: IsoTimestamp = IsoTimestamp {
        year: 2010,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
    };

    /// The 7-byte form used in directory records and Rock Ridge TF.
    fn short(&self) -> [u8; 7] {
        [
            self.year.saturating_sub(1900).min(255) as u8,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// The 17-byte form used in volume descriptors.
    fn long(&self) -> [u8; 17] {
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year.min(9999),
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(&text.as_bytes()[..16]);
        out
    }
}

/// What goes into the volume descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoOptions {
    /// Mapped to ISO d-characters (upper case, `_`) for the primary
    /// descriptor, kept as given (up to 16 characters) for Joliet.
    pub volume_id: String,
    pub publisher: String,
    pub application: String,
    /// Every date in the image.
    pub timestamp: IsoTimestamp,
}

impl Default for IsoOptions {
    fn default() -> Self {
        IsoOptions {
            volume_id: "GUESTBOX".to_owned(),
            publisher: "guestbox".to_owned(),
            application: "guestbox".to_owned(),
            timestamp: IsoTimestamp::FIXED,
        }
    }
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    Bytes(Vec<u8>),
    /// A host file of the given length, read while the image is written.
    Path {
        path: PathBuf,
        len: u64,
    },
}

impl FileSource {
    fn len(&self) -> u64 {
        match self {
            FileSource::Bytes(b) => b.len() as u64,
            FileSource::Path { len, .. } => *len,
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Dir(BTreeMap<String, usize>),
    File(FileSource),
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    parent: usize,
    kind: Kind,
}

/// Collects files and directories, then writes the image.
#[derive(Debug, Clone)]
pub struct IsoBuilder {
    options: IsoOptions,
    nodes: Vec<Node>,
}

fn bad_path(path: &str, reason: impl Into<String>) -> IsoError {
    IsoError::BadPath {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Joliet forbids these, and control characters.
fn joliet_forbidden(c: char) -> bool {
    (c as u32) < 0x20 || matches!(c, '*' | '/' | ':' | ';' | '?' | '\\')
}

fn check_component(path: &str, name: &str) -> Result<(), IsoError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(bad_path(path, "empty, '.' or '..' path component"));
    }
    if name.len() > 255 {
        return Err(bad_path(path, "a name is longer than 255 bytes"));
    }
    if let Some(c) = name.chars().find(|&c| joliet_forbidden(c)) {
        return Err(bad_path(path, format!("Joliet names cannot contain {c:?}")));
    }
    if name.chars().any(|c| (c as u32) > 0xFFFF) {
        return Err(bad_path(
            path,
            "Joliet names are UCS-2: no characters beyond U+FFFF",
        ));
    }
    if name.encode_utf16().count() > MAX_JOLIET_NAME {
        return Err(bad_path(
            path,
            format!("a name is longer than {MAX_JOLIET_NAME} characters, too long for Joliet"),
        ));
    }
    Ok(())
}

impl IsoBuilder {
    pub fn new(options: IsoOptions) -> Self {
        IsoBuilder {
            options,
            nodes: vec![Node {
                name: String::new(),
                parent: 0,
                kind: Kind::Dir(BTreeMap::new()),
            }],
        }
    }

    /// Finds or creates the directory `components`, returning its node.
    fn dir_node(&mut self, path: &str, components: &[&str]) -> Result<usize, IsoError> {
        let mut cur = 0;
        for (i, name) in components.iter().enumerate() {
            let existing = match &self.nodes[cur].kind {
                Kind::Dir(children) => children.get(*name).copied(),
                Kind::File(_) => None,
            };
            cur = match existing {
                Some(n) => {
                    if matches!(self.nodes[n].kind, Kind::File(_)) {
                        return Err(IsoError::NotADirectory {
                            path: path.to_owned(),
                            file: components[..=i].join("/"),
                        });
                    }
                    n
                }
                None => self.insert(cur, name, Kind::Dir(BTreeMap::new())),
            };
        }
        Ok(cur)
    }

    fn insert(&mut self, parent: usize, name: &str, kind: Kind) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node {
            name: name.to_owned(),
            parent,
            kind,
        });
        if let Kind::Dir(children) = &mut self.nodes[parent].kind {
            children.insert(name.to_owned(), id);
        }
        id
    }

    fn split(path: &str) -> Result<Vec<&str>, IsoError> {
        let trimmed = path.trim_start_matches('/');
        if trimmed.is_empty() {
            return Err(bad_path(path, "empty path"));
        }
        let parts: Vec<&str> = trimmed.split('/').collect();
        for p in &parts {
            check_component(path, p)?;
        }
        Ok(parts)
    }

    /// Adds a directory (and its parents); adding one twice is fine.
    pub fn add_dir(&mut self, path: &str) -> Result<(), IsoError> {
        let parts = Self::split(path)?;
        self.dir_node(path, &parts)?;
        Ok(())
    }

    /// Adds a file at `path` ("a/b/c.txt"), creating its directories.
    pub fn add_file(&mut self, path: &str, source: FileSource) -> Result<(), IsoError> {
        let parts = Self::split(path)?;
        let (name, dirs) = parts
            .split_last()
            .ok_or_else(|| bad_path(path, "empty path"))?;
        let parent = self.dir_node(path, dirs)?;
        if let Kind::Dir(children) = &self.nodes[parent].kind {
            if children.contains_key(*name) {
                return Err(IsoError::Duplicate {
                    path: path.to_owned(),
                });
            }
        }
        self.insert(parent, name, Kind::File(source));
        Ok(())
    }

    /// Full path of a node, for messages and file order.
    fn path_of(&self, mut node: usize) -> String {
        let mut parts = Vec::new();
        while node != 0 {
            parts.push(self.nodes[node].name.as_str());
            node = self.nodes[node].parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// The size of the image in bytes.
    pub fn size(&self) -> Result<u64, IsoError> {
        Ok(self.plan()?.total_sectors as u64 * SECTOR as u64)
    }

    /// Writes the image to memory.
    pub fn to_vec(&self) -> Result<Vec<u8>, IsoError> {
        let mut out = Vec::new();
        self.write(&mut out)?;
        Ok(out)
    }

    /// Writes the image; returns the number of bytes written.
    pub fn write<W: Write>(&self, out: W) -> Result<u64, IsoError> {
        let plan = self.plan()?;
        let mut w = CountingWriter {
            inner: out,
            count: 0,
        };
        plan.emit(self, &mut w)?;
        Ok(w.count)
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> CountingWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), IsoError> {
        self.inner.write_all(bytes).map_err(IsoError::Write)?;
        self.count += bytes.len() as u64;
        Ok(())
    }

    fn pad_to_sector(&mut self) -> Result<(), IsoError> {
        let rem = (self.count % SECTOR as u64) as usize;
        if rem != 0 {
            self.put(&vec![0u8; SECTOR - rem])?;
        }
        Ok(())
    }
}

fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn sectors(bytes: usize) -> u32 {
    bytes.div_ceil(SECTOR) as u32
}

/// ISO d-characters: upper-case letters, digits and `_`.
fn d_chars(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
}

/// Level 1 name (without ";1") for a node, not yet made unique.
fn primary_base(name: &str, is_dir: bool) -> (String, String) {
    if is_dir {
        let mut n = d_chars(name);
        n.truncate(8);
        return (n, String::new());
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let mut stem = d_chars(stem);
    stem.truncate(8);
    let mut ext = d_chars(ext);
    ext.truncate(3);
    (stem, ext)
}

/// A directory's children, with their names in each tree.
#[derive(Debug, Clone)]
struct Child {
    node: usize,
    /// Primary identifier bytes (with ";1" for files) and its sort key.
    primary: Vec<u8>,
    primary_key: (Vec<u8>, Vec<u8>),
    joliet: Vec<u8>,
    joliet_key: (Vec<u8>, Vec<u8>),
}

/// One directory record before LBAs are known.
#[derive(Debug, Clone)]
struct Record {
    id: Vec<u8>,
    target: Target,
    inline_su: Vec<u8>,
    /// Rock Ridge entries moved to a continuation area: (area offset, bytes).
    ce: Option<(usize, Vec<u8>)>,
    offset: usize,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Dir(usize),
    File(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    Primary,
    Joliet,
}

struct TreePlan {
    /// Directories in path-table order (breadth first, sorted siblings).
    dirs: Vec<usize>,
    /// Records of each directory, by node.
    records: BTreeMap<usize, Vec<Record>>,
    dir_size: BTreeMap<usize, usize>,
    dir_lba: BTreeMap<usize, u32>,
    /// Each directory's identifier in this tree, for the path tables.
    dir_ident: BTreeMap<usize, Vec<u8>>,
    path_table_size: usize,
}

struct Plan {
    primary: TreePlan,
    joliet: TreePlan,
    /// Rock Ridge continuation area bytes and where it goes.
    ce_area: Vec<u8>,
    ce_lba: u32,
    path_table_lba: [u32; 4],
    files: Vec<usize>,
    file_lba: BTreeMap<usize, u32>,
    total_sectors: u32,
}

const ER_ID: &[u8] = b"RRIP_1991A";
const ER_DES: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const ER_SRC: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

impl IsoBuilder {
    fn children(&self, dir: usize) -> Vec<usize> {
        match &self.nodes[dir].kind {
            Kind::Dir(c) => c.values().copied().collect(),
            Kind::File(_) => Vec::new(),
        }
    }

    fn is_dir(&self, node: usize) -> bool {
        matches!(self.nodes[node].kind, Kind::Dir(_))
    }

    /// Names every child of `dir` in both trees, unique and sorted.
    fn name_children(&self, dir: usize) -> Vec<Child> {
        let mut taken: BTreeMap<(String, String), ()> = BTreeMap::new();
        let mut out = Vec::new();
        // BTreeMap order: by original name, so mangling is deterministic.
        for node in self.children(dir) {
            let is_dir = self.is_dir(node);
            let (stem, ext) = primary_base(&self.nodes[node].name, is_dir);
            let stem = if stem.is_empty() && ext.is_empty() {
                "_".to_owned()
            } else {
                stem
            };
            let mut candidate = (stem.clone(), ext.clone());
            let mut k = 1u32;
            while taken.contains_key(&candidate) {
                let suffix = format!("_{k}");
                let keep = 8usize.saturating_sub(suffix.len()).min(stem.len());
                candidate = (format!("{}{}", &stem[..keep], suffix), ext.clone());
                k += 1;
            }
            taken.insert(candidate.clone(), ());
            let (s, e) = candidate;
            let primary = if is_dir {
                s.clone().into_bytes()
            } else {
                format!("{s}.{e};1").into_bytes()
            };
            let name = &self.nodes[node].name;
            let (jstem, jext) = match name.rfind('.') {
                Some(i) if !is_dir => (&name[..i], &name[i + 1..]),
                _ => (name.as_str(), ""),
            };
            // No ";1" version in Joliet, as genisoimage and xorriso write it.
            let joliet = ucs2(name);
            out.push(Child {
                node,
                primary,
                primary_key: (s.into_bytes(), e.into_bytes()),
                joliet,
                joliet_key: (ucs2(jstem), ucs2(jext)),
            });
        }
        out
    }

    fn rr_entries(&self, node: usize, name: Option<&str>, ts: &[u8; 7]) -> Vec<Vec<u8>> {
        let mut entries = Vec::new();
        let (mode, links) = if self.is_dir(node) {
            let subdirs = self
                .children(node)
                .iter()
                .filter(|&&c| self.is_dir(c))
                .count();
            (0o040_755u32, 2 + subdirs as u32)
        } else {
            (0o100_644u32, 1)
        };
        let mut px = vec![b'P', b'X', 36, 1];
        px.extend(both32(mode));
        px.extend(both32(links));
        px.extend(both32(0));
        px.extend(both32(0));
        entries.push(px);
        let mut tf = vec![b'T', b'F', 12, 1, 0x02];
        tf.extend(ts);
        entries.push(tf);
        if let Some(name) = name {
            let bytes = name.as_bytes();
            let chunks: Vec<&[u8]> = bytes.chunks(250).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let flags = if i + 1 < chunks.len() { 1 } else { 0 };
                let mut nm = vec![b'N', b'M', (5 + chunk.len()) as u8, 1, flags];
                nm.extend(*chunk);
                entries.push(nm);
            }
        }
        entries
    }

    fn plan_tree(
        &self,
        tree: Tree,
        ts: &[u8; 7],
        ce_area: &mut Vec<u8>,
    ) -> Result<TreePlan, IsoError> {
        let mut dirs = vec![0usize];
        let mut records = BTreeMap::new();
        let mut dir_size = BTreeMap::new();
        let mut level = BTreeMap::from([(0usize, 1usize)]);
        let mut dir_ident = BTreeMap::from([(0usize, vec![0u8])]);
        let mut path_table_size = 10; // root: 8 + 1-byte id + pad
        let mut i = 0;
        while i < dirs.len() {
            let dir = dirs[i];
            i += 1;
            let mut kids = self.name_children(dir);
            match tree {
                Tree::Primary => kids.sort_by(|a, b| a.primary_key.cmp(&b.primary_key)),
                Tree::Joliet => kids.sort_by(|a, b| a.joliet_key.cmp(&b.joliet_key)),
            }
            let mut recs = Vec::with_capacity(kids.len() + 2);
            let parent = self.nodes[dir].parent;
            for (id, target, meta, name) in [
                (vec![0u8], Target::Dir(dir), dir, None),
                (vec![1u8], Target::Dir(parent), parent, None),
            ]
            .into_iter()
            .chain(kids.iter().map(|k| {
                let id = match tree {
                    Tree::Primary => k.primary.clone(),
                    Tree::Joliet => k.joliet.clone(),
                };
                let target = if self.is_dir(k.node) {
                    Target::Dir(k.node)
                } else {
                    Target::File(k.node)
                };
                (id, target, k.node, Some(self.nodes[k.node].name.as_str()))
            })) {
                let mut entries = Vec::new();
                if tree == Tree::Primary {
                    let is_root_dot = dir == 0 && id == [0u8];
                    if is_root_dot {
                        entries.push(vec![b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
                    }
                    entries.extend(self.rr_entries(meta, name, ts));
                    if is_root_dot {
                        let mut er = vec![
                            b'E',
                            b'R',
                            (8 + ER_ID.len() + ER_DES.len() + ER_SRC.len()) as u8,
                            1,
                            ER_ID.len() as u8,
                            ER_DES.len() as u8,
                            ER_SRC.len() as u8,
                            1,
                        ];
                        er.extend(ER_ID);
                        er.extend(ER_DES);
                        er.extend(ER_SRC);
                        entries.push(er);
                    }
                }
                let base = 33 + id.len() + (id.len() + 1) % 2;
                let total: usize = entries.iter().map(Vec::len).sum();
                let (inline_su, ce) = if base + total <= MAX_RECORD {
                    (entries.concat(), None)
                } else {
                    // Keep leading entries inline while room for CE remains.
                    let mut inline = Vec::new();
                    let mut rest = Vec::new();
                    let mut spilled = false;
                    for e in entries {
                        if !spilled && base + inline.len() + e.len() + CE_LEN <= MAX_RECORD {
                            inline.extend(e);
                        } else {
                            spilled = true;
                            rest.extend(e);
                        }
                    }
                    if rest.len() > SECTOR {
                        return Err(bad_path(
                            &self.path_of(meta),
                            "Rock Ridge data larger than one sector",
                        ));
                    }
                    // An area must not cross a sector boundary.
                    let used = ce_area.len() % SECTOR;
                    if used != 0 && used + rest.len() > SECTOR {
                        ce_area.resize(ce_area.len() + SECTOR - used, 0);
                    }
                    let offset = ce_area.len();
                    ce_area.extend(&rest);
                    (inline, Some((offset, rest)))
                };
                recs.push(Record {
                    id,
                    target,
                    inline_su,
                    ce,
                    offset: 0,
                });
            }
            // Place records; none may cross a sector boundary.
            let mut pos = 0usize;
            for r in &mut recs {
                let len = record_len(r);
                if pos % SECTOR + len > SECTOR {
                    pos = pos.div_ceil(SECTOR) * SECTOR;
                }
                r.offset = pos;
                pos += len;
            }
            dir_size.insert(dir, pos.div_ceil(SECTOR) * SECTOR);
            records.insert(dir, recs);
            let my_level = level.get(&dir).copied().unwrap_or(1);
            for k in &kids {
                if self.is_dir(k.node) {
                    if my_level + 1 > MAX_DIR_LEVEL {
                        return Err(IsoError::TooDeep {
                            path: self.path_of(k.node),
                        });
                    }
                    level.insert(k.node, my_level + 1);
                    dirs.push(k.node);
                    let ident = match tree {
                        Tree::Primary => k.primary.clone(),
                        Tree::Joliet => k.joliet.clone(),
                    };
                    path_table_size += 8 + ident.len() + ident.len() % 2;
                    dir_ident.insert(k.node, ident);
                }
            }
        }
        if dirs.len() > u16::MAX as usize {
            return Err(IsoError::TooLarge);
        }
        Ok(TreePlan {
            dirs,
            records,
            dir_size,
            dir_lba: BTreeMap::new(),
            dir_ident,
            path_table_size,
        })
    }

    fn plan(&self) -> Result<Plan, IsoError> {
        let ts = self.options.timestamp.short();
        let mut ce_area = Vec::new();
        let mut primary = self.plan_tree(Tree::Primary, &ts, &mut ce_area)?;
        let mut unused = Vec::new();
        let mut joliet = self.plan_tree(Tree::Joliet, &ts, &mut unused)?;

        let mut lba: u64 = 19; // 16 system area, PVD, Joliet SVD, terminator
        let mut path_table_lba = [0u32; 4];
        for (i, size) in [
            primary.path_table_size,
            primary.path_table_size,
            joliet.path_table_size,
            joliet.path_table_size,
        ]
        .into_iter()
        .enumerate()
        {
            path_table_lba[i] = lba as u32;
            lba += sectors(size) as u64;
        }
        for &d in &primary.dirs {
            primary.dir_lba.insert(d, lba as u32);
            lba += (primary.dir_size.get(&d).copied().unwrap_or(0) / SECTOR) as u64;
        }
        let ce_lba = lba as u32;
        lba += sectors(ce_area.len()) as u64;
        for &d in &joliet.dirs {
            joliet.dir_lba.insert(d, lba as u32);
            lba += (joliet.dir_size.get(&d).copied().unwrap_or(0) / SECTOR) as u64;
        }
        // File data in path order.
        let mut files: Vec<usize> = (0..self.nodes.len()).filter(|&n| !self.is_dir(n)).collect();
        files.sort_by_cached_key(|&n| self.path_of(n));
        let mut file_lba = BTreeMap::new();
        for &f in &files {
            let len = match &self.nodes[f].kind {
                Kind::File(src) => src.len(),
                Kind::Dir(_) => 0,
            };
            if len > u32::MAX as u64 {
                return Err(bad_path(
                    &self.path_of(f),
                    "files of 4 GiB or more need multi-extent ISO, unsupported",
                ));
            }
            file_lba.insert(f, lba as u32);
            lba += len.div_ceil(SECTOR as u64);
        }
        if lba > u32::MAX as u64 {
            return Err(IsoError::TooLarge);
        }
        Ok(Plan {
            primary,
            joliet,
            ce_area,
            ce_lba,
            path_table_lba,
            files,
            file_lba,
            total_sectors: lba as u32,
        })
    }
}

fn record_len(r: &Record) -> usize {
    let mut len = 33 + r.id.len() + (r.id.len() + 1) % 2 + r.inline_su.len();
    if r.ce.is_some() {
        len += CE_LEN;
    }
    len + len % 2
}

impl Plan {
    fn target_extent(&self, b: &IsoBuilder, tp: &TreePlan, t: Target) -> (u32, u32, bool) {
        match t {
            Target::Dir(d) => (
                tp.dir_lba.get(&d).copied().unwrap_or(0),
                tp.dir_size.get(&d).copied().unwrap_or(0) as u32,
                true,
            ),
            Target::File(f) => {
                let len = match &b.nodes[f].kind {
                    Kind::File(src) => src.len() as u32,
                    Kind::Dir(_) => 0,
                };
                // Empty files point at the end of the image, like mkisofs.
                let lba = if len == 0 {
                    self.total_sectors
                } else {
                    self.file_lba.get(&f).copied().unwrap_or(0)
                };
                (lba, len, false)
            }
        }
    }

    fn encode_record(&self, b: &IsoBuilder, tp: &TreePlan, r: &Record, ts: &[u8; 7]) -> Vec<u8> {
        let (lba, size, is_dir) = self.target_extent(b, tp, r.target);
        let len = record_len(r);
        let mut out = Vec::with_capacity(len);
        out.push(len as u8);
        out.push(0);
        out.extend(both32(lba));
        out.extend(both32(size));
        out.extend(ts);
        out.push(if is_dir { 2 } else { 0 });
        out.push(0);
        out.push(0);
        out.extend(both16(1));
        out.push(r.id.len() as u8);
        out.extend(&r.id);
        // Pad an even-length identifier so system use starts on an even byte.
        out.extend(std::iter::repeat_n(0u8, (r.id.len() + 1) % 2));
        out.extend(&r.inline_su);
        if let Some((offset, bytes)) = &r.ce {
            let block = self.ce_lba + (offset / SECTOR) as u32;
            out.extend([b'C', b'E', CE_LEN as u8, 1]);
            out.extend(both32(block));
            out.extend(both32((offset % SECTOR) as u32));
            out.extend(both32(bytes.len() as u32));
        }
        out.resize(len, 0);
        out
    }

    fn dir_extent(&self, b: &IsoBuilder, tp: &TreePlan, dir: usize, ts: &[u8; 7]) -> Vec<u8> {
        let mut out = vec![0u8; tp.dir_size.get(&dir).copied().unwrap_or(0)];
        if let Some(recs) = tp.records.get(&dir) {
            for r in recs {
                let bytes = self.encode_record(b, tp, r, ts);
                out[r.offset..r.offset + bytes.len()].copy_from_slice(&bytes);
            }
        }
        out
    }

    fn path_table(&self, b: &IsoBuilder, tp: &TreePlan, big_endian: bool) -> Vec<u8> {
        let mut number = BTreeMap::new();
        let mut out = Vec::with_capacity(tp.path_table_size);
        for (i, &d) in tp.dirs.iter().enumerate() {
            number.insert(d, (i + 1) as u16);
            let id = tp.dir_ident.get(&d).cloned().unwrap_or_else(|| vec![0]);
            let parent_no = number.get(&b.nodes[d].parent).copied().unwrap_or(1);
            let lba = tp.dir_lba.get(&d).copied().unwrap_or(0);
            out.push(id.len() as u8);
            out.push(0);
            if big_endian {
                out.extend(lba.to_be_bytes());
                out.extend(parent_no.to_be_bytes());
            } else {
                out.extend(lba.to_le_bytes());
                out.extend(parent_no.to_le_bytes());
            }
            out.extend(&id);
            if id.len() % 2 == 1 {
                out.push(0);
            }
        }
        out
    }

    fn volume_descriptor(&self, b: &IsoBuilder, joliet: bool) -> Vec<u8> {
        let o = &b.options;
        let tp = if joliet { &self.joliet } else { &self.primary };
        let mut d = vec![0u8; SECTOR];
        d[0] = if joliet { 2 } else { 1 };
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        let text = |field: &mut [u8], s: &str| {
            if joliet {
                let mut units: Vec<u8> = ucs2(s);
                units.truncate(field.len() / 2 * 2);
                for pair in field.chunks_mut(2) {
                    if pair.len() == 2 {
                        pair.copy_from_slice(&[0, b' ']);
                    } else {
                        pair[0] = 0;
                    }
                }
                field[..units.len()].copy_from_slice(&units);
            } else {
                let s = d_chars(s);
                let bytes = s.as_bytes();
                let n = bytes.len().min(field.len());
                field.fill(b' ');
                field[..n].copy_from_slice(&bytes[..n]);
            }
        };
        text(&mut d[8..40], "");
        text(&mut d[40..72], &o.volume_id);
        d[80..88].copy_from_slice(&both32(self.total_sectors));
        if joliet {
            d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
        }
        d[120..124].copy_from_slice(&both16(1));
        d[124..128].copy_from_slice(&both16(1));
        d[128..132].copy_from_slice(&both16(SECTOR as u16));
        d[132..140].copy_from_slice(&both32(tp.path_table_size as u32));
        let (l, m) = if joliet {
            (self.path_table_lba[2], self.path_table_lba[3])
        } else {
            (self.path_table_lba[0], self.path_table_lba[1])
        };
        d[140..144].copy_from_slice(&l.to_le_bytes());
        d[148..152].copy_from_slice(&m.to_be_bytes());
        // Root directory record, 34 bytes.
        let root_lba = tp.dir_lba.get(&0).copied().unwrap_or(0);
        let root_size = tp.dir_size.get(&0).copied().unwrap_or(0) as u32;
        let ts = o.timestamp.short();
        let mut root = vec![34u8, 0];
        root.extend(both32(root_lba));
        root.extend(both32(root_size));
        root.extend(ts);
        root.extend([2, 0, 0]);
        root.extend(both16(1));
        root.extend([1, 0]);
        d[156..190].copy_from_slice(&root);
        text(&mut d[190..318], "");
        text(&mut d[318..446], &o.publisher);
        text(&mut d[446..574], "");
        text(&mut d[574..702], &o.application);
        text(&mut d[702..739], "");
        text(&mut d[739..776], "");
        text(&mut d[776..813], "");
        let long = o.timestamp.long();
        d[813..830].copy_from_slice(&long);
        d[830..847].copy_from_slice(&long);
        d[847..863].copy_from_slice(b"0000000000000000");
        d[864..880].copy_from_slice(b"0000000000000000");
        d[881] = 1;
        d
    }

    fn emit<W: Write>(&self, b: &IsoBuilder, w: &mut CountingWriter<W>) -> Result<(), IsoError> {
        let ts = b.options.timestamp.short();
        w.put(&vec![0u8; 16 * SECTOR])?;
        w.put(&self.volume_descriptor(b, false))?;
        w.put(&self.volume_descriptor(b, true))?;
        let mut term = vec![0u8; SECTOR];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        term[6] = 1;
        w.put(&term)?;
        for tp in [&self.primary, &self.joliet] {
            for big in [false, true] {
                w.put(&self.path_table(b, tp, big))?;
                w.pad_to_sector()?;
            }
        }
        for &d in &self.primary.dirs {
            w.put(&self.dir_extent(b, &self.primary, d, &ts))?;
        }
        w.put(&self.ce_area)?;
        w.pad_to_sector()?;
        for &d in &self.joliet.dirs {
            w.put(&self.dir_extent(b, &self.joliet, d, &ts))?;
        }
        for &f in &self.files {
            let Kind::File(src) = &b.nodes[f].kind else {
                continue;
            };
            match src {
                FileSource::Bytes(bytes) => w.put(bytes)?,
                FileSource::Path { path, len } => copy_exact(path, *len, w)?,
            }
            w.pad_to_sector()?;
        }
        debug_assert_eq!(w.count, self.total_sectors as u64 * SECTOR as u64);
        Ok(())
    }
}

/// Copies exactly `len` bytes of `path`; a file that grew or shrank since
/// it was checked is an error, not a silently wrong image.
fn copy_exact<W: Write>(
    path: &PathBuf,
    len: u64,
    w: &mut CountingWriter<W>,
) -> Result<(), IsoError> {
    let read_err = |source| IsoError::Read {
        path: path.clone(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut remaining = len;
    let mut buf = vec![0u8; 1 << 16];
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want]).map_err(read_err)?;
        if n == 0 {
            return Err(IsoError::Changed {
                path: path.clone(),
                expected: len,
            });
        }
        w.put(&buf[..n])?;
        remaining -= n as u64;
    }
    let mut probe = [0u8; 1];
    if file.read(&mut probe).map_err(read_err)? != 0 {
        return Err(IsoError::Changed {
            path: path.clone(),
            expected: len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level1_names() {
        assert_eq!(
            primary_base("setup-x86_64.exe", false),
            ("SETUP_X8".into(), "EXE".into())
        );
        assert_eq!(
            primary_base("setup.ini", false),
            ("SETUP".into(), "INI".into())
        );
        assert_eq!(
            primary_base("archive.tar.xz", false),
            ("ARCHIVE_".into(), "XZ".into())
        );
        assert_eq!(
            primary_base(".hidden", false),
            ("_HIDDEN".into(), "".into())
        );
        assert_eq!(primary_base("x86_64", true), ("X86_64".into(), "".into()));
    }

    #[test]
    fn mangled_names_are_unique() {
        let mut b = IsoBuilder::new(IsoOptions::default());
        for n in [
            "longname-a.txt",
            "longname-b.txt",
            "longname-c.txt",
            "LONGNAME_.txt",
        ] {
            b.add_file(n, FileSource::Bytes(vec![1])).unwrap();
        }
        let kids = b.name_children(0);
        let mut ids: Vec<_> = kids
            .iter()
            .map(|k| String::from_utf8(k.primary.clone()).unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4, "{ids:?}");
        assert!(ids.iter().all(|i| i.len() <= 14), "{ids:?}");
    }

    #[test]
    fn rejects_bad_paths() {
        let mut b = IsoBuilder::new(IsoOptions::default());
        assert!(b.add_file("a/../b", FileSource::Bytes(vec![])).is_err());
        assert!(b.add_file("a:b", FileSource::Bytes(vec![])).is_err());
        assert!(b.add_file("", FileSource::Bytes(vec![])).is_err());
        b.add_file("f", FileSource::Bytes(vec![])).unwrap();
        assert!(matches!(
            b.add_file("f", FileSource::Bytes(vec![])),
            Err(IsoError::Duplicate { .. })
        ));
        assert!(matches!(
            b.add_file("f/g", FileSource::Bytes(vec![])),
            Err(IsoError::NotADirectory { .. })
        ));
        let long = "x".repeat(MAX_JOLIET_NAME + 1);
        assert!(b.add_file(&long, FileSource::Bytes(vec![])).is_err());
    }

    #[test]
    fn too_deep_is_an_error() {
        let mut b = IsoBuilder::new(IsoOptions::default());
        b.add_file("1/2/3/4/5/6/7/f", FileSource::Bytes(vec![1]))
            .unwrap();
        b.size().unwrap();
        b.add_file("1/2/3/4/5/6/7/8/f", FileSource::Bytes(vec![1]))
            .unwrap();
        assert!(matches!(b.size(), Err(IsoError::TooDeep { .. })));
    }

    #[test]
    fn size_matches_output() {
        let mut b = IsoBuilder::new(IsoOptions::default());
        b.add_file("a/b.txt", FileSource::Bytes(vec![7; 5000]))
            .unwrap();
        b.add_file("empty", FileSource::Bytes(vec![])).unwrap();
        let v = b.to_vec().unwrap();
        assert_eq!(v.len() as u64, b.size().unwrap());
        assert_eq!(&v[16 * SECTOR + 1..16 * SECTOR + 6], b"CD001");
        assert_eq!(v[17 * SECTOR], 2);
        assert_eq!(v[18 * SECTOR], 255);
    }
}
