//! Push and pull against a real registry (distribution 2.8) on 127.0.0.1. Every test uses
//! its own repository, so they run in parallel on the shared registries.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use common::*;
use oci::{Error, PartInfo, Progress, PullOptions, PushOptions, Reference, Skip};

const MIB: u64 = 1 << 20;

fn reference(registry: &Registry, repo: &str) -> Reference {
    format!("{}/{repo}:v1", registry.addr).parse().unwrap()
}

/// Small parts and chunks: many parts and many PATCHes from a few MiB.
fn push_opts(state: &Path) -> PushOptions {
    PushOptions {
        part_size: 2 * MIB,
        chunk_size: 256 * 1024,
        ..PushOptions::new(state.to_path_buf())
    }
}

/// Test double: records what the progress hooks were told.
#[derive(Default)]
struct Recorder {
    parts: AtomicUsize,
    started: AtomicUsize,
    finished: AtomicUsize,
    skipped: Mutex<Vec<Skip>>,
    last_done: AtomicU64,
}

impl Progress for Recorder {
    fn begin(&self, parts: &[PartInfo]) {
        self.parts.store(parts.len(), Ordering::SeqCst);
    }
    fn part_started(&self, _: &PartInfo, _: u64, _: u64) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    fn part_bytes(&self, _: &PartInfo, done: u64, total: u64) {
        assert!(done <= total);
        self.last_done.store(done, Ordering::SeqCst);
    }
    fn part_finished(&self, _: &PartInfo) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
    fn part_skipped(&self, _: &PartInfo, why: &Skip) {
        self.skipped.lock().unwrap().push(why.clone());
    }
}

/// Test double: stops the transfer as a killed client would, by panicking in the progress
/// hook once `at` bytes of a part of more than `at` bytes have moved. On push that is just
/// after the registry acknowledged a chunk, so before the next PATCH: between chunks.
struct CutAfter {
    at: u64,
}

impl Progress for CutAfter {
    fn part_bytes(&self, _: &PartInfo, done: u64, total: u64) {
        if done >= self.at && done < total {
            panic!("test double: the transfer is cut here");
        }
    }
}

#[tokio::test]
async fn push_then_pull_gives_identical_sparse_files() {
    let reg = anonymous();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 1);
    let r = reference(reg, "roundtrip/base");
    let client = client();
    let rec = Recorder::default();
    let pushed = client
        .push(
            &r,
            &base_of(&src),
            &push_opts(&tmp.path().join("state")),
            &rec,
        )
        .await
        .unwrap();
    // 2+8+1+1+1+1 parts (qcow2 3 MiB, ram 16 MiB at 2 MiB a part) and the config.
    assert_eq!(rec.parts.load(Ordering::SeqCst), 14);
    assert_eq!(pushed.blobs, 15);
    assert!(pushed.digest.starts_with("sha256:"));
    // The RAM file's 8 parts: 4 hold random MiBs (1, 2, 9, 15 → parts 0, 1, 4, 7), the
    // other 4 are zero and the same blob, sent once.
    let dups = rec.skipped.lock().unwrap().clone();
    assert_eq!(dups, vec![Skip::Duplicate; 3], "{pushed:?}");
    assert_eq!(pushed.blobs_transferred, 12);
    assert_eq!(pushed.bytes_resumed, 0);
    let size_on_disk: u64 = FILES
        .iter()
        .map(|f| std::fs::metadata(src.join(f)).unwrap().len())
        .sum();
    assert_eq!(pushed.bytes_files, size_on_disk);
    // Zeros cost nothing on the wire: well under the 21 MiB of files.
    assert!(pushed.bytes_transferred < 10 * MIB, "{pushed:?}");

    assert_eq!(client.resolve(&r).await.unwrap(), pushed.digest);
    let staging = tmp.path().join("staging");
    let dest = tmp.path().join("dest");
    let pulled = client
        .pull(
            &r,
            &PullOptions::new(staging.clone(), dest.clone()),
            &Recorder::default(),
        )
        .await
        .unwrap();
    assert_eq!(pulled.report.digest, pushed.digest);
    assert_eq!(
        pulled.config,
        std::fs::read(src.join("manifest.json")).unwrap()
    );
    assert_eq!(
        pulled
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        FILES
    );
    assert_same_files(&src, &dest);
    // Sparse where zero: 4 MiB of data in a 16 MiB file.
    let ram = allocated(&dest.join("guest.ram"));
    assert!(ram <= 5 * MIB, "guest.ram takes {ram} bytes on disk");
    // Staging emptied once the pull succeeded.
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    assert_eq!(pulled.report.bytes_transferred, pushed.bytes_transferred);

    // The artifact as the registry holds it: one manifest of the guestbox type.
    let m = raw_manifest(reg, "roundtrip/base", "v1");
    assert_eq!(m["artifactType"], oci::format::ARTIFACT_TYPE);
    assert_eq!(m["config"]["mediaType"], oci::format::CONFIG_MEDIA_TYPE);
    let ram_part = &m["layers"][4]["annotations"];
    assert_eq!(ram_part["org.opencontainers.image.title"], "guest.ram");
    assert_eq!(ram_part["vnd.guestbox.part.index"], "1");
    assert_eq!(ram_part["vnd.guestbox.part.offset"], (2 * MIB).to_string());
    assert_eq!(ram_part["vnd.guestbox.part.length"], (2 * MIB).to_string());
    assert_eq!(ram_part["vnd.guestbox.file.size"], (16 * MIB).to_string());
}

#[tokio::test]
async fn second_push_uploads_nothing() {
    let reg = anonymous();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 2);
    let r = reference(reg, "again/base");
    let client = client();
    let state = tmp.path().join("state");
    let first = client
        .push(&r, &base_of(&src), &push_opts(&state), &oci::NoProgress)
        .await
        .unwrap();
    assert!(first.bytes_transferred > 0);
    // With the digest cache of the first push, and without it (a fresh state directory).
    for state in [state, tmp.path().join("fresh-state")] {
        let rec = Recorder::default();
        let again = client
            .push(&r, &base_of(&src), &push_opts(&state), &rec)
            .await
            .unwrap();
        assert_eq!(again.digest, first.digest);
        assert_eq!(again.bytes_transferred, 0, "{again:?}");
        assert_eq!(again.blobs_transferred, 0, "{again:?}");
        assert_eq!(again.blobs_skipped, again.blobs, "{again:?}");
        assert_eq!(rec.started.load(Ordering::SeqCst), 0);
        let skipped = rec.skipped.lock().unwrap();
        assert_eq!(skipped.len(), 14);
        assert!(skipped
            .iter()
            .all(|s| matches!(s, Skip::Present | Skip::Duplicate)));
    }
}

#[tokio::test]
async fn push_cut_between_chunks_resumes_its_upload_session() {
    let reg = anonymous();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 3);
    let r = reference(reg, "cut/between-chunks");
    let state = tmp.path().join("state");
    let opts = PushOptions {
        part_size: 4 * MIB,
        ..push_opts(&state)
    };
    let client = client();
    // One blob at a time, so the cut leaves exactly one session half done.
    let serial = oci::Client::new(oci::Options {
        concurrency: 1,
        lookup_credentials: false,
        ..oci::Options::default()
    })
    .unwrap();
    let cut = {
        let (serial, r, base, opts) = (serial, r.clone(), base_of(&src), opts.clone());
        tokio::spawn(async move {
            serial
                .push(&r, &base, &opts, &CutAfter { at: 512 * 1024 })
                .await
        })
        .await
    };
    assert!(cut.unwrap_err().is_panic());
    let sessions = std::fs::read_dir(state.join("uploads")).unwrap().count();
    assert_eq!(sessions, 1, "the cut blob's session is remembered");

    let done = client
        .push(&r, &base_of(&src), &opts, &oci::NoProgress)
        .await
        .unwrap();
    assert_eq!(done.bytes_resumed, 512 * 1024, "{done:?}");
    assert!(done.bytes_transferred < done.bytes_blobs, "{done:?}");
    assert_eq!(std::fs::read_dir(state.join("uploads")).unwrap().count(), 0);

    let dest = tmp.path().join("dest");
    client
        .pull(
            &r,
            &PullOptions::new(tmp.path().join("staging"), dest.clone()),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    assert_same_files(&src, &dest);
}

#[tokio::test]
async fn push_aborted_mid_patch_completes_on_the_next_push() {
    let reg = anonymous();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 4);
    let r = reference(reg, "cut/mid-patch");
    let state = tmp.path().join("state");
    // Large chunks, so the abort lands while one is on the wire.
    let opts = PushOptions {
        part_size: 4 * MIB,
        chunk_size: 2 * MIB,
        ..push_opts(&state)
    };
    let client = client();

    /// Test double: tells the test the first part is done, so it aborts the push while
    /// the next parts' chunks are being sent.
    struct Signal(Mutex<Option<tokio::sync::oneshot::Sender<()>>>);
    impl Progress for Signal {
        fn part_finished(&self, _: &PartInfo) {
            if let Some(tx) = self.0.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = {
        let (client, r, base, opts) = (client.clone(), r.clone(), base_of(&src), opts.clone());
        tokio::spawn(async move {
            client
                .push(&r, &base, &opts, &Signal(Mutex::new(Some(tx))))
                .await
        })
    };
    rx.await.unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    let done = client
        .push(&r, &base_of(&src), &opts, &oci::NoProgress)
        .await
        .unwrap();
    assert!(done.blobs_skipped >= 1, "{done:?}");
    assert!(done.bytes_transferred < done.bytes_blobs, "{done:?}");
    let dest = tmp.path().join("dest");
    client
        .pull(
            &r,
            &PullOptions::new(tmp.path().join("staging"), dest.clone()),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    assert_same_files(&src, &dest);
}

#[tokio::test]
async fn pull_cut_midway_resumes_from_the_staging_dir() {
    let reg = anonymous();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 5);
    let r = reference(reg, "cut/pull");
    let client = client();
    // 8 MiB parts: the RAM file's first part holds 2 random MiBs, so its blob is > 2 MiB.
    let opts = PushOptions {
        part_size: 8 * MIB,
        chunk_size: MIB,
        ..push_opts(&tmp.path().join("state"))
    };
    let pushed = client
        .push(&r, &base_of(&src), &opts, &oci::NoProgress)
        .await
        .unwrap();
    let staging = tmp.path().join("staging");
    let dest = tmp.path().join("dest");
    let serial = oci::Client::new(oci::Options {
        concurrency: 1,
        lookup_credentials: false,
        ..oci::Options::default()
    })
    .unwrap();
    let cut = {
        let (r, popts) = (r.clone(), PullOptions::new(staging.clone(), dest.clone()));
        tokio::spawn(async move { serial.pull(&r, &popts, &CutAfter { at: MIB }).await }).await
    };
    assert!(cut.unwrap_err().is_panic());
    let partial: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "partial"))
        .collect();
    assert_eq!(partial.len(), 1, "one blob left half downloaded");
    // Whatever the cut left in the destination is gone (the caller's dir stays clean).
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);

    let pulled = client
        .pull(
            &r,
            &PullOptions::new(staging.clone(), dest.clone()),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    assert!(pulled.report.bytes_resumed >= MIB, "{:?}", pulled.report);
    assert!(
        pulled.report.bytes_transferred < pushed.bytes_transferred,
        "{:?}",
        pulled.report
    );
    assert!(
        pulled.report.blobs_skipped >= 1,
        "blobs downloaded before the cut were kept"
    );
    assert_same_files(&src, &dest);
}

#[tokio::test]
async fn damaged_blob_is_refused_and_nothing_is_left_in_the_destination() {
    let reg = anonymous();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 6);
    let r = reference(reg, "damaged/base");
    let client = client();
    client
        .push(
            &r,
            &base_of(&src),
            &push_opts(&tmp.path().join("state")),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    // The digest of vmlinuz's blob (random bytes, unique to this test), from the manifest.
    let m = raw_manifest(reg, "damaged/base", "v1");
    let layers = m["layers"].as_array().unwrap();
    let kernel = layers
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == "vmlinuz")
        .unwrap();
    let digest = kernel["digest"].as_str().unwrap();
    let data = reg.blob_data(digest);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&data, bytes).unwrap();

    let staging = tmp.path().join("staging");
    let dest = tmp.path().join("dest");
    let err = client
        .pull(
            &r,
            &PullOptions::new(staging.clone(), dest.clone()),
            &oci::NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Digest { .. }), "{err:?}");
    assert!(!err.is_usage());
    let msg = err.to_string();
    assert!(
        msg.contains(digest) && msg.contains("vmlinuz") && msg.contains("damaged"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        0,
        "nothing left in the destination"
    );
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(
        std::fs::read_dir(&staging).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(hex)),
        "the damaged blob is not kept for resuming"
    );
}

#[tokio::test]
async fn credentials_and_missing_tags_give_usage_errors() {
    let reg = with_basic_auth();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 7);
    let r = reference(reg, "auth/base");
    let with = |user: &str, password: &str| {
        oci::Client::new(oci::Options {
            credentials: Some(oci::Credentials::new(user, password)),
            ..oci::Options::default()
        })
        .unwrap()
    };
    let good = with(USER, PASSWORD);
    let pushed = good
        .push(
            &r,
            &base_of(&src),
            &push_opts(&tmp.path().join("state")),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(good.resolve(&r).await.unwrap(), pushed.digest);

    let err = with(USER, "wrong").resolve(&r).await.unwrap_err();
    assert!(err.is_usage(), "{err:?}");
    assert!(matches!(err, Error::Denied { status: 401, .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("check the password of user \"tester\""),
        "{err}"
    );

    let err = client()
        .pull(
            &r,
            &PullOptions::new(tmp.path().join("s"), tmp.path().join("d")),
            &oci::NoProgress,
        )
        .await
        .unwrap_err();
    assert!(err.is_usage(), "{err:?}");
    assert!(err.to_string().contains("GUESTBOX_REGISTRY_USER"), "{err}");

    let missing: Reference = format!("{}/auth/base:no-such-tag", reg.addr)
        .parse()
        .unwrap();
    let err = good.resolve(&missing).await.unwrap_err();
    assert!(err.is_usage(), "{err:?}");
    assert!(err.to_string().contains("manifest unknown"), "{err}");
    let err = good
        .pull(
            &missing,
            &PullOptions::new(tmp.path().join("s"), tmp.path().join("d")),
            &oci::NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ManifestUnknown { .. }), "{err:?}");

    let nowhere: Reference = format!("{}/no/such/repo:v1", reg.addr).parse().unwrap();
    let err = good.resolve(&nowhere).await.unwrap_err();
    assert!(err.is_usage(), "{err:?}");

    let err = good
        .push(
            &r.with_digest(&pushed.digest),
            &base_of(&src),
            &push_opts(tmp.path()),
            &oci::NoProgress,
        )
        .await
        .unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("needs a tag"),
        "{err}"
    );
}

#[tokio::test]
async fn push_to_another_repository_mounts_instead_of_uploading() {
    let reg = anonymous();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 8);
    let client = client();
    let state = tmp.path().join("state");
    let first = client
        .push(
            &reference(reg, "mount/a"),
            &base_of(&src),
            &push_opts(&state),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    // Known from the state of the first push.
    let second = client
        .push(
            &reference(reg, "mount/b"),
            &base_of(&src),
            &push_opts(&state),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.bytes_transferred, 0, "{second:?}");
    assert_eq!(second.blobs_mounted, first.blobs_transferred, "{second:?}");
    // Told by the caller, with no state at all.
    let third = client
        .push(
            &reference(reg, "mount/c"),
            &base_of(&src),
            &PushOptions {
                state_dir: None,
                mount_from: vec!["mount/a".into()],
                ..push_opts(&state)
            },
            &oci::NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(third.bytes_transferred, 0, "{third:?}");
    assert_eq!(third.blobs_mounted, first.blobs_transferred, "{third:?}");
}

#[tokio::test]
async fn an_image_that_is_no_base_and_a_closed_port_are_told_apart() {
    let reg = anonymous();
    // An ordinary OCI image manifest (empty config, no layers), put there by hand.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let config = b"{}".to_vec();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let base = format!("http://{}/v2/plain/image", reg.addr);
    let resp = http
        .post(format!("{base}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{}{loc}", reg.addr)
    };
    let resp = http
        .put(format!("{loc}&digest={config_digest}"))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[]}}"#
    );
    let resp = http
        .put(format!("{base}/manifests/v1"))
        .header("content-type", oci::format::MANIFEST_MEDIA_TYPE)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let tmp = tempfile::tempdir().unwrap();
    let r = reference(reg, "plain/image");
    let err = client()
        .pull(
            &r,
            &PullOptions::new(tmp.path().join("s"), tmp.path().join("d")),
            &oci::NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotABase { .. }), "{err:?}");
    assert!(err.is_usage());
    assert!(
        err.to_string()
            .contains("application/vnd.oci.image.config.v1+json"),
        "{err}"
    );

    // Nothing listens: an infrastructure failure (exit 1), not a usage error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r: Reference = format!("127.0.0.1:{port}/x/y:v1").parse().unwrap();
    let err = client().resolve(&r).await.unwrap_err();
    assert!(!err.is_usage(), "{err:?}");
    assert!(err.to_string().contains("cannot reach"), "{err}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn inspect_tells_what_a_pull_would_bring_without_pulling_it() {
    let reg = anonymous();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("base");
    make_base(&src, 9);
    let r = reference(reg, "inspect/base");
    let client = client();
    let pushed = client
        .push(
            &r,
            &base_of(&src),
            &push_opts(&tmp.path().join("state")),
            &oci::NoProgress,
        )
        .await
        .unwrap();
    let found = client.inspect(&r).await.unwrap();
    assert_eq!(found.digest, pushed.digest);
    assert_eq!(
        found.config,
        std::fs::read(src.join("manifest.json")).unwrap()
    );
    assert_eq!(
        found
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        FILES
    );
    assert_eq!(found.blobs, pushed.blobs);
    assert_eq!(found.bytes_blobs, pushed.bytes_blobs);
    // A damaged config is refused here too.
    let m = raw_manifest(reg, "inspect/base", "v1");
    let data = reg.blob_data(m["config"]["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let err = client.inspect(&r).await.unwrap_err();
    assert!(matches!(err, Error::Digest { .. }), "{err:?}");
    assert!(err.to_string().contains("the config"), "{err}");
}
