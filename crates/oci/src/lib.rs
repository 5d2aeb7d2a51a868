//! Moves whole frozen guestbox bases through any OCI registry (distribution, Harbor,
//! GHCR, ...), knowing nothing of guestbox's store: a base here is a config blob (the
//! sealed guestbox manifest) and a list of named files.
//!
//! A base is ONE OCI artifact: an image manifest of `artifactType`
//! [`format::ARTIFACT_TYPE`], the config blob, and one layer per part of each file: files
//! are cut into fixed-size parts ([`PushOptions::part_size`]) so a cut connection costs at
//! most one part, and each part is a zstd frame (see [`push`] for why zstd).
//!
//! ```no_run
//! # async fn f() -> oci::Result<()> {
//! use oci::{Base, Client, NoProgress, Options, PullOptions, PushOptions, Reference};
//! let client = Client::new(Options::default())?;
//! let r: Reference = "registry.example:5000/team/debian-build:v3".parse()?;
//! let base = Base::from_dir("bases/abc".as_ref(), "manifest.json", &["guest.ram"])?;
//! let report = client
//!     .push(&r, &base, &PushOptions::new("state".into()), &NoProgress)
//!     .await?;
//! let pulled = client
//!     .pull(&r, &PullOptions::new("staging".into(), "bases/.tmp-x".into()), &NoProgress)
//!     .await?;
//! assert_eq!(report.digest, pulled.report.digest);
//! # Ok(()) }
//! ```

pub mod auth;
mod client;
mod error;
pub mod format;
mod pull;
pub mod push;
pub mod reference;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use auth::Credentials;
pub use client::{Client, Options};
pub use error::{Error, Result};
pub use format::PartInfo;
pub use pull::{Inspected, PullOptions, Pulled, PulledFile};
pub use push::PushOptions;
pub use reference::Reference;

use error::IoContext;

/// What to push: the config blob and the files, each under its name in the base.
#[derive(Debug, Clone)]
pub struct Base {
    /// The sealed guestbox manifest, byte for byte (its seal is checked after a pull).
    pub config: Vec<u8>,
    pub files: Vec<BaseFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFile {
    /// A relative path of plain names (`guest.ram`, `tpm/tpm2-00.permall`), as it is to
    /// appear in the pulled directory.
    pub name: String,
    pub path: PathBuf,
}

impl Base {
    /// `config` and `files` of directory `dir`, by name.
    pub fn from_dir(dir: &Path, config: &str, files: &[impl AsRef<str>]) -> Result<Base> {
        let path = dir.join(config);
        let config = std::fs::read(&path).at("reading the base's manifest", &path)?;
        Ok(Base {
            config,
            files: files
                .iter()
                .map(|name| BaseFile {
                    name: name.as_ref().to_string(),
                    path: dir.join(name.as_ref()),
                })
                .collect(),
        })
    }
}

/// Why a part moved no bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// Push: the registry already has the blob in this repository.
    Present,
    /// Push: the registry linked it from another repository (cross-repository mount).
    Mounted { from: String },
    /// Pull: a whole, verified copy was already in the staging directory.
    Staged,
    /// The same blob as an earlier part (e.g. two all-zero parts of a RAM file).
    Duplicate,
}

/// Hooks for drawing progress. Every method has an empty default. Called from the tasks
/// that move the parts, several parts at once; keep them quick.
pub trait Progress: Send + Sync {
    /// Once, before anything moves: every part of every file, in manifest order.
    fn begin(&self, _parts: &[PartInfo]) {}
    /// A part's blob (`size` bytes, zstd) starts moving; `done` bytes of it are already
    /// there (a resumed upload or download).
    fn part_started(&self, _part: &PartInfo, _size: u64, _done: u64) {}
    /// `done` of `total` bytes of the part's blob are moved.
    fn part_bytes(&self, _part: &PartInfo, _done: u64, _total: u64) {}
    /// The part is moved and verified (pull: and written into its file).
    fn part_finished(&self, _part: &PartInfo) {}
    /// The part needed no transfer.
    fn part_skipped(&self, _part: &PartInfo, _why: &Skip) {}
}

/// Draws nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a push or pull did, for `--json` and for benchmarks (`bytes_transferred` /
/// `seconds` is the rate on the wire).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The reference as given.
    pub reference: String,
    /// Digest of the image manifest (`sha256:…`): `REGISTRY/REPO@DIGEST` names exactly this.
    pub digest: String,
    /// Blobs of the artifact: every part and the config.
    pub blobs: usize,
    /// Blobs moved (at least partly) by this run.
    pub blobs_transferred: usize,
    /// Blobs that needed nothing (present, staged, duplicate).
    pub blobs_skipped: usize,
    /// Push: blobs linked from another repository of the registry.
    pub blobs_mounted: usize,
    /// Bytes of blobs sent or received by this run (compressed, as on the wire, not
    /// counting HTTP overhead).
    pub bytes_transferred: u64,
    /// Bytes of blobs an earlier, interrupted run had already moved and this one resumed.
    pub bytes_resumed: u64,
    /// Total bytes of all blobs (compressed).
    pub bytes_blobs: u64,
    /// Total bytes of the files (uncompressed).
    pub bytes_files: u64,
    /// Wall-clock seconds of the whole operation.
    pub seconds: f64,
}

/// Annotations the caller may want to set on the manifest (`org.opencontainers.image.*`).
pub type Annotations = BTreeMap<String, String>;
