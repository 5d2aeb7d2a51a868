//! How a base is laid out as one OCI artifact: an image manifest whose config blob is the
//! sealed guestbox manifest and whose layers are the base's files, cut into parts.
//!
//! The OCI types are a handful of serde structs rather than the `oci-spec` crate: three
//! structs of a few fields each do not justify its builder/getter macro dependencies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const ARTIFACT_TYPE: &str = "application/vnd.guestbox.base.v1";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.guestbox.base.config.v1+json";
/// A zstd frame of one part of one file.
pub const PART_MEDIA_TYPE: &str = "application/vnd.guestbox.base.part.v1+zstd";

pub const ANN_TITLE: &str = "org.opencontainers.image.title";
pub const ANN_FILE_SIZE: &str = "vnd.guestbox.file.size";
pub const ANN_PART_INDEX: &str = "vnd.guestbox.part.index";
pub const ANN_PART_COUNT: &str = "vnd.guestbox.part.count";
pub const ANN_PART_OFFSET: &str = "vnd.guestbox.part.offset";
pub const ANN_PART_LENGTH: &str = "vnd.guestbox.part.length";

pub const DEFAULT_PART_SIZE: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Where one part sits in its file. Parts of a file are numbered from 0, in order, and
/// cover it exactly; an empty file has one part of length 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartInfo {
    pub file: String,
    pub index: u32,
    pub count: u32,
    pub offset: u64,
    pub length: u64,
    pub file_size: u64,
}

impl PartInfo {
    pub(crate) fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ANN_TITLE.to_string(), self.file.clone()),
            (ANN_FILE_SIZE.to_string(), self.file_size.to_string()),
            (ANN_PART_INDEX.to_string(), self.index.to_string()),
            (ANN_PART_COUNT.to_string(), self.count.to_string()),
            (ANN_PART_OFFSET.to_string(), self.offset.to_string()),
            (ANN_PART_LENGTH.to_string(), self.length.to_string()),
        ])
    }

    /// `guest.ram part 3/8`, for messages.
    pub fn label(&self) -> String {
        if self.count == 1 {
            self.file.clone()
        } else {
            format!("{} part {}/{}", self.file, self.index + 1, self.count)
        }
    }
}

/// The parts of a file of `size` bytes cut every `part_size` bytes.
pub(crate) fn plan_parts(file: &str, size: u64, part_size: u64) -> Vec<PartInfo> {
    let count = size.div_ceil(part_size).max(1);
    (0..count)
        .map(|i| {
            let offset = i * part_size;
            PartInfo {
                file: file.to_string(),
                index: i as u32,
                count: count as u32,
                offset,
                length: part_size.min(size - offset),
                file_size: size,
            }
        })
        .collect()
}

/// A file name as it may appear in a base: plain path components joined by '/'
/// (`tpm/tpm2-00.permall`, a Windows guest's TPM state). A registry's manifest is outside
/// input, and a title of `../x` or `/x` must not write outside the destination.
pub(crate) fn check_file_name(name: &str) -> std::result::Result<(), String> {
    let plain = |c: &str| !c.is_empty() && c != "." && c != ".." && c.len() <= 255;
    if name.len() > 4096 || name.contains(['\\', '\0']) || !name.split('/').all(plain) {
        Err(format!(
            "file name {name:?} is not a relative path of plain names (no empty, '.' or \
             '..' part)"
        ))
    } else {
        Ok(())
    }
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Checks what a pulled manifest says and returns its layers as parts, in manifest order.
pub(crate) fn parse_layers(
    reference: &str,
    manifest: &ImageManifest,
) -> Result<Vec<(PartInfo, Descriptor)>> {
    let bad = |reason: String| Error::Manifest {
        reference: reference.to_string(),
        reason,
    };
    let mut parts = Vec::with_capacity(manifest.layers.len());
    for (n, layer) in manifest.layers.iter().enumerate() {
        if layer.media_type != PART_MEDIA_TYPE {
            return Err(bad(format!(
                "layer {n} has media type {:?}, not {PART_MEDIA_TYPE}",
                layer.media_type
            )));
        }
        crate::reference::parse_digest(&layer.digest)
            .map_err(|e| bad(format!("layer {n}: {e}")))?;
        let get = |key: &str| {
            layer
                .annotations
                .get(key)
                .ok_or_else(|| bad(format!("layer {n} has no annotation {key}")))
        };
        let num = |key: &str| -> Result<u64> {
            get(key)?
                .parse::<u64>()
                .map_err(|_| bad(format!("layer {n}: annotation {key} is not a number")))
        };
        let file = get(ANN_TITLE)?.clone();
        check_file_name(&file).map_err(|e| bad(format!("layer {n}: {e}")))?;
        let part = PartInfo {
            file,
            index: u32::try_from(num(ANN_PART_INDEX)?).map_err(|_| bad("index".into()))?,
            count: u32::try_from(num(ANN_PART_COUNT)?).map_err(|_| bad("count".into()))?,
            offset: num(ANN_PART_OFFSET)?,
            length: num(ANN_PART_LENGTH)?,
            file_size: num(ANN_FILE_SIZE)?,
        };
        parts.push((part, layer.clone()));
    }
    // Every file's parts: numbered 0..count, contiguous, covering the file exactly.
    let mut by_file: BTreeMap<&str, Vec<&PartInfo>> = BTreeMap::new();
    for (p, _) in &parts {
        by_file.entry(&p.file).or_default().push(p);
    }
    for (file, mut ps) in by_file {
        ps.sort_by_key(|p| p.index);
        let (count, size) = (ps[0].count, ps[0].file_size);
        let mut next = 0u64;
        for (i, p) in ps.iter().enumerate() {
            if p.index as usize != i || p.count != count || p.file_size != size || p.offset != next
            {
                return Err(bad(format!(
                    "the parts of {file} are not numbered 0..{count} back to back"
                )));
            }
            next = p
                .offset
                .checked_add(p.length)
                .ok_or_else(|| bad("overflow".into()))?;
        }
        if ps.len() != count as usize || next != size {
            return Err(bad(format!(
                "the parts of {file} cover {next} of its {size} bytes in {} of {count} parts",
                ps.len()
            )));
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_file() {
        let p = plan_parts("a", 10, 4);
        assert_eq!(
            p.iter().map(|p| (p.offset, p.length)).collect::<Vec<_>>(),
            [(0, 4), (4, 4), (8, 2)]
        );
        assert!(p.iter().all(|p| p.count == 3 && p.file_size == 10));
        assert_eq!(plan_parts("a", 8, 4).len(), 2);
        let empty = plan_parts("a", 0, 4);
        assert_eq!((empty.len(), empty[0].length), (1, 0));
    }

    fn manifest(parts: &[PartInfo]) -> ImageManifest {
        ImageManifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.into()),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor {
                media_type: CONFIG_MEDIA_TYPE.into(),
                digest: sha256_digest(b"{}"),
                size: 2,
                annotations: BTreeMap::new(),
            },
            layers: parts
                .iter()
                .map(|p| Descriptor {
                    media_type: PART_MEDIA_TYPE.into(),
                    digest: sha256_digest(p.file.as_bytes()),
                    size: 1,
                    annotations: p.annotations(),
                })
                .collect(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn layers_round_trip_and_bad_ones_are_refused() {
        let mut parts = plan_parts("guest.ram", 10, 4);
        parts.extend(plan_parts("vmlinuz", 3, 4));
        let got = parse_layers("r", &manifest(&parts)).unwrap();
        assert_eq!(got.into_iter().map(|(p, _)| p).collect::<Vec<_>>(), parts);

        let mut missing = parts.clone();
        missing.remove(1);
        let err = parse_layers("r", &manifest(&missing)).unwrap_err();
        assert!(err.to_string().contains("guest.ram"), "{err}");

        for name in ["../x", "/x", "tpm/../../x", "tpm//x", "a/./b", ""] {
            let mut evil = parts.clone();
            evil[3].file = name.into();
            let err = parse_layers("r", &manifest(&evil)).unwrap_err();
            assert!(err.to_string().contains("plain names"), "{name:?}: {err}");
        }
        assert!(check_file_name("tpm/tpm2-00.permall").is_ok());

        let mut short = parts;
        short[2].length = 1;
        assert!(parse_layers("r", &manifest(&short)).is_err());
    }
}
