//! A base's manifest: everything needed to revive it exactly and to tell whether this host
//! can, sealed with blake3; its secrets, kept apart; the names of its files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::machine::qemu::Version;
use crate::pair::PairConfig;
use crate::{IoContext, Result};

pub const MANIFEST: &str = "manifest.json";
pub const SECRETS: &str = "secrets.json";
/// Bump when the base layout or the way bases are made changes incompatibly.
/// 3: manifests are sealed. 4: the guest carries a VM Generation ID device, and its login
/// shell is guestbox's exec helper. 5: the guest's job server is frozen with it, and the
/// pair settles before the freeze. 6: the guest's generator is reseeded last before the
/// freeze (replayed revives draw the same numbers). 7: firmware-booted guests (Windows):
/// the guest's machine in `pair.guest`, and a base's files are those its manifest lists.
pub const BASE_FORMAT: u32 = 7;

/// Everything needed to revive a base exactly, and to tell whether this host can.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub created: String,
    pub profile: String,
    /// The profile's inputs (packages, disk size ...), as given.
    pub inputs: serde_json::Value,
    pub guestbox_version: String,
    /// blake3 of the controller agent inside the base: the host must speak its protocol.
    #[serde(default)]
    pub agent: String,
    /// `(major, minor, micro)` of the QEMU that made the snapshot.
    pub qemu_version: Version,
    pub pair: PairConfig,
    pub guest_address: String,
    pub controller_address: String,
    /// The guest's SSH host key (public).
    pub guest_host_key: String,
    /// Installed Debian packages of the guest (`name -> version`), for the record.
    pub guest_packages: BTreeMap<String, String>,
    /// File name -> (size, blake3) of every file of the base.
    pub files: BTreeMap<String, FileSum>,
    /// Seconds the bootstrap took, by stage.
    pub timings: BTreeMap<String, f64>,
    /// blake3 of the manifest without this field: a changed byte anywhere that still
    /// parses is caught on load. None only in bases of format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl Manifest {
    fn digest(&self) -> Result<String> {
        let unsealed = Manifest {
            seal: None,
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&unsealed).ctx(|| "serialising a manifest")?;
        Ok(blake3::hash(&bytes).to_hex().to_string())
    }

    /// The manifest with its seal set.
    pub fn sealed(self) -> Result<Self> {
        let seal = Some(self.digest()?);
        Ok(Manifest { seal, ..self })
    }

    pub(crate) fn seal_holds(&self) -> Result<bool> {
        match &self.seal {
            Some(seal) => Ok(*seal == self.digest()?),
            // Format 2 bases were made before seals; from 3 on a missing seal is damage.
            None => Ok(self.format < 3),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub size: u64,
    pub blake3: String,
}

/// Secrets of a base, kept apart from the manifest (which `inspect` prints) in a 0400 file.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub client_key: String,
    pub smb_password: String,
    /// A Windows guest's administrator password (the answer file's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

/// The files every base has, in the order they are checked.
pub mod files {
    pub const GUEST_DISK: &str = "guest.qcow2";
    pub const CONTROLLER_DISK: &str = "controller.qcow2";
    pub const GUEST_RAM: &str = "guest.ram";
    pub const CONTROLLER_RAM: &str = "controller.ram";
    pub const GUEST_STATE: &str = "guest.state";
    pub const CONTROLLER_STATE: &str = "controller.state";
    pub const KERNEL: &str = "vmlinuz";
    pub const GUEST_INITRD: &str = "guest.initrd";
    pub const CONTROLLER_INITRD: &str = "controller.initrd";
    /// A firmware guest's UEFI variable store, and its TPM's state directory.
    pub const GUEST_VARS: &str = "OVMF_VARS.fd";
    pub const GUEST_TPM: &str = "tpm";
    /// What every base of a firmware-booted guest has (it boots no kernel of the base).
    pub const FIRMWARE_GUEST: &[&str] = &[
        GUEST_DISK,
        CONTROLLER_DISK,
        GUEST_RAM,
        CONTROLLER_RAM,
        GUEST_STATE,
        CONTROLLER_STATE,
        KERNEL,
        CONTROLLER_INITRD,
    ];
    /// What every base of the Debian guest has.
    pub const ALL: &[&str] = &[
        GUEST_DISK,
        CONTROLLER_DISK,
        GUEST_RAM,
        CONTROLLER_RAM,
        GUEST_STATE,
        CONTROLLER_STATE,
        KERNEL,
        GUEST_INITRD,
        CONTROLLER_INITRD,
    ];
}

impl Manifest {
    /// The files this base must have: the pair's, its guest's UEFI variables if it has
    /// UEFI, and its TPM state (as many files as swtpm left, under [`files::GUEST_TPM`]).
    pub fn required_files(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.pair.guest {
            None => files::ALL.iter().map(|s| s.to_string()).collect(),
            Some(g) => {
                let mut n: Vec<String> = files::FIRMWARE_GUEST
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                if g.uefi.is_some() {
                    n.push(files::GUEST_VARS.into());
                }
                n
            }
        };
        if self.pair.guest.as_ref().is_some_and(|g| g.tpm) {
            let prefix = format!("{}/", files::GUEST_TPM);
            names.extend(
                self.files
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned(),
            );
        }
        names
    }
}
