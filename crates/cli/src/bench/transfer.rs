//! The push and pull rows of `guestbox bench`: the default base through a registry of our
//! own on 127.0.0.1 (Debian's docker-registry, started here and killed with the bench),
//! against curl moving the same blobs in the same run, 3 at once as the client does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guestbox::host::process::Supervised;
use guestbox::host::programs::{self, Program};
use guestbox::store::{import, Base, MANIFEST};
use guestbox::{Error, IoContext, Result};

use super::{median, own_cpu, Row};

const REGISTRY: Program = Program {
    name: "docker-registry",
    package: "docker-registry",
    why: "the bench pushes and pulls a base through a registry of its own on 127.0.0.1",
};
const CURL: Program = Program {
    name: "curl",
    package: "curl",
    why: "the bench compares push and pull with curl moving the same bytes",
};
/// Blobs moved at once by curl: as many as the registry client moves.
const CURL_AT_ONCE: usize = 3;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn oci_error(what: &str, e: oci::Error) -> Error {
    Error::Command {
        what: what.to_string(),
        status: "failed".into(),
        detail: e.to_string(),
    }
}

/// A registry on a free loopback port, storing under `dir`; killed when dropped.
struct LocalRegistry {
    addr: String,
    storage: PathBuf,
    _process: Supervised,
}

impl LocalRegistry {
    async fn start(dir: &Path) -> Result<LocalRegistry> {
        let program = programs::path_of(REGISTRY)?;
        let storage = dir.join("storage");
        // A free port, released just before the registry binds it: retried if taken.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .ctx(|| "finding a free port")?
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n",
                    storage.display()
                ),
            )
            .ctx(|| format!("writing {}", config.display()))?;
            let mut process = Supervised::spawn(
                "docker-registry",
                &program,
                &[std::ffi::OsStr::new("serve"), config.as_os_str()],
                &dir.join("registry.log"),
            )?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if process.try_wait()?.is_some() {
                    break;
                }
                if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                    return Ok(LocalRegistry {
                        addr,
                        storage,
                        _process: process,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            process.kill().await;
        }
        Err(Error::Command {
            what: "starting docker-registry on 127.0.0.1".into(),
            status: "it did not come up".into(),
            detail: std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default(),
        })
    }

    /// The registry's own copy of a blob.
    fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }
}

/// Runs curl with `args`; its stdout.
async fn curl(curl: &Path, args: &[String]) -> Result<String> {
    let out = tokio::process::Command::new(curl)
        .args(["-s", "-S", "-f"])
        .args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ctx(|| "running curl")?;
    if !out.status.success() {
        return Err(Error::Command {
            what: format!("curl {}", args.join(" ")),
            status: out.status.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Seconds curl takes to upload `blobs` (digest, file) into `repo`: POST a session, PUT
/// the whole blob, `CURL_AT_ONCE` at a time.
async fn curl_up(reg: &LocalRegistry, repo: &str, blobs: &[(String, PathBuf)]) -> Result<f64> {
    use futures::StreamExt;
    let program = programs::path_of(CURL)?;
    let started = Instant::now();
    let jobs = blobs.iter().map(|(digest, file)| {
        let program = program.clone();
        async move {
            let head = curl(
                &program,
                &[
                    "-X".into(),
                    "POST".into(),
                    "-D".into(),
                    "-".into(),
                    "-o".into(),
                    "/dev/null".into(),
                    format!("http://{}/v2/{repo}/blobs/uploads/", reg.addr),
                ],
            )
            .await?;
            let location = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("location")
                        .then(|| v.trim().to_string())
                })
                .ok_or_else(|| Error::Command {
                    what: "curl POST of an upload session".into(),
                    status: "no Location".into(),
                    detail: head.clone(),
                })?;
            let location = if location.starts_with("http") {
                location
            } else {
                format!("http://{}{location}", reg.addr)
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            curl(
                &program,
                &[
                    "-X".into(),
                    "PUT".into(),
                    "-H".into(),
                    "Content-Type: application/octet-stream".into(),
                    "-T".into(),
                    file.display().to_string(),
                    "-o".into(),
                    "/dev/null".into(),
                    format!("{location}{sep}digest={digest}"),
                ],
            )
            .await
        }
    });
    let results: Vec<Result<String>> = futures::stream::iter(jobs)
        .buffer_unordered(CURL_AT_ONCE)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds curl takes to download `digests` of `repo` into files in `dir`.
async fn curl_down(reg: &LocalRegistry, repo: &str, digests: &[String], dir: &Path) -> Result<f64> {
    use futures::StreamExt;
    let program = programs::path_of(CURL)?;
    let started = Instant::now();
    let jobs = digests.iter().map(|digest| {
        let program = program.clone();
        let out = dir.join(digest.replace(':', "-"));
        async move {
            curl(
                &program,
                &[
                    "-o".into(),
                    out.display().to_string(),
                    format!("http://{}/v2/{repo}/blobs/{digest}", reg.addr),
                ],
            )
            .await
        }
    });
    let results: Vec<Result<String>> = futures::stream::iter(jobs)
        .buffer_unordered(CURL_AT_ONCE)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The distinct blobs of `repo:v1` (every layer and the config), each with the
/// registry's own copy of it: the manifest fetched with curl.
async fn blobs_of(reg: &LocalRegistry, repo: &str) -> Result<Vec<(String, PathBuf)>> {
    let program = programs::path_of(CURL)?;
    let text = curl(
        &program,
        &[
            "-H".into(),
            format!("Accept: {}", oci::format::MANIFEST_MEDIA_TYPE),
            format!("http://{}/v2/{repo}/manifests/v1", reg.addr),
        ],
    )
    .await?;
    let manifest: oci::format::ImageManifest =
        serde_json::from_str(&text).ctx(|| "parsing the pushed manifest")?;
    let mut digests: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    digests.push(manifest.config.digest.clone());
    digests.sort();
    digests.dedup();
    Ok(digests
        .into_iter()
        .map(|d| {
            let path = reg.blob(&d);
            (d, path)
        })
        .collect())
}

/// Medians of `runs` (at most 3) pushes and pulls of `base`, and curl in the same run.
pub async fn rows(
    base: &Base,
    runs: usize,
    progress: &guestbox::progress::Progress,
) -> Result<Vec<Row>> {
    let tmp = tempfile::Builder::new()
        .prefix("guestbox-bench-registry-")
        .tempdir()
        .ctx(|| "creating a temporary directory")?;
    let reg = LocalRegistry::start(tmp.path()).await?;
    let client = oci::Client::new(oci::Options {
        lookup_credentials: false,
        ..oci::Options::default()
    })
    .map_err(|e| oci_error("the registry client", e))?;
    let files = import::transported_files(&base.manifest);
    let to_push = oci::Base::from_dir(&base.dir, MANIFEST, &files)
        .map_err(|e| oci_error("reading the base", e))?;
    let exe = std::env::current_exe().ctx(|| "finding the guestbox binary")?;
    let n = runs.clamp(1, 3);
    let step = progress.step(format!(
        "push and pull of the default base through a registry on {}, {n} times, and curl",
        reg.addr
    ));
    let (mut push_s, mut again_s, mut pull_s, mut whole_s) = (vec![], vec![], vec![], vec![]);
    let (mut up_s, mut down_s) = (vec![], vec![]);
    // CPU seconds of this process (push, pull) or its reaped children (curl): on shared
    // cores the wall times move with the neighbours' load, the CPU cost does not as much.
    let (mut push_cpu, mut pull_cpu, mut up_cpu, mut down_cpu) = (vec![], vec![], vec![], vec![]);
    let mut wire = 0;
    let mut base_bytes = 0;
    let mut again_bytes = 0;
    for i in 0..n {
        let repo = format!("bench/push-{i}");
        let r: oci::Reference = format!("{}/{repo}:v1", reg.addr)
            .parse()
            .map_err(|e| oci_error("the bench reference", e))?;
        // A fresh state each time: every part compressed, nothing mounted.
        let state = tmp.path().join(format!("state-{i}"));
        let opts = oci::PushOptions::new(state);
        let cpu = own_cpu();
        let report = client
            .push(&r, &to_push, &opts, &oci::NoProgress)
            .await
            .map_err(|e| oci_error("pushing the base", e))?;
        push_s.push(report.seconds);
        push_cpu.push(own_cpu() - cpu);
        wire = report.bytes_transferred;
        base_bytes = report.bytes_files;
        let again = client
            .push(&r, &to_push, &opts, &oci::NoProgress)
            .await
            .map_err(|e| oci_error("pushing the base again", e))?;
        again_s.push(again.seconds);
        again_bytes = again.bytes_transferred;

        let dest = tmp.path().join(format!("pulled-{i}"));
        let popts = oci::PullOptions::new(tmp.path().join(format!("staging-{i}")), dest.clone());
        let cpu = own_cpu();
        let pulled = client
            .pull(&r, &popts, &oci::NoProgress)
            .await
            .map_err(|e| oci_error("pulling the base", e))?;
        pull_s.push(pulled.report.seconds);
        pull_cpu.push(own_cpu() - cpu);
        std::fs::remove_dir_all(&dest).ctx(|| format!("removing {}", dest.display()))?;

        // What a user runs: `guestbox pull` into an empty home, checks and registration
        // included.
        let home = tmp.path().join(format!("home-{i}"));
        let t = Instant::now();
        let out = tokio::process::Command::new(&exe)
            .args(["--quiet", "pull", &r.to_string()])
            .env("GUESTBOX_HOME", &home)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .ctx(|| format!("running {}", exe.display()))?;
        whole_s.push(t.elapsed().as_secs_f64());
        if !out.status.success() {
            return Err(Error::Command {
                what: "`guestbox pull`".into(),
                status: out.status.to_string(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        guestbox::host::fs::make_writable(&home);
        std::fs::remove_dir_all(&home).ctx(|| format!("removing {}", home.display()))?;

        let blobs = blobs_of(&reg, &repo).await?;
        let cpu = own_cpu();
        up_s.push(curl_up(&reg, &format!("bench/curl-{i}"), &blobs).await?);
        up_cpu.push(own_cpu() - cpu);
        let down = tmp.path().join(format!("curl-{i}"));
        std::fs::create_dir_all(&down).ctx(|| format!("creating {}", down.display()))?;
        let digests: Vec<String> = blobs.iter().map(|(d, _)| d.clone()).collect();
        let cpu = own_cpu();
        down_s.push(curl_down(&reg, &repo, &digests, &down).await?);
        down_cpu.push(own_cpu() - cpu);
        std::fs::remove_dir_all(&down).ctx(|| format!("removing {}", down.display()))?;
        step.detail(&format!("{} of {n}", i + 1));
    }
    step.done();

    let (push, again, pull, whole, up, down) = (
        median(push_s),
        median(again_s),
        median(pull_s),
        median(whole_s),
        median(up_s),
        median(down_s),
    );
    let (push_cpu, pull_cpu, up_cpu, down_cpu) = (
        median(push_cpu),
        median(pull_cpu),
        median(up_cpu),
        median(down_cpu),
    );
    let rate = |secs: f64| mib(wire) / secs;
    let mut rows = Vec::new();
    let mut row = |what: &str, value: String, target: &str| {
        rows.push(Row::text(&super::slug(what), what, value, target))
    };
    row(
        "push of the default base (loopback registry, nothing there)",
        format!(
            "{push:.2} s ({push_cpu:.1} CPU-s): {:.0} MiB/s of base, {:.0} MiB/s on the wire",
            mib(base_bytes) / push,
            rate(push)
        ),
        "",
    );
    row(
        "  curl uploading the same blobs (POST + PUT, 3 at once)",
        format!("{up:.2} s ({up_cpu:.1} CPU-s): {:.0} MiB/s", rate(up)),
        "",
    );
    row(
        "  push / curl",
        format!("{:.0}%", up / push * 100.0),
        ">= 70%",
    );
    row(
        "second push of the same base",
        format!("{again:.3} s, {again_bytes} bytes sent"),
        "nothing sent",
    );
    row(
        "pull of the default base (download, check, unpack, fsync)",
        format!(
            "{pull:.2} s ({pull_cpu:.1} CPU-s): {:.0} MiB/s of base, {:.0} MiB/s on the wire",
            mib(base_bytes) / pull,
            rate(pull)
        ),
        "",
    );
    row(
        "  curl downloading the same blobs (3 at once, into files)",
        format!("{down:.2} s ({down_cpu:.1} CPU-s): {:.0} MiB/s", rate(down)),
        "",
    );
    row(
        "  pull / curl",
        format!("{:.0}%", down / pull * 100.0),
        ">= 70%",
    );
    row(
        "`guestbox pull` into an empty home (+ verify, register)",
        format!("{whole:.2} s"),
        "",
    );
    row(
        "bytes on the wire / the base's files",
        format!(
            "{:.1} MiB / {:.1} MiB ({:.1}%)",
            mib(wire),
            mib(base_bytes),
            wire as f64 / base_bytes.max(1) as f64 * 100.0
        ),
        "",
    );
    Ok(rows)
}
