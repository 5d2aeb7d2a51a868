//! The host directories a run shares with the guest (`-v HOST:GUEST[:ro]`), already parsed
//! into values at the edge; here they are checked against the host and the slots.

use std::collections::BTreeSet;
use std::path::PathBuf;

use link::shares;

use crate::{Error, Result};

/// A host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    pub readonly: bool,
}

/// A volume whose host directory exists, by its canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedVolume {
    pub volume: Volume,
    pub host: PathBuf,
}

/// Checks volumes: count, host directories that exist, no guest path twice.
pub fn check_volumes(volumes: &[Volume]) -> Result<Vec<CheckedVolume>> {
    if volumes.len() > shares::VOLUME_SLOTS {
        return Err(Error::Usage(format!(
            "{} volumes given; at most {} -v per run",
            volumes.len(),
            shares::VOLUME_SLOTS
        )));
    }
    let mut seen = BTreeSet::new();
    volumes
        .iter()
        .map(|v| {
            let host = v.host.canonicalize().map_err(|e| {
                Error::Usage(format!(
                    "-v {}: the host directory cannot be used: {e}",
                    v.host.display()
                ))
            })?;
            if !host.is_dir() {
                return Err(Error::Usage(format!(
                    "-v {}: not a directory",
                    v.host.display()
                )));
            }
            if !seen.insert(v.guest.trim_end_matches('/').to_string()) {
                return Err(Error::Usage(format!(
                    "-v: guest path {} is given twice",
                    v.guest
                )));
            }
            Ok(CheckedVolume {
                volume: v.clone(),
                host,
            })
        })
        .collect()
}
