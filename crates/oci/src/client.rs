//! The HTTP side: one reqwest client, and per operation a [`Session`] with one repository
//! of one registry that picks HTTPS or (where allowed) plain HTTP and answers the
//! registry's auth challenges (basic, or bearer tokens from the realm it names).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::auth::{self, Challenge, Credentials};
use crate::{Error, Reference, Result};

/// How to reach registries. `Default` is right for most callers.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host[:port]`s that may be spoken to over plain HTTP (besides loopback: localhost,
    /// 127.0.0.1 and [::1] always may). HTTPS is still tried first.
    pub insecure_registries: Vec<String>,
    /// PEM files of CA certificates trusted besides the system's (a registry with its own
    /// CA, as docker's `/etc/docker/certs.d/HOST/ca.crt`).
    pub ca_certificates: Vec<PathBuf>,
    /// Credentials for every registry; None: look them up ([`auth::lookup`]) if
    /// `lookup_credentials`, else go anonymous.
    pub credentials: Option<Credentials>,
    pub lookup_credentials: bool,
    /// Blobs moved at once.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// Longest silence on a connection before it counts as cut.
    pub read_timeout: Duration,
    /// Attempts per blob (each resumes where the previous one stopped) before giving up.
    pub attempts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure_registries: Vec::new(),
            ca_certificates: Vec::new(),
            credentials: None,
            lookup_credentials: true,
            concurrency: 3,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(120),
            attempts: 3,
        }
    }
}

/// A registry client. Cheap to clone; reuses connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) options: Arc<Options>,
}

impl Client {
    pub fn new(options: Options) -> Result<Client> {
        if options.concurrency == 0 || options.attempts == 0 {
            return Err(Error::Usage(
                "concurrency and attempts must be at least 1".into(),
            ));
        }
        // ring, not reqwest's default aws-lc-rs: the same TLS for a fraction of the build
        // time (see Cargo.toml). Roots and revocation from the platform verifier (the
        // system's CA store), so a self-hosted registry's company CA just works.
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut extra = Vec::new();
        for path in &options.ca_certificates {
            let bad = |e: &dyn std::fmt::Display| {
                Error::Usage(format!(
                    "cannot read CA certificates from {}: {e}; give PEM files",
                    path.display()
                ))
            };
            let before = extra.len();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                extra.push(cert.map_err(|e| bad(&e))?);
            }
            if extra.len() == before {
                return Err(bad(&"no certificate in it"));
            }
        }
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
                .map_err(|source| Error::Tls { source })?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| Error::Tls { source })?
            .dangerous() // not dangerous: the platform verifier, plus the caller's CAs
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(concat!("guestbox-oci/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|source| Error::Http {
                url: "(client setup)".into(),
                source,
            })?;
        Ok(Client {
            http,
            options: Arc::new(options),
        })
    }

    fn plain_http_allowed(&self, registry: &str) -> bool {
        let host = host_of(registry);
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
            || self
                .options
                .insecure_registries
                .iter()
                .any(|r| r == registry || r == host)
    }

    /// Opens a session on `reference`'s repository for `actions` (`pull` or `pull,push`),
    /// with read access to `also_pull` (mount sources) on the same registry.
    pub(crate) async fn session(
        &self,
        reference: &Reference,
        actions: &str,
        also_pull: &[String],
    ) -> Result<Session> {
        let credentials = match &self.options.credentials {
            Some(c) => Some(c.clone()),
            None if self.options.lookup_credentials => auth::lookup(reference.registry())?,
            None => None,
        };
        let mut scopes = vec![format!("repository:{}:{actions}", reference.repository())];
        scopes.extend(
            also_pull
                .iter()
                .filter(|r| *r != reference.repository())
                .map(|r| format!("repository:{r}:pull")),
        );
        let host = reference.api_host();
        let https = format!("https://{host}");
        let (base, ping) = match self.ping(&https).await {
            Ok(r) => (https, r),
            // Loopback or listed: plain HTTP after HTTPS, as docker does.
            Err(tls) if self.plain_http_allowed(reference.registry()) => {
                let http = format!("http://{host}");
                match self.ping(&http).await {
                    // A registry answers /v2/ with 200 or 401; anything else (e.g. a TLS
                    // server's 400 to plain HTTP) means HTTPS was right and failed.
                    Ok(r) if matches!(r.status().as_u16(), 200 | 401) => (http, r),
                    Ok(_) => {
                        return Err(Error::Http {
                            url: format!("{https}/v2/"),
                            source: tls,
                        })
                    }
                    Err(source) => {
                        return Err(Error::Http {
                            url: format!("{http}/v2/ (and over HTTPS)"),
                            source,
                        })
                    }
                }
            }
            Err(source) => {
                return Err(Error::Unreachable {
                    registry: host.to_string(),
                    source,
                })
            }
        };
        let session = Session {
            http: self.http.clone(),
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            base,
            scopes,
            credentials,
            auth: Mutex::new(AuthState::Anonymous),
        };
        if ping.status() == StatusCode::UNAUTHORIZED {
            let challenges = challenges_of(ping.headers());
            session.answer(&challenges, None).await?;
        }
        Ok(session)
    }

    async fn ping(&self, base: &str) -> std::result::Result<Response, reqwest::Error> {
        self.http.get(format!("{base}/v2/")).send().await
    }
}

fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        registry.split_inclusive(']').next().unwrap_or(registry)
    } else {
        registry.split(':').next().unwrap_or(registry)
    }
}

fn challenges_of(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(auth::parse_challenges)
        .collect()
}

#[derive(Debug, Clone)]
enum AuthState {
    Anonymous,
    Basic,
    Bearer(String),
}

/// One repository of one registry, authenticated as far as the registry asked.
pub(crate) struct Session {
    http: reqwest::Client,
    pub registry: String,
    pub repository: String,
    /// `https://host:port` or `http://host:port`.
    pub base: String,
    scopes: Vec<String>,
    credentials: Option<Credentials>,
    auth: Mutex<AuthState>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct RegistryErrors {
    #[serde(default)]
    errors: Vec<RegistryError>,
}

#[derive(Deserialize)]
struct RegistryError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl Session {
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// An absolute URL for a `Location` header, which may be relative.
    pub fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        }
    }

    /// Sends a request, answering one 401 with the credentials the challenge asks for.
    /// The body is `Bytes` so the request can be sent again.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<bytes::Bytes>,
    ) -> Result<Response> {
        let mut answered = false;
        loop {
            let state = self.auth.lock().await.clone();
            let mut req = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            match (&state, &self.credentials) {
                (AuthState::Basic, Some(c)) => req = req.header(AUTHORIZATION, c.basic_header()),
                (AuthState::Bearer(t), _) => req = req.bearer_auth(t),
                _ => {}
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let resp = req.send().await.map_err(|source| Error::Http {
                url: url.to_string(),
                source,
            })?;
            if resp.status() == StatusCode::UNAUTHORIZED && !answered {
                answered = true;
                let challenges = challenges_of(resp.headers());
                if self.answer(&challenges, Some(&state)).await? {
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// Sets up credentials for `challenges`. False: nothing new to try.
    async fn answer(&self, challenges: &[Challenge], tried: Option<&AuthState>) -> Result<bool> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self.fetch_token(bearer).await?;
            *self.auth.lock().await = AuthState::Bearer(token);
            return Ok(true);
        }
        if challenges.iter().any(|c| c.scheme == "basic") && self.credentials.is_some() {
            if matches!(tried, Some(AuthState::Basic)) {
                return Ok(false);
            }
            *self.auth.lock().await = AuthState::Basic;
            return Ok(true);
        }
        Ok(false)
    }

    async fn fetch_token(&self, challenge: &Challenge) -> Result<String> {
        let realm = challenge.param("realm").unwrap_or_default().to_string();
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(Error::Token {
                realm,
                detail: "the registry's bearer challenge names no http(s) realm".into(),
            });
        }
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = challenge.param("service") {
            query.push(("service", service));
        }
        let mut scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        if let Some(asked) = challenge.param("scope") {
            for s in asked.split(' ') {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
        query.extend(scopes.iter().map(|s| ("scope", *s)));
        let mut url = reqwest::Url::parse(&realm).map_err(|e| Error::Token {
            realm: realm.clone(),
            detail: format!("the realm is not a URL: {e}"),
        })?;
        url.query_pairs_mut().extend_pairs(&query);
        let mut req = self.http.get(url);
        if let Some(c) = &self.credentials {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().await.map_err(|source| Error::Http {
            url: realm.clone(),
            source,
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.denied(status.as_u16(), "a token".into(), String::new()));
        }
        let body = resp.bytes().await.map_err(|source| Error::Http {
            url: realm.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(Error::Token {
                realm,
                detail: format!("answered {status}: {}", String::from_utf8_lossy(&body)),
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| Error::Token {
            realm: realm.clone(),
            detail: format!("answered no JSON token: {e}"),
        })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Token {
                realm,
                detail: "answered JSON without token or access_token".into(),
            })
    }

    fn denied(&self, status: u16, what: String, detail: String) -> Error {
        let hint = match (&self.credentials, status) {
            (None, _) => format!(
                "it needs credentials: set {} and {} or log in with `docker login {}`",
                auth::ENV_USER,
                auth::ENV_PASSWORD,
                self.registry
            ),
            (Some(c), 401) => format!(
                "check the password of user {:?} for {}",
                c.username, self.registry
            ),
            (Some(c), _) => format!(
                "user {:?} may not do this on {}; ask its admin for access",
                c.username, self.repository
            ),
        };
        Error::Denied {
            registry: self.registry.clone(),
            what,
            status,
            detail,
            hint,
        }
    }

    /// Turns a failed answer into the right error: 401/403 are refusals (usage), a
    /// manifest 404 is an unknown reference (usage), the rest the registry's failure.
    pub async fn fail(&self, method: &Method, url: &str, resp: Response) -> Error {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let errors: Vec<RegistryError> = serde_json::from_slice::<RegistryErrors>(&body)
            .map(|e| e.errors)
            .unwrap_or_default();
        let detail = if errors.is_empty() {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if text.is_empty() || text.len() > 300 {
                String::new()
            } else {
                format!(": {text}")
            }
        } else {
            let list: Vec<String> = errors
                .iter()
                .map(|e| format!("{} {}", e.code, e.message))
                .collect();
            format!(": {}", list.join("; "))
        };
        let what = format!("{method} {}", url.split('?').next().unwrap_or(url));
        match status.as_u16() {
            401 | 403 => self.denied(status.as_u16(), what, detail),
            404 if errors.iter().any(|e| e.code == "MANIFEST_UNKNOWN")
                || (url.contains("/manifests/") && errors.is_empty()) =>
            {
                Error::ManifestUnknown {
                    reference: url
                        .rsplit("/manifests/")
                        .next()
                        .map(|r| format!("{}/{}:{r}", self.registry, self.repository))
                        .unwrap_or_default(),
                    repository: self.repository.clone(),
                }
            }
            404 if errors.iter().any(|e| e.code == "NAME_UNKNOWN") => Error::ManifestUnknown {
                reference: format!("{}/{}", self.registry, self.repository),
                repository: self.repository.clone(),
            },
            _ => Error::Registry {
                method: method.to_string(),
                url: url.split('?').next().unwrap_or(url).to_string(),
                status: status.as_u16(),
                detail,
            },
        }
    }
}

pub(crate) fn header(name: &'static str, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback_or_when_listed() {
        let c = Client::new(Options {
            insecure_registries: vec!["lan.example:5000".into(), "other.example".into()],
            ..Options::default()
        })
        .unwrap();
        for ok in [
            "localhost:5000",
            "127.0.0.1",
            "[::1]:5000",
            "lan.example:5000",
            "other.example:1",
        ] {
            assert!(c.plain_http_allowed(ok), "{ok}");
        }
        for no in [
            "registry.example:5000",
            "lan.example:5001",
            "127.0.0.2",
            "localhost.example",
        ] {
            assert!(!c.plain_http_allowed(no), "{no}");
        }
    }
}
