//! `guestbox push` and `guestbox pull` through the guestbox binary, against a real registry
//! (Debian's docker-registry) on 127.0.0.1: the shared test base goes up, comes down into
//! an empty GUESTBOX_HOME and runs there; pushes and pulls SIGKILLed halfway resume; a
//! damaged blob, a base whose files do not match its manifest, wrong credentials and a
//! missing tag are refused and leave nothing registered.
//!
//! Each test starts its own registry, so the push state the tests share in the test home
//! (which registry holds which blob) cannot make one test's upload a mount of another's.

mod common;
#[path = "../../oci/tests/common/registry.rs"]
mod registry;

use common::{
    base_id, descendants, guestbox, guestbox_in, holds_file_under, live_cmdline, test_home, text,
};
use registry::{raw_manifest, Registry, PASSWORD, USER};

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

/// The shared default base (bootstrapped once per test run, found afterwards).
fn default_base() -> String {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    base_id("default")
}

/// An empty GUESTBOX_HOME.
fn empty_home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("guestbox-pull-test-")
        .tempdir()
        .unwrap()
}

/// stdout of a successful `--json` command, parsed.
fn json_of(what: &str, o: &Output) -> serde_json::Value {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(0), "{what}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out}"))
}

fn push(reference: &str, extra: &[&str]) -> Output {
    guestbox()
        .args(["push", "--json", "default", reference])
        .args(extra)
        .output()
        .unwrap()
}

fn pull(home: &Path, reference: &str, extra: &[&str]) -> Output {
    guestbox_in(home)
        .args(["pull", "--json", reference])
        .args(extra)
        .output()
        .unwrap()
}

fn ls(home: &Path) -> Vec<serde_json::Value> {
    let o = guestbox_in(home).args(["ls", "--json"]).output().unwrap();
    json_of("ls", &o).as_array().unwrap().clone()
}

/// Entries of `dir` (names), empty if it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Nothing registered in `home`: no base, no half-made one, no name.
fn assert_nothing_registered(home: &Path, what: &str) {
    assert!(ls(home).is_empty(), "{what}: a base was registered");
    let bases = home.join("bases");
    let left: Vec<String> = entries(&bases)
        .into_iter()
        .filter(|n| n != "names")
        .collect();
    assert!(left.is_empty(), "{what}: left in bases/: {left:?}");
    assert!(entries(&bases.join("names")).is_empty(), "{what}: a name");
}

/// Starts `cmd` (stderr piped: one line per part), SIGKILLs it once `count` lines start
/// with `prefix`, and checks that it left no process behind. Returns the lines it saw.
fn kill_after(mut cmd: Command, prefix: &str, count: usize) -> Vec<String> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut seen = Vec::new();
    let mut hits = 0;
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with(prefix) {
            hits += 1;
        }
        seen.push(line);
        if hits == count {
            break;
        }
    }
    assert_eq!(hits, count, "it ended before {count} parts: {seen:#?}");
    let kids = descendants(pid as i32);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "it finished before the kill: {seen:#?}");
    std::thread::sleep(Duration::from_millis(200));
    let left: Vec<i32> = kids
        .into_iter()
        .filter(|p| live_cmdline(*p).is_some())
        .collect();
    assert!(left.is_empty(), "processes outlived guestbox: {left:?}");
    seen
}

/// Sets the modification time of `path` and everything in it `days` into the past.
fn age(path: &Path, days: u64) {
    let then = SystemTime::now() - Duration::from_secs(days * 24 * 3600);
    let mut all = vec![path.to_path_buf()];
    all.extend(entries(path).iter().map(|n| path.join(n)));
    for p in all {
        std::fs::File::open(&p).unwrap().set_modified(then).unwrap();
    }
}

/// The digest of the layer holding file `title` (its first part) in `repo:tag`.
fn layer_digest(reg: &Registry, repo: &str, tag: &str, title: &str) -> String {
    let m = raw_manifest(reg, repo, tag);
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == title)
        .unwrap_or_else(|| panic!("no layer {title} in {m}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// No QEMU left running that names `home` (or holds a file of it open).
fn assert_no_qemu_of(home: &Path) {
    let needle = home.to_string_lossy().into_owned();
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if live_cmdline(pid).is_some_and(|c| {
            c.contains("qemu-system")
                && (c.contains(&needle) || holds_file_under(pid as u32, &needle))
        }) {
            left.push(pid);
        }
    }
    assert!(left.is_empty(), "QEMU processes of {needle} left: {left:?}");
}

#[test]
fn a_pushed_base_pulls_into_an_empty_home_and_runs_there() {
    let id = default_base();
    let reg = Registry::start("", &[]);
    let reference = format!("{}/team/debian-build:v3", reg.addr);

    let first = json_of("push", &push(&reference, &[]));
    assert_eq!(first["base"], id.as_str());
    let digest = first["digest"].as_str().unwrap().to_string();
    assert!(first["bytes_transferred"].as_u64().unwrap() > 0, "{first}");
    // The files are far larger than what went over the wire (zstd; RAM files are sparse).
    assert!(
        first["bytes_files"].as_u64().unwrap() > 4 * first["bytes_blobs"].as_u64().unwrap(),
        "{first}"
    );
    assert_eq!(
        first["pinned"].as_str().unwrap(),
        format!("{reference}@{digest}")
    );
    let second = json_of("second push", &push(&reference, &[]));
    assert_eq!(second["digest"], digest.as_str());
    assert_eq!(second["bytes_transferred"], 0, "{second}");
    assert_eq!(second["blobs_transferred"], 0, "{second}");
    assert_eq!(second["blobs_skipped"], second["blobs"], "{second}");

    // What was pushed, as the registry holds it.
    let m = raw_manifest(&reg, "team/debian-build", "v3");
    assert_eq!(m["artifactType"], "application/vnd.guestbox.base.v1");
    assert_eq!(m["annotations"]["vnd.guestbox.base.id"], id.as_str());
    let titles: std::collections::BTreeSet<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["annotations"]["org.opencontainers.image.title"]
                .as_str()
                .unwrap()
        })
        .collect();
    let mut expected: Vec<&str> = guestbox::store::files::ALL.to_vec();
    expected.push(guestbox::store::SECRETS);
    assert_eq!(titles, expected.into_iter().collect());

    let home = empty_home();
    let pulled = json_of(
        "pull",
        &pull(home.path(), &reference, &["--name", "pulled"]),
    );
    assert_eq!(pulled["base"], id.as_str());
    assert_eq!(pulled["digest"], digest.as_str());
    assert_eq!(pulled["already_present"], false);
    assert_eq!(pulled["names"], serde_json::json!(["pulled"]));
    assert_eq!(pulled["bytes_transferred"], first["bytes_transferred"]);
    let dir = home.path().join("bases").join(&id);
    // Byte-identical manifest; secrets owner-only; the rest read-only.
    assert_eq!(
        std::fs::read(dir.join("manifest.json")).unwrap(),
        std::fs::read(test_home().join("bases").join(&id).join("manifest.json")).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |n: &str| std::fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("secrets.json"), 0o400);
    assert_eq!(mode("guest.qcow2"), 0o444);
    assert_eq!(mode("origin.json"), 0o444);
    // Nothing left of the transfer.
    assert!(entries(&home.path().join("registry/pull")).is_empty());
    assert_eq!(
        entries(&home.path().join("bases")),
        [id.clone(), "names".into()]
    );

    // Provenance, in both homes.
    let rows = ls(home.path());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["origin"]["kind"], "pulled");
    assert_eq!(rows[0]["origin"]["digest"], digest.as_str());
    assert_eq!(rows[0]["origin"]["reference"], reference.as_str());
    let o = guestbox_in(home.path()).arg("ls").output().unwrap();
    let table = text(&o).0;
    assert!(
        table.contains(&format!("pulled from {reference}@{}", &digest[..19])),
        "{table}"
    );
    let here = ls(&test_home());
    let row = here.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(row["origin"]["kind"], "bootstrapped", "{row}");

    let o = guestbox_in(home.path())
        .args(["verify", "pulled"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    // A base is self-contained: it runs in a home that has no images.
    let o = guestbox_in(home.path())
        .args([
            "run",
            "--base",
            "pulled",
            "--",
            "sh",
            "-c",
            "echo revived; id -un",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(out, "revived\nroot\n");
    assert!(!home.path().join("cache/images").exists());
    assert_no_qemu_of(home.path());

    // Already there: nothing moves, the name still lands.
    let again = json_of(
        "second pull",
        &pull(
            home.path(),
            &format!("{reference}@{digest}"),
            &["--name", "again"],
        ),
    );
    assert_eq!(again["already_present"], true, "{again}");
    assert_eq!(again["bytes_transferred"], 0, "{again}");
    assert_eq!(again["names"], serde_json::json!(["again", "pulled"]));

    // rm takes the base and its origin; gc finds nothing left over.
    let o = guestbox_in(home.path())
        .args(["rm", "pulled"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_nothing_registered(home.path(), "after rm");
    let o = guestbox_in(home.path()).arg("gc").output().unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("gc: 0 removed"), "{out}");
}

#[test]
fn a_killed_push_and_a_killed_pull_resume() {
    default_base();
    let reg = Registry::start("", &[]);
    let reference = format!("{}/cut/base:v1", reg.addr);
    // Small parts and chunks: many parts, so the kill lands with some done, some not.
    let small = ["--part-size", "8M", "--chunk-size", "1M"];
    let mut cmd = guestbox();
    cmd.args(["push", "default", &reference]).args(small);
    kill_after(cmd, "guestbox: pushed ", 3);
    let o = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/v2/cut/base/manifests/v1", reg.addr))
        .output()
        .unwrap();
    assert_eq!(text(&o).0, "404", "the killed push tagged something");

    let o = push(&reference, &small);
    let done = json_of("resumed push", &o);
    // Parts the killed push had sent are found in the registry (a blob cut between chunks
    // resumes its upload session), not sent again. Not counted from the report alone:
    // its skips include the RAM files' repeated all-zero parts.
    let present = text(&o).1.matches(": already in the registry").count();
    assert!(
        present >= 3 || done["bytes_resumed"].as_u64().unwrap() > 0,
        "the parts pushed before the kill went again: {done}\n{}",
        text(&o).1
    );
    let digest = done["digest"].as_str().unwrap().to_string();

    let home = empty_home();
    let mut cmd = guestbox_in(home.path());
    cmd.args(["pull", &reference]);
    kill_after(cmd, "guestbox: pulled ", 3);
    assert!(
        ls(home.path()).is_empty(),
        "the killed pull registered a base"
    );
    // What the kill left: a build directory (gc removes it), the staging (kept to resume).
    let o = guestbox_in(home.path()).arg("gc").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_nothing_registered(home.path(), "after gc");
    let staging = home.path().join("registry/pull");
    assert_eq!(
        entries(&staging),
        [digest.strip_prefix("sha256:").unwrap().to_string()],
        "the staging of the killed pull is kept for a week"
    );

    let o = pull(home.path(), &reference, &[]);
    let pulled = json_of("resumed pull", &o);
    let staged = text(&o)
        .1
        .matches(": downloaded by an earlier attempt")
        .count();
    assert!(
        staged >= 3,
        "the parts pulled before the kill were downloaded again: {pulled}\n{}",
        text(&o).1
    );
    assert_eq!(pulled["digest"], digest.as_str());
    assert_eq!(ls(home.path()).len(), 1);
    assert!(entries(&staging).is_empty(), "staging left after success");
    let o = guestbox_in(home.path())
        .args(["verify", &base_id_in(home.path())])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

fn base_id_in(home: &Path) -> String {
    ls(home)[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn damaged_blobs_and_files_that_differ_from_the_manifest_are_refused() {
    let id = default_base();
    let reg = Registry::start("", &[]);
    let good = format!("{}/damage/base:good", reg.addr);
    json_of("push", &push(&good, &[]));

    // A base whose manifest (sealed, so it loads) records another checksum for one file: what
    // a base damaged on its way to the registry looks like. Pushed through the client crate;
    // its blobs are in the registry already.
    let base_dir = test_home().join("bases").join(&id);
    let mut m: guestbox::store::Manifest =
        serde_json::from_slice(&std::fs::read(base_dir.join("manifest.json")).unwrap()).unwrap();
    m.files.get_mut("guest.state").unwrap().blake3 = "0".repeat(64);
    m.seal = None;
    let config = serde_json::to_vec_pretty(&m.sealed().unwrap()).unwrap();
    let mut files = guestbox::store::files::ALL.to_vec();
    files.push(guestbox::store::SECRETS);
    let lying = oci::Base {
        config,
        files: oci::Base::from_dir(&base_dir, "manifest.json", &files)
            .unwrap()
            .files,
    };
    let bad_manifest = format!("{}/damage/base:lying", reg.addr);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = oci::Client::new(oci::Options {
                lookup_credentials: false,
                ..oci::Options::default()
            })
            .unwrap();
            client
                .push(
                    &bad_manifest.parse().unwrap(),
                    &lying,
                    &oci::PushOptions {
                        state_dir: None,
                        ..oci::PushOptions::new(PathBuf::new())
                    },
                    &oci::NoProgress,
                )
                .await
                .unwrap()
        });
    let home = empty_home();
    let o = pull(home.path(), &bad_manifest, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains("guest.state") && err.contains("differ from its manifest"),
        "{err}"
    );
    assert!(err.contains("nothing was registered"), "{err}");
    assert_nothing_registered(home.path(), "files unlike the manifest");

    // A flipped byte in the registry's copy of a blob.
    let digest = layer_digest(&reg, "damage/base", "good", "vmlinuz");
    let data = reg.blob_data(&digest);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[4321] ^= 0x10;
    std::fs::write(&data, bytes).unwrap();
    let o = pull(home.path(), &good, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains(&digest) && err.contains("damaged"), "{err}");
    assert_nothing_registered(home.path(), "damaged blob");

    // The good blobs wait for a retry; once a week old, gc takes them.
    let staging = home.path().join("registry/pull");
    let left = entries(&staging);
    assert_eq!(left.len(), 1, "{left:?}");
    let o = guestbox_in(home.path()).arg("gc").output().unwrap();
    assert!(text(&o).0.contains("gc: 0 removed"), "{}", text(&o).0);
    age(&staging.join(&left[0]), 8);
    let o = guestbox_in(home.path()).arg("gc").output().unwrap();
    let (out, _) = text(&o);
    assert!(out.contains("registry/pull"), "{out}");
    assert!(entries(&staging).is_empty(), "{out}");
}

#[test]
fn wrong_credentials_a_missing_tag_and_bad_references_are_usage_errors() {
    let reg = registry::with_basic_auth();
    let home = empty_home();
    let auth_file = home.path().join("auth.json");
    let encoded = {
        // base64 of user:password, by hand: a test of the CLI needs no base64 crate.
        let raw = format!("{USER}:{PASSWORD}");
        let out = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(raw.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    std::fs::write(
        &auth_file,
        format!(r#"{{"auths":{{"{}":{{"auth":"{encoded}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let reference = format!("{}/auth/base:v1", reg.addr);
    // (environment, arguments, what the message says)
    type Case<'a> = (Vec<(&'a str, String)>, Vec<String>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("GUESTBOX_REGISTRY_USER", USER.into()),
                ("GUESTBOX_REGISTRY_PASSWORD", "wrong".into()),
            ],
            vec!["pull".into(), reference.clone()],
            "check the password of user \"tester\"",
        ),
        (
            vec![(
                "REGISTRY_AUTH_FILE",
                home.path().join("none.json").display().to_string(),
            )],
            vec!["pull".into(), reference.clone()],
            "cannot read it",
        ),
        (
            vec![(
                "DOCKER_CONFIG",
                home.path().join("nowhere").display().to_string(),
            )],
            vec!["pull".into(), reference.clone()],
            "it needs credentials: set GUESTBOX_REGISTRY_USER",
        ),
        // The right credentials from an auth file: past the login, the tag is missing.
        (
            vec![("REGISTRY_AUTH_FILE", auth_file.display().to_string())],
            vec!["pull".into(), format!("{}/auth/base:no-such-tag", reg.addr)],
            "manifest unknown",
        ),
        (
            vec![],
            vec!["pull".into(), "Bad//Reference".into()],
            "bad reference",
        ),
        (
            vec![],
            vec![
                "pull".into(),
                reference.clone(),
                "--name".into(),
                "../x".into(),
            ],
            "not a valid base name",
        ),
    ];
    for (env, args, says) in cases {
        let mut cmd = guestbox_in(home.path());
        cmd.env_remove("GUESTBOX_REGISTRY_USER")
            .env_remove("GUESTBOX_REGISTRY_PASSWORD")
            .env_remove("REGISTRY_AUTH_FILE")
            .env("DOCKER_CONFIG", home.path().join("no-docker-config"));
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let o = cmd.args(&args).output().unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(
            err.contains(says),
            "{args:?} {env:?}: expected {says:?} in {err}"
        );
        assert_nothing_registered(home.path(), &format!("{args:?}"));
        assert!(
            entries(&home.path().join("registry/pull")).is_empty(),
            "{args:?}: staging made"
        );
    }
    // Pushing with a wrong password: refused before anything is sent.
    default_base();
    let o = guestbox()
        .env("GUESTBOX_REGISTRY_USER", USER)
        .env("GUESTBOX_REGISTRY_PASSWORD", "wrong")
        .args(["push", "default", &reference])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("check the password of user \"tester\""),
        "{err}"
    );
    assert!(
        entries(&reg.dir.join("storage/docker/registry/v2/repositories")).is_empty(),
        "the refused push left something in the registry"
    );
    let o = guestbox()
        .args(["push", "default"])
        .arg(format!("{}/x/y@sha256:{}", reg.addr, "ab".repeat(32)))
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("needs a tag"), "{err}");
    // A missing tag on an anonymous registry too, and a registry nobody listens on.
    let anon = Registry::start("", &[]);
    let o = pull(home.path(), &format!("{}/none/such:v9", anon.addr), &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("manifest unknown"), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = pull(home.path(), &format!("127.0.0.1:{port}/x/y:v1"), &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    assert_nothing_registered(home.path(), "unreachable");
}
