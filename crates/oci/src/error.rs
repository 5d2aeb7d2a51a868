use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and what to do about it. [`Error::is_usage`] tells a mistake of the
/// caller's (a bad reference, a missing tag, wrong credentials, a bad option: exit 2) from
/// a failure of the network, the registry or the disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "bad reference {reference:?}: {reason}; write it as REGISTRY/REPOSITORY:TAG or \
         REGISTRY/REPOSITORY@sha256:DIGEST, e.g. registry.example:5000/team/debian-build:v3"
    )]
    Reference { reference: String, reason: String },

    /// An option or input that cannot work (e.g. pushing by digest, a file name with '/').
    #[error("{0}")]
    Usage(String),

    #[error("{path}: {reason}; fix or remove the file, or set GUESTBOX_REGISTRY_USER and GUESTBOX_REGISTRY_PASSWORD")]
    AuthFile { path: PathBuf, reason: String },

    /// 401/403 after presenting whatever credentials there were.
    #[error("{registry} refused access ({status}) to {what}{detail}: {hint}")]
    Denied {
        registry: String,
        what: String,
        status: u16,
        detail: String,
        hint: String,
    },

    #[error(
        "{reference}: manifest unknown: the registry has no such tag or digest in {repository}; \
         check the name (tags are case-sensitive) or push it first"
    )]
    ManifestUnknown {
        reference: String,
        repository: String,
    },

    #[error(
        "{reference} is not a guestbox base (it is {found}); pull only what `guestbox push` made"
    )]
    NotABase { reference: String, found: String },

    /// HTTPS failed for a registry that may not be spoken to over plain HTTP.
    #[error(
        "cannot reach https://{registry}/v2/: {}; check the address and that the \
         registry is up. If it serves plain HTTP only, list {registry} in insecure_registries \
         (only localhost, 127.0.0.1 and [::1] get plain HTTP without that)",
        chain(source)
    )]
    Unreachable {
        registry: String,
        #[source]
        source: reqwest::Error,
    },

    #[error(
        "cannot reach {url}: {}; check the registry's address and that it is up",
        chain(source)
    )]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{method} {url}: the registry answered {status}{detail}")]
    Registry {
        method: String,
        url: String,
        status: u16,
        detail: String,
    },

    #[error("token server {realm}: {detail}")]
    Token { realm: String, detail: String },

    #[error(
        "blob {digest} ({what}) arrived with digest {actual}: the registry's copy is damaged \
         or was changed; push the base again"
    )]
    Digest {
        digest: String,
        actual: String,
        what: String,
    },

    #[error("blob {digest} ({what}) is {actual} bytes, the manifest says {expected}; push the base again")]
    Size {
        digest: String,
        what: String,
        expected: u64,
        actual: u64,
    },

    /// The registry's manifest does not describe a well-formed base.
    #[error("{reference}: bad manifest: {reason}; push the base again")]
    Manifest { reference: String, reason: String },

    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("zstd: {what}: {source}")]
    Zstd {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("TLS setup: {source}")]
    Tls {
        #[source]
        source: rustls::Error,
    },

    #[error("a worker task failed: {source}")]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
}

/// An error and its causes, `a: b: c`: reqwest's own message names only the URL, the
/// cause (refused, TLS, timeout) is further down, and the CLI prints `Display` alone.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

impl Error {
    /// True for the caller's mistakes: the CLI exits 2 for these, 1 for the rest.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Reference { .. }
                | Error::Usage(_)
                | Error::AuthFile { .. }
                | Error::Denied { .. }
                | Error::ManifestUnknown { .. }
                | Error::NotABase { .. }
        )
    }

    /// Worth another try in the same run (a cut connection, a 5xx), unlike a refusal.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Http { .. } | Error::Unreachable { .. } => true,
            Error::Registry { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

pub(crate) trait IoContext<T> {
    fn at(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            what,
            path: path.into(),
            source,
        })
    }
}
