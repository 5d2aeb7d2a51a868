//! The bearer-token flow against a real registry (distribution 2.8 with `auth: token`)
//! and a test double of a token server that signs what the registry trusts.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::*;
use oci::{Error, PullOptions, PushOptions, Reference};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICE: &str = "test-registry";
const ISSUER: &str = "fake-token-server";

/// Each token request's scopes, and whether its credentials were right.
type Requests = Arc<Mutex<Vec<(Vec<String>, bool)>>>;

/// Test double of a registry token server (docker's token auth): checks basic credentials
/// and answers `{"token": JWT}` granting every scope asked for, signed ES256 with a key
/// whose self-signed certificate the registry trusts (sent in the JWT's `x5c`).
struct FakeTokenServer {
    realm: String,
    requests: Requests,
    cert_pem: Vec<u8>,
}

impl FakeTokenServer {
    async fn start() -> FakeTokenServer {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=fake-token-server"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .output()
            .expect("openssl");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let der = |args: &[&str], input: &str| {
            let out = Command::new("openssl")
                .args(args)
                .arg("-in")
                .arg(dir.path().join(input))
                .args(["-outform", "DER"])
                .output()
                .unwrap();
            assert!(out.status.success());
            out.stdout
        };
        let key = der(&["pkcs8", "-topk8", "-nocrypt"], "key.pem");
        let cert = der(&["x509"], "cert.pem");
        let cert_pem = std::fs::read(dir.path().join("cert.pem")).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key, &rng).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let requests: Requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            let key = Arc::new(key);
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (key, cert, log) = (key.clone(), cert.clone(), log.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).to_string();
                    let target = text.split(' ').nth(1).unwrap_or("/").to_string();
                    let url = reqwest::Url::parse(&format!("http://x{target}")).unwrap();
                    let scopes: Vec<String> = url
                        .query_pairs()
                        .filter(|(k, _)| k == "scope")
                        .map(|(_, v)| v.to_string())
                        .collect();
                    let expected = format!(
                        "authorization: basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{USER}:{PASSWORD}"))
                    )
                    .to_ascii_lowercase();
                    let good = text
                        .lines()
                        .any(|l| l.trim().to_ascii_lowercase() == expected);
                    log.lock().unwrap().push((scopes.clone(), good));
                    let resp = if good {
                        let body = format!(
                            r#"{{"token":"{}","expires_in":300}}"#,
                            jwt(&key, &cert, &scopes)
                        );
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    };
                    let _ = conn.write_all(resp.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        FakeTokenServer {
            realm,
            requests,
            cert_pem,
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT as distribution's token auth checks it: ES256, `x5c` chain, issuer, audience,
/// times, and `access` for each `repository:NAME:ACTIONS` scope.
fn jwt(key: &EcdsaKeyPair, cert_der: &[u8], scopes: &[String]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut it = s.splitn(3, ':');
            let (kind, name, actions) = (it.next()?, it.next()?, it.next()?);
            Some(serde_json::json!({
                "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()
            }))
        })
        .collect();
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)]
    });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now - 10,
        "jti": format!("{now}-{}", scopes.len()), "access": access
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64url(sig.as_ref()))
}

#[tokio::test]
async fn bearer_tokens_from_the_realm_the_registry_names() {
    let tokens = FakeTokenServer::start().await;
    let auth = format!(
        "  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    \
         rootcertbundle: {{dir}}/token-cert.pem\n",
        tokens.realm
    );
    let reg = Registry::start(&auth, &[("token-cert.pem", &tokens.cert_pem)]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 20);
    let r: Reference = format!("{}/bearer/base:v1", reg.addr).parse().unwrap();
    let client = oci::Client::new(oci::Options {
        credentials: Some(oci::Credentials::new(USER, PASSWORD)),
        ..oci::Options::default()
    })
    .unwrap();
    let opts = PushOptions {
        part_size: 4 << 20,
        chunk_size: 1 << 20,
        ..PushOptions::new(tmp.path().join("state"))
    };
    let pushed = client
        .push(&r, &base_of(&src), &opts, &oci::NoProgress)
        .await
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));
    let dest = tmp.path().join("dest");
    let pulled = client
        .pull(
            &r,
            &PullOptions::new(tmp.path().join("staging"), dest.clone()),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(pulled.report.digest, pushed.digest);
    assert_same_files(&src, &dest);
    {
        let requests = tokens.requests.lock().unwrap();
        assert!(
            requests
                .iter()
                .any(|(s, good)| *good
                    && s.contains(&"repository:bearer/base:pull,push".to_string())),
            "{requests:?}"
        );
        assert!(requests
            .iter()
            .any(|(s, _)| s == &["repository:bearer/base:pull".to_string()]));
    }

    // No token without the right password: a usage error naming the registry.
    let wrong = oci::Client::new(oci::Options {
        credentials: Some(oci::Credentials::new(USER, "wrong")),
        ..oci::Options::default()
    })
    .unwrap();
    let err = wrong.resolve(&r).await.unwrap_err();
    assert!(err.is_usage(), "{err:?}");
    assert!(matches!(err, Error::Denied { status: 401, .. }), "{err:?}");
    // Anonymous: the token server refuses too.
    let anon = client_anonymous();
    let err = anon.resolve(&r).await.unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("GUESTBOX_REGISTRY_USER"),
        "{err}"
    );
}

fn client_anonymous() -> oci::Client {
    common::client()
}
