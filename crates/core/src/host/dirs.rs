//! Where guestbox keeps things.
//!
//! `GUESTBOX_HOME` (if set) holds everything: `cache/` (rebuildable images, probe results),
//! `bases/`, `runs/`. Otherwise the XDG cache dir holds the cache and the XDG data dir the rest.

use std::path::PathBuf;

use crate::{Error, IoContext, Result};

#[derive(Debug, Clone)]
pub struct Dirs {
    /// Rebuildable artifacts: images, the KVM probe result.
    pub cache: PathBuf,
    /// Bases and run directories.
    pub data: PathBuf,
}

impl Dirs {
    pub fn from_env() -> Result<Self> {
        if let Some(home) = std::env::var_os("GUESTBOX_HOME").filter(|h| !h.is_empty()) {
            // Absolute: paths under it are handed to QEMU and recorded in overlays (a
            // relative backing file would be taken relative to the overlay).
            let home = std::path::absolute(PathBuf::from(&home))
                .ctx(|| format!("GUESTBOX_HOME {}", PathBuf::from(&home).display()))?;
            return Ok(Self::under(home));
        }
        let cache = dirs::cache_dir().ok_or_else(|| {
            Error::Usage(
                "cannot find a cache directory: set HOME, XDG_CACHE_HOME or GUESTBOX_HOME".into(),
            )
        })?;
        let data = dirs::data_dir().ok_or_else(|| {
            Error::Usage(
                "cannot find a data directory: set HOME, XDG_DATA_HOME or GUESTBOX_HOME".into(),
            )
        })?;
        Ok(Self {
            cache: cache.join("guestbox"),
            data: data.join("guestbox"),
        })
    }

    /// Everything under one directory (GUESTBOX_HOME, tests).
    pub fn under(home: PathBuf) -> Self {
        Self {
            cache: home.join("cache"),
            data: home,
        }
    }

    pub fn images(&self) -> PathBuf {
        self.cache.join("images")
    }

    pub fn create(&self) -> Result<()> {
        for dir in [&self.cache, &self.data] {
            std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }
}
