//! Image references as docker writes them: `[REGISTRY[:PORT]/]REPOSITORY[:TAG][@DIGEST]`.
//!
//! The grammar is distribution's `reference` package: the first `/`-separated component
//! is a registry when it has a `.` or a `:` or is `localhost`; otherwise the reference
//! names Docker Hub (`docker.io`, official images under `library/`). Neither tag nor
//! digest means the tag `latest`, as in docker.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Docker Hub's name in references and credentials, and the host its API answers on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

/// A parsed, validated reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// `host[:port]` as written (`docker.io` when the reference names none).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host the registry's API answers on: `registry-1.docker.io` for Docker Hub.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// `team/debian-build` (`library/NAME` for an official Docker Hub name).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// `sha256:<64 hex>`, when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What to put after `/manifests/`: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository at another tag or digest (e.g. `…@<pushed digest>`).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        parse(s).map_err(|reason| Error::Reference {
            reference: s.to_string(),
            reason,
        })
    }
}

fn parse(s: &str) -> Result<Reference, String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace".into());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
        None => (s, None),
    };
    // A tag follows the last ':' unless that ':' is in the registry part (a port).
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&rest[..colon], Some(parse_tag(&rest[colon + 1..])?))
        }
        _ => (rest, None),
    };
    if name.is_empty() {
        return Err("the repository name is missing".into());
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (parse_registry(first)?, path.to_string())
        }
        _ => {
            let path = if name.contains('/') {
                name.to_string()
            } else {
                format!("library/{name}")
            };
            (DOCKER_HUB.to_string(), path)
        }
    };
    parse_repository(&repository)?;
    if registry.len() + 1 + repository.len() > MAX_NAME {
        return Err(format!("the name is longer than {MAX_NAME} characters"));
    }
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_string()),
        _ => tag,
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

fn parse_registry(host: &str) -> Result<String, String> {
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("registry {host:?} opens '[' without closing it"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "registry {host:?} is not an IPv6 address in brackets"
            ));
        }
        match after {
            "" => (host, None),
            p if p.starts_with(':') => (&host[..host.len() - p.len()], Some(&p[1..])),
            _ => return Err(format!("registry {host:?} has text after ']'")),
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || port.parse::<u16>().is_err() {
            return Err(format!("registry port {port:?} is not a number 0-65535"));
        }
    }
    if !name.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !name.split('.').all(label_ok) {
            return Err(format!(
                "registry host {name:?} is not a host name (letters, digits, '-', '.')"
            ));
        }
    }
    Ok(host.to_string())
}

/// distribution's path component: `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`.
fn parse_repository(path: &str) -> Result<(), String> {
    for component in path.split('/') {
        if component.is_empty() {
            return Err(format!("repository {path:?} has an empty path component"));
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let mut i = 0;
        let mut ok = alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
        while ok && i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            // A separator: '.', '_', '__' or a run of '-', always between alphanumerics.
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        }
        if !ok {
            return Err(format!(
                "repository component {component:?} must be lowercase letters and digits, \
                 separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn parse_tag(tag: &str) -> Result<String, String> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(tag.to_string())
    } else {
        Err(format!(
            "tag {tag:?} must be 1-{MAX_TAG} letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ))
    }
}

/// Only sha256 is accepted: it is the one every registry computes.
pub(crate) fn parse_digest(digest: &str) -> Result<String, String> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(digest.to_string())
        }
        Some(("sha256", _)) => Err(format!(
            "digest {digest:?} must be sha256: and 64 lowercase hex digits"
        )),
        _ => Err(format!(
            "digest {digest:?} is not sha256:<64 hex digits> (the only algorithm supported)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn registry_with_port_and_tag() {
        let x = r("registry.example:5000/team/debian-build:v3");
        assert_eq!(x.registry(), "registry.example:5000");
        assert_eq!(x.api_host(), "registry.example:5000");
        assert_eq!(x.repository(), "team/debian-build");
        assert_eq!(x.tag(), Some("v3"));
        assert_eq!(x.digest(), None);
        assert_eq!(x.manifest_ref(), "v3");
        assert_eq!(x.to_string(), "registry.example:5000/team/debian-build:v3");
    }

    #[test]
    fn digest_pins_the_manifest() {
        let x = r(&format!("registry.example:5000/team/debian-build@{D}"));
        assert_eq!(x.tag(), None);
        assert_eq!(x.digest(), Some(D));
        assert_eq!(x.manifest_ref(), D);
        let y = r(&format!("localhost/a:v1@{D}"));
        assert_eq!(y.tag(), Some("v1"));
        assert_eq!(y.manifest_ref(), D);
    }

    #[test]
    fn defaults_as_docker() {
        let x = r("debian");
        assert_eq!(x.registry(), "docker.io");
        assert_eq!(x.api_host(), "registry-1.docker.io");
        assert_eq!(x.repository(), "library/debian");
        assert_eq!(x.tag(), Some("latest"));
        assert_eq!(r("team/app:1").repository(), "team/app");
        assert_eq!(r("localhost:5000/app").registry(), "localhost:5000");
        assert_eq!(r("localhost/app").registry(), "localhost");
        assert_eq!(r("127.0.0.1:5000/a/b/c").repository(), "a/b/c");
        assert_eq!(r("[::1]:5000/a").registry(), "[::1]:5000");
        assert_eq!(
            r("r.example/a__b.c-d---e/f_g").repository(),
            "a__b.c-d---e/f_g"
        );
    }

    #[test]
    fn bad_references_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("registry.example:5000/Team/x:v1", "lowercase"),
            ("registry.example:5000/team/x:", "tag"),
            ("registry.example:5000/team/x:-v", "tag"),
            ("registry.example:5000/team//x", "empty path"),
            ("registry.example:5000/", "empty path"),
            ("registry.example:99999/x", "port"),
            ("registry.example:5000/x@sha256:abc", "64"),
            ("registry.example:5000/x@md5:abc", "sha256"),
            ("registry.example:5000/x y", "whitespace"),
            ("registry.example:5000/a..b", "lowercase"),
            ("registry.example:5000/a_", "lowercase"),
            ("reg_istry.example/a", "host"),
            ("[::1/a", "'['"),
        ] {
            let err = bad.parse::<Reference>().unwrap_err();
            assert!(err.is_usage(), "{bad}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(msg.contains("REGISTRY/REPOSITORY:TAG"), "{msg}");
        }
    }
}
