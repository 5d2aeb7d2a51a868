//! HTTPS: a registry (distribution 2.8) serving TLS on 127.0.0.1 with a certificate from a
//! CA made for the test. Trusted through `ca_certificates`, it is spoken to over HTTPS;
//! untrusted, the pull fails on the certificate rather than falling back to plain HTTP.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use oci::{PullOptions, PushOptions, Reference};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn https_with_the_callers_ca_and_refused_without_it() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        d,
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext",
            "-out",
            "tls.pem",
        ],
    );
    let read = |n: &str| std::fs::read(d.join(n)).unwrap();
    let (cert, key) = (read("tls.pem"), read("tls.key"));
    let reg = Registry::start_with(
        "  tls:\n    certificate: {dir}/tls.pem\n    key: {dir}/tls.key\n",
        &[("tls.pem", &cert), ("tls.key", &key)],
    );

    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 30);
    let r: Reference = format!("{}/tls/base:v1", reg.addr).parse().unwrap();
    let trusted = oci::Client::new(oci::Options {
        ca_certificates: vec![d.join("ca.pem")],
        lookup_credentials: false,
        ..oci::Options::default()
    })
    .unwrap();
    let opts = PushOptions {
        part_size: 4 << 20,
        chunk_size: 1 << 20,
        ..PushOptions::new(tmp.path().join("state"))
    };
    let pushed = trusted
        .push(&r, &base_of(&src), &opts, &oci::NoProgress)
        .await
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));
    let dest = tmp.path().join("dest");
    let pulled = trusted
        .pull(
            &r,
            &PullOptions::new(tmp.path().join("staging"), dest.clone()),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(pulled.report.digest, pushed.digest);
    assert_same_files(&src, &dest);

    let err = client().resolve(&r).await.unwrap_err();
    assert!(!err.is_usage(), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("https://") && msg.contains("UnknownIssuer"),
        "{msg}"
    );

    let err = oci::Client::new(oci::Options {
        ca_certificates: vec![d.join("ext")],
        ..oci::Options::default()
    })
    .err()
    .unwrap();
    assert!(
        err.is_usage() && err.to_string().contains("no certificate"),
        "{err}"
    );
}
