//! Credentials (explicit, environment, docker/podman auth files) and the registry's
//! `WWW-Authenticate` challenges.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::{Error, Result};

pub const ENV_USER: &str = "GUESTBOX_REGISTRY_USER";
pub const ENV_PASSWORD: &str = "GUESTBOX_REGISTRY_PASSWORD";

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ username: {:?}, .. }}", self.username)
    }
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Where credentials for `registry` (`host[:port]` as in the reference) come from, first
/// match wins: `GUESTBOX_REGISTRY_USER`/`GUESTBOX_REGISTRY_PASSWORD`, then
/// `$REGISTRY_AUTH_FILE` if set, else `$DOCKER_CONFIG/config.json` or
/// `~/.docker/config.json` (`auths.<registry>.auth`, base64 of `user:password`).
/// None: go anonymous.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    let user = std::env::var(ENV_USER).ok().filter(|u| !u.is_empty());
    let password = std::env::var(ENV_PASSWORD).ok();
    match (user, password) {
        (Some(u), Some(p)) => return Ok(Some(Credentials::new(u, p))),
        (Some(_), None) => {
            return Err(Error::Usage(format!(
                "{ENV_USER} is set but {ENV_PASSWORD} is not; set both or neither"
            )))
        }
        _ => {}
    }
    if let Some(path) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return from_auth_file(Path::new(&path), registry);
    }
    let config = match std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("config.json"),
        None => match dirs::home_dir() {
            Some(home) => home.join(".docker").join("config.json"),
            None => return Ok(None),
        },
    };
    if config.exists() {
        from_auth_file(&config, registry)
    } else {
        Ok(None)
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Credentials for `registry` in a docker `config.json` or containers `auth.json`.
pub fn from_auth_file(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let bad = |reason: String| Error::AuthFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let file: AuthFile =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    // Keys are `host[:port]`, sometimes written as a URL (docker's old Hub key).
    let key_host = |key: &str| -> String {
        let k = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next().unwrap_or(k).to_string()
    };
    let wanted: Vec<&str> = if registry == crate::reference::DOCKER_HUB {
        vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        vec![registry]
    };
    let Some((key, entry)) = file
        .auths
        .iter()
        .find(|(k, _)| wanted.contains(&key_host(k).as_str()))
    else {
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("auths.{key}.auth is not base64: {e}")))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| bad(format!("auths.{key}.auth is not UTF-8 user:password")))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| bad(format!("auths.{key}.auth is not base64 of user:password")))?;
        return Ok(Some(Credentials::new(u, p)));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials::new(u.clone(), p.clone()))),
        _ => Ok(None),
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lowercase: `basic` or `bearer`.
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses `Bearer realm="https://auth.example/token",service="registry",scope="a:b:pull,push"`
/// (RFC 7235: a scheme, then comma-separated `key=value` or `key="quoted"` pairs). Several
/// challenges in one header are split where a new scheme starts.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        // A token followed by '=' is a parameter of the current challenge, else a scheme.
        let token_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..token_end];
        let after = rest[token_end..].trim_start();
        if after.starts_with('=') && !out.is_empty() && !token.is_empty() {
            let mut value = String::new();
            let mut v = after[1..].trim_start();
            if let Some(q) = v.strip_prefix('"') {
                let mut chars = q.char_indices();
                let mut end = q.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                v = &q[end.min(q.len())..];
            } else {
                let end = v.find(',').unwrap_or(v.len());
                value.push_str(v[..end].trim());
                v = &v[end..];
            }
            if let Some(last) = out.last_mut() {
                last.params.insert(token.to_ascii_lowercase(), value);
            }
            rest = v.trim_start().trim_start_matches(',').trim_start();
        } else if token.is_empty() {
            rest = rest[1..].trim_start();
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
            rest = after.trim_start_matches(',').trim_start();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("service"), Some("registry.example"));
        assert_eq!(c[0].param("scope"), Some("repository:team/app:pull,push"));
    }

    #[test]
    fn basic_and_several_challenges() {
        let c = parse_challenges(r#"Basic realm="basic-realm""#);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("basic-realm"));
        let c = parse_challenges(
            r#"Basic realm="a b", Bearer realm="https://t/x\"y", error=invalid_token"#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://t/x\"y"));
        assert_eq!(c[1].param("error"), Some("invalid_token"));
    }

    /// The only test that touches these variables (the process's environment is shared).
    #[test]
    fn lookup_order_env_then_auth_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("file-user:file-pw");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"r.example:5000":{{"auth":"{b64}"}}}}}}"#),
        )
        .unwrap();
        std::env::remove_var(ENV_USER);
        std::env::remove_var(ENV_PASSWORD);
        std::env::set_var("REGISTRY_AUTH_FILE", &path);
        assert_eq!(
            lookup("r.example:5000").unwrap(),
            Some(Credentials::new("file-user", "file-pw"))
        );
        assert_eq!(lookup("other.example").unwrap(), None);
        std::env::set_var(ENV_USER, "env-user");
        let err = lookup("r.example:5000").unwrap_err();
        assert!(
            err.is_usage() && err.to_string().contains(ENV_PASSWORD),
            "{err}"
        );
        std::env::set_var(ENV_PASSWORD, "env-pw");
        assert_eq!(
            lookup("r.example:5000").unwrap(),
            Some(Credentials::new("env-user", "env-pw"))
        );
        std::env::remove_var(ENV_USER);
        std::env::remove_var(ENV_PASSWORD);
        std::env::remove_var("REGISTRY_AUTH_FILE");
    }

    #[test]
    fn auth_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"registry.example:5000":{{"auth":"{b64}"}},
                   "https://index.docker.io/v1/":{{"auth":"{b64}"}},
                   "other.example":{{"username":"bob","password":"x"}}}}}}"#
            ),
        )
        .unwrap();
        let c = from_auth_file(&path, "registry.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!(c, Credentials::new("alice", "pa:ss"));
        assert!(from_auth_file(&path, "docker.io").unwrap().is_some());
        assert_eq!(
            from_auth_file(&path, "other.example").unwrap().unwrap(),
            Credentials::new("bob", "x")
        );
        assert!(from_auth_file(&path, "registry.example").unwrap().is_none());
        std::fs::write(&path, r#"{"auths":{"r.example":{"auth":"!!"}}}"#).unwrap();
        let err = from_auth_file(&path, "r.example").unwrap_err();
        assert!(
            err.is_usage() && err.to_string().contains("base64"),
            "{err}"
        );
        assert!(format!("{c:?}").contains("alice") && !format!("{c:?}").contains("pa:ss"));
    }
}
