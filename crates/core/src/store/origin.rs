//! Where a base came from. The manifest is sealed and must stay byte-identical wherever the
//! base travels, so a pulled base records its origin beside it, in `origin.json` inside its
//! directory: written before the base is renamed into the store (so it is there from the
//! first moment the base is), read-only like the rest, removed with the base by `rm`.
//! A base without one was bootstrapped here.

use std::fs;

use serde::{Deserialize, Serialize};

use super::Base;

pub const ORIGIN: &str = "origin.json";

/// How a base got into this store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// `guestbox bootstrap` made it here (no origin file).
    Bootstrapped,
    /// `guestbox pull` brought it.
    Pulled {
        /// The reference as given (`registry.example:5000/team/debian-build:v3`).
        reference: String,
        /// Digest of the image manifest that was pulled (`sha256:…`).
        digest: String,
        /// When (RFC 3339, UTC).
        pulled: String,
    },
    /// The origin file is there but cannot be read: said, not hidden.
    Unknown { problem: String },
}

impl Origin {
    /// A pull of `reference` at `digest`, now.
    pub fn pulled(reference: &str, digest: &str) -> Origin {
        Origin::Pulled {
            reference: reference.to_string(),
            digest: digest.to_string(),
            pulled: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }

    /// `bootstrapped here`, or `pulled from REF@sha256:0123456789ab (date)`; digests cut to
    /// 12 hex digits when `short`.
    pub fn describe(&self, short: bool) -> String {
        match self {
            Origin::Bootstrapped => "bootstrapped here".into(),
            Origin::Pulled {
                reference,
                digest,
                pulled,
            } => {
                let digest = if short {
                    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
                    format!("sha256:{}", &hex[..12.min(hex.len())])
                } else {
                    digest.clone()
                };
                // A reference pinned by digest already names it.
                let name = reference.split('@').next().unwrap_or(reference);
                format!("pulled from {name}@{digest} ({pulled})")
            }
            Origin::Unknown { problem } => format!("unknown ({problem})"),
        }
    }
}

impl Base {
    /// Where this base came from.
    pub fn origin(&self) -> Origin {
        let path = self.dir.join(ORIGIN);
        match fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Origin::Bootstrapped,
            Err(e) => Origin::Unknown {
                problem: format!("cannot read {}: {e}", path.display()),
            },
            Ok(bytes) => match serde_json::from_slice::<Origin>(&bytes) {
                Ok(o @ Origin::Pulled { .. }) => o,
                Ok(_) | Err(_) => Origin::Unknown {
                    problem: format!("{} does not parse", path.display()),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions() {
        let o = Origin::Pulled {
            reference: "r.example:5000/team/base:v3".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            pulled: "2025-01-02T03:04:05Z".into(),
        };
        assert_eq!(
            o.describe(true),
            "pulled from r.example:5000/team/base:v3@sha256:abababababab (2025-01-02T03:04:05Z)"
        );
        assert!(o.describe(false).contains(&"ab".repeat(32)));
        let pinned = Origin::Pulled {
            reference: format!("r.example/b@sha256:{}", "ab".repeat(32)),
            digest: format!("sha256:{}", "ab".repeat(32)),
            pulled: "t".into(),
        };
        assert_eq!(pinned.describe(false).matches("sha256:").count(), 1);
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["kind"], "pulled");
        assert_eq!(Origin::Bootstrapped.describe(true), "bootstrapped here");
    }
}
