//! A 1.44 MB FAT12 floppy image, as Windows Setup reads its answer file from.
//!
//! The image is fully determined by its inputs: the volume id is given, every
//! timestamp is a fixed date and files are written in name order, so the same
//! files give byte-identical images.

use std::io::{Cursor, Write};

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};

/// 80 cylinders x 2 heads x 18 sectors x 512 bytes.
pub const FLOPPY_SIZE: usize = 1_474_560;

/// Every timestamp on the floppy: 2010-01-01 00:00, the seed's guest clock.
const FIXED_DATE: Date = Date {
    year: 2010,
    month: 1,
    day: 1,
};

#[derive(Debug)]
struct FixedClock;

impl TimeProvider for FixedClock {
    fn get_current_date(&self) -> Date {
        FIXED_DATE
    }
    fn get_current_date_time(&self) -> DateTime {
        DateTime {
            date: FIXED_DATE,
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_CLOCK: FixedClock = FixedClock;

#[derive(Debug, thiserror::Error)]
pub enum FloppyError {
    #[error("floppy file name {name:?} is not usable: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("floppy file {name:?} is given twice")]
    Duplicate { name: String },
    #[error("the files do not fit on a 1.44 MB floppy ({needed} bytes of data)")]
    TooLarge { needed: u64 },
    #[error("writing {name:?} to the floppy image: {source}")]
    Write {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Volume id and label of a floppy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloppyOptions {
    /// The FAT volume serial number. Fixed, so images are reproducible.
    pub volume_id: u32,
    /// Up to 11 characters, upper-case ASCII letters, digits, `_` and `-`.
    pub label: String,
}

impl Default for FloppyOptions {
    fn default() -> Self {
        FloppyOptions {
            volume_id: 0x6775_6278, // "gubx"
            label: "GUESTBOX".to_owned(),
        }
    }
}

/// One file in the floppy's root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloppyFile {
    /// A long file name; FAT keeps an 8.3 alias next to it.
    pub name: String,
    pub data: Vec<u8>,
}

impl FloppyFile {
    pub fn new(name: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        FloppyFile {
            name: name.into(),
            data: data.into(),
        }
    }
}

fn check_name(name: &str) -> Result<(), FloppyError> {
    let bad = |reason| FloppyError::BadName {
        name: name.to_owned(),
        reason,
    };
    // Long names are stored as UTF-16, at most 255 units.
    if name.is_empty() || name.encode_utf16().count() > 255 {
        return Err(bad("it must have 1 to 255 characters"));
    }
    if name == "." || name == ".." || name.ends_with('.') || name.ends_with(' ') {
        return Err(bad("FAT names cannot end with '.' or a space"));
    }
    if name.chars().any(|c| {
        c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
    }) {
        return Err(bad(
            "FAT names cannot contain control characters or / \\ : * ? \" < > |",
        ));
    }
    Ok(())
}

fn label_bytes(label: &str) -> Result<[u8; 11], FloppyError> {
    let bad = |reason| FloppyError::BadName {
        name: label.to_owned(),
        reason,
    };
    if label.is_empty() || label.len() > 11 {
        return Err(bad("a volume label has 1 to 11 characters"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(bad(
            "a volume label has upper-case ASCII letters, digits, '_' and '-'",
        ));
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

/// Writes `files` into the root directory of a fresh 1.44 MB FAT12 image.
pub fn build_floppy(files: &[FloppyFile], options: &FloppyOptions) -> Result<Vec<u8>, FloppyError> {
    let label = label_bytes(&options.label)?;
    let mut sorted: Vec<&FloppyFile> = files.iter().collect();
    for f in &sorted {
        check_name(&f.name)?;
    }
    // FAT names are case-insensitive: sort and compare the way FAT does.
    sorted.sort_by_key(|f| f.name.to_uppercase());
    for pair in sorted.windows(2) {
        if pair[0].name.to_uppercase() == pair[1].name.to_uppercase() {
            return Err(FloppyError::Duplicate {
                name: pair[1].name.clone(),
            });
        }
    }
    let needed: u64 = sorted.iter().map(|f| f.data.len() as u64).sum();

    let io_err = |name: &str| {
        let name = name.to_owned();
        move |source| FloppyError::Write { name, source }
    };
    let mut image = Cursor::new(vec![0u8; FLOPPY_SIZE]);
    let format = FormatVolumeOptions::new()
        .fat_type(FatType::Fat12)
        .bytes_per_sector(512)
        .total_sectors((FLOPPY_SIZE / 512) as u32)
        .bytes_per_cluster(512)
        .max_root_dir_entries(224)
        .fats(2)
        .media(0xF0)
        .sectors_per_track(18)
        .heads(2)
        .drive_num(0)
        .volume_id(options.volume_id)
        .volume_label(label);
    fatfs::format_volume(&mut image, format).map_err(io_err("(format)"))?;
    image.set_position(0);
    {
        let fs = FileSystem::new(
            &mut image,
            FsOptions::new()
                .update_accessed_date(false)
                .time_provider(&FIXED_CLOCK),
        )
        .map_err(io_err("(mount)"))?;
        for f in &sorted {
            let root = fs.root_dir();
            let mut file = root.create_file(&f.name).map_err(io_err(&f.name))?;
            file.truncate().map_err(io_err(&f.name))?;
            if let Err(e) = file.write_all(&f.data) {
                // fatfs reports a full disk as an opaque error: look.
                if fs
                    .stats()
                    .map(|st| st.free_clusters() == 0)
                    .unwrap_or(false)
                {
                    return Err(FloppyError::TooLarge { needed });
                }
                return Err(FloppyError::Write {
                    name: f.name.clone(),
                    source: e,
                });
            }
            file.flush().map_err(io_err(&f.name))?;
        }
        fs.unmount().map_err(io_err("(unmount)"))?;
    }
    Ok(image.into_inner())
}
