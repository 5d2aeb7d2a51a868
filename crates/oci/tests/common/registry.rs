//! A real registry (Debian's `docker-registry`, CNCF distribution 2.8) on 127.0.0.1.
//! Self-contained (std, tempfile and serde_json only) so other crates' tests can include it by path:
//! guestbox's CLI tests push and pull through it too.
//!
//! Each registry runs under a `sh` that waits on a pipe from this process: when the pipe
//! closes (the `Registry` is dropped, or the test binary exits however it exits) the
//! shell kills the registry and removes its directory. So registries shared through
//! statics, which are never dropped, still leave nothing behind.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret-pw";

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Registry {
    /// Starts a registry whose `auth:` section is `auth` (YAML, indented by two spaces;
    /// empty for none; `{dir}` stands for the registry's directory), with `files` (name,
    /// bytes) written into its directory first.
    pub fn start(auth: &str, files: &[(&str, &[u8])]) -> Registry {
        Registry::start_config("", auth, files)
    }

    /// Like `start`, with `http` more lines of the `http:` section (e.g. `tls:`).
    pub fn start_with(http: &str, files: &[(&str, &[u8])]) -> Registry {
        Registry::start_config(http, "", files)
    }

    fn start_config(http: &str, auth: &str, files: &[(&str, &[u8])]) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("oci-registry-")
            .tempdir()
            .unwrap()
            .keep();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        for _ in 0..5 {
            // A free port, released just before the registry takes it: another process
            // may win the race, so a registry that does not come up is tried again.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{http}{auth}",
                http = http.replace("{dir}", &dir.display().to_string()),
                storage = dir.join("storage").display(),
                auth = if auth.is_empty() {
                    String::new()
                } else {
                    format!("auth:\n{}", auth.replace("{dir}", &dir.display().to_string()))
                }
            );
            let config_path = dir.join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(
                    r#"docker-registry serve "$1" >>"$2/log" 2>&1 & pid=$!
                       read _ignored
                       kill $pid 2>/dev/null; wait $pid; rm -rf "$2""#,
                )
                .arg("sh")
                .arg(&config_path)
                .arg(&dir)
                .stdin(Stdio::piped())
                // The shell's "Terminated" when it stops the registry is no news.
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "docker-registry (Debian package docker-registry; scripts/setup --with-tests)",
                );
            let stdin = child.stdin.take();
            let mut registry = Registry {
                addr,
                dir: dir.clone(),
                child,
                stdin,
            };
            if registry.wait_ready() {
                return registry;
            }
            // Not up: stop this one without removing the directory, and try another port.
            let _ = registry.child.kill();
            let _ = registry.child.wait();
            registry.stdin = None;
            std::mem::forget(registry);
        }
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        panic!("docker-registry did not come up; its log:\n{log}");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let mut head = [0u8; 12];
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_exact(&mut head).is_ok()
                    && head.starts_with(b"HTTP/1.")
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The registry's own copy of a blob.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Closing the pipe makes the shell stop the registry and clean up; wait for it.
        self.stdin = None;
        let _ = self.child.wait();
    }
}

/// One anonymous registry for the whole test binary.
pub fn anonymous() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry::start("", &[]))
}

/// One registry with basic auth (htpasswd, bcrypt) for the whole test binary.
pub fn with_basic_auth() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let out = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .expect("htpasswd (Debian package apache2-utils; scripts/setup --with-tests)");
        assert!(out.status.success());
        let auth = "  htpasswd:\n    realm: test-realm\n    path: {dir}/htpasswd\n";
        Registry::start(auth, &[("htpasswd", &out.stdout)])
    })
}

/// The image manifest `repo:tag` as the registry serves it (plain HTTP/1.0, no client).
pub fn raw_manifest(registry: &Registry, repo: &str, tag: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(&registry.addr).unwrap();
    // oci::format::MANIFEST_MEDIA_TYPE, written out: this file depends on no crate of ours.
    const MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
    write!(
        s,
        "GET /v2/{repo}/manifests/{tag} HTTP/1.0\r\nHost: {}\r\nAccept: {MEDIA_TYPE}\r\n\r\n",
        registry.addr,
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8(resp).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    serde_json::from_str(body).unwrap()
}
