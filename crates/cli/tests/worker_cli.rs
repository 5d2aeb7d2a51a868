//! `guestbox worker` end to end: BuildGrid 0.4.4 over PostgreSQL (crates/reapi's test farm,
//! started and stopped by this binary) → the real `guestbox worker` binary reviving the
//! test base under TCG → Bazel (Debian's bazel-bootstrap 4.2.3) building genrules remotely
//! with `--remote_default_exec_properties=guestbox-base=<id>`.
//!
//! Every test advertises the same base (the shared default test base), so the tests of
//! this binary take turns: only one worker is in the farm at a time.

mod common;
// crates/reapi's harness (farm, Bazel), reused as it is rather than copied.
#[path = "../../reapi/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{base_id, descendants, guestbox, live_cmdline, text};
use support::bazel::BazelRun;
use support::{bazel, farm, unique};

static ONE_WORKER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_WORKER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The default test base's id (bootstrapped on first use, revived afterwards).
fn test_base() -> String {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    base_id("default")
}

/// A `guestbox worker` process in the farm.
struct WorkerProcess {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    fn start(bases: &[&str], extra: &[&str]) -> WorkerProcess {
        Self::start_with(bases, extra, |_| {})
    }

    fn start_with(bases: &[&str], extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let mut cmd = guestbox();
        cmd.args(["--verbose", "worker", "--reapi", &farm().url])
            .args(["--poll-timeout", "5s", "--bot-id", &unique("guestbox-bot")])
            .arg("--work-dir")
            .arg(dir.path().join("work"));
        for b in bases {
            cmd.args(["--base", b]);
        }
        cmd.args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        tweak(&mut cmd);
        let child = cmd.spawn().expect("start guestbox worker");
        WorkerProcess {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The QEMU processes below the worker.
    fn qemus(&self) -> Vec<i32> {
        descendants(self.pid())
            .into_iter()
            .filter(|p| live_cmdline(*p).is_some_and(|c| c.contains("qemu-system")))
            .collect()
    }

    /// SIGTERM, then the exit status (within `limit`).
    fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        // SAFETY: a signal to the worker this test started.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.wait(limit)
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "the worker did not exit within {limit:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Lines of its log that say an action was handed to a guest.
    fn actions_run(&self) -> usize {
        self.log().matches("running in a revived guest").count()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: a signal to the worker this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn genrule(name: &str, cmd: &str) -> String {
    format!("genrule(name = \"{name}\", outs = [\"{name}.txt\"], cmd = \"{cmd}\")\n")
}

fn build(base: &str, extra: &[&str], targets: &[&str]) -> BazelRun {
    bazel().build_remote(
        "build",
        &farm().url,
        &[("guestbox-base", base)],
        extra,
        targets,
    )
}

fn output(rel: &str) -> String {
    std::fs::read_to_string(bazel().bin(rel))
        .unwrap_or_else(|e| panic!("bazel-bin/{rel}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn bazel_builds_in_revived_guests_outputs_exit_codes_and_the_action_cache() {
    let _serial = serial();
    let base = test_base();
    let w = WorkerProcess::start(&[&base], &["--jobs", "2"]);
    let bz = bazel();
    let n = unique("from-the-guest");
    // `uname -n` is the guest's host name: the action ran in the guest, not on the host.
    bz.package(
        "gb",
        &format!(
            "{}{}",
            genrule("hello", &format!("echo {n} $$(uname -n) $$(pwd) > $@")),
            genrule("bad", &format!("echo {n}-stderr >&2; exit 3"))
        ),
        &[],
    );
    let t = Instant::now();
    let r = build(&base, &[], &["//gb:hello"]);
    assert!(
        r.success,
        "the build failed:\n{}\nworker:\n{}",
        r.output,
        w.log()
    );
    eprintln!(
        "one genrule in a revived guest, end to end: {:?}",
        t.elapsed()
    );
    let out = output("gb/hello.txt");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(out.starts_with(&n), "{out}");
    assert!(
        out.contains("guestbox-guest"),
        "not run in the guest: {out}"
    );
    assert!(!out.contains(host.trim()), "ran on the host: {out}");
    // The working directory is under the input root's fixed guest path.
    assert!(out.ends_with("/b"), "{out}");
    assert_eq!(w.actions_run(), 1, "{}", w.log());

    // A failing action fails the build with its own exit code; its stderr comes back.
    let r = build(&base, &[], &["//gb:bad"]);
    assert!(!r.success, "the build should fail:\n{}", r.output);
    assert!(r.output.contains("(Exit 3)"), "{}", r.output);
    assert!(r.output.contains(&format!("{n}-stderr")), "{}", r.output);
    assert_eq!(w.actions_run(), 2, "{}", w.log());

    // Without its local outputs, Bazel finds the action in the farm's cache: no new run.
    bz.clean();
    let r = build(&base, &[], &["//gb:hello"]);
    assert!(r.success, "the second build failed:\n{}", r.output);
    assert!(r.output.contains("remote cache hit"), "{}", r.output);
    assert!(output("gb/hello.txt").starts_with(&n));
    assert_eq!(
        w.actions_run(),
        2,
        "the cached action ran again:\n{}",
        w.log()
    );
    let mut w = w;
    let status = w.terminate(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", w.log());
}

#[test]
fn sigterm_drains_the_running_action_then_exits_0() {
    let _serial = serial();
    let base = test_base();
    let mut w = WorkerProcess::start(&[&base], &[]);
    let n = unique("drained");
    bazel().package(
        "gbdrain",
        &genrule("d", &format!("sleep 6; echo {n} > $@")),
        &[],
    );
    let b = base.clone();
    let builder = std::thread::spawn(move || build(&b, &[], &["//gbdrain:d"]));
    // The action runs once the worker has its two QEMUs.
    let start = Instant::now();
    while w.qemus().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "no guest was revived; worker log:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let qemus = w.qemus();
    let t = Instant::now();
    let status = w.terminate(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{}", w.log());
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "the worker exited before the action ended: {:?}",
        t.elapsed()
    );
    let log = w.log();
    assert!(log.contains("draining"), "{log}");
    let r = builder.join().unwrap();
    assert!(
        r.success,
        "the drained action's build failed:\n{}\n{log}",
        r.output
    );
    assert_eq!(output("gbdrain/d.txt"), n);
    for q in qemus {
        assert!(live_cmdline(q).is_none(), "QEMU {q} outlived the worker");
    }
}

#[test]
fn past_the_drain_timeout_the_running_action_is_stopped_and_given_back() {
    let _serial = serial();
    let base = test_base();
    let mut w = WorkerProcess::start(&[&base], &["--drain-timeout", "2s"]);
    let n = unique("cut-off");
    bazel().package(
        "gbcut",
        &genrule("c", &format!("sleep 15; echo {n} > $@")),
        &[],
    );
    let b = base.clone();
    let builder = std::thread::spawn(move || build(&b, &["--remote_retries=0"], &["//gbcut:c"]));
    let start = Instant::now();
    while w.qemus().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "no guest was revived; worker log:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let qemus = w.qemus();
    let t = Instant::now();
    let status = w.terminate(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", w.log());
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the cancelled action was not stopped promptly: {:?}",
        t.elapsed()
    );
    for q in qemus {
        assert!(
            live_cmdline(q).is_none(),
            "QEMU {q} of the cancelled action lives on"
        );
    }
    assert!(w.log().contains("given back"), "{}", w.log());
    let r = builder.join().unwrap();
    assert!(
        !r.success,
        "the cut-off action cannot have succeeded:\n{}",
        r.output
    );
    // Given back means the farm may hand it to another worker: let one take it (if the
    // farm requeues it), so that it does not reach the next test's worker first.
    let mut sweeper = WorkerProcess::start(&[&base], &[]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) && sweeper.actions_run() == 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    if sweeper.actions_run() > 0 {
        eprintln!("the farm requeued the given-back action");
        while !sweeper.log().contains("lease done") && start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(sweeper.terminate(Duration::from_secs(120)).code(), Some(0));
}

#[test]
fn a_guest_that_cannot_be_revived_is_an_infrastructure_failure_not_an_exit_code() {
    let _serial = serial();
    let base = test_base();
    // No QEMU on its PATH: every revive fails before a VM starts.
    let empty = tempfile::tempdir().unwrap();
    let w = WorkerProcess::start_with(&[&base], &[], |c| {
        c.env("PATH", empty.path());
    });
    let n = unique("never-runs");
    bazel().package("gbinfra", &genrule("i", &format!("echo {n} > $@")), &[]);
    let r = build(&base, &["--remote_retries=0"], &["//gbinfra:i"]);
    assert!(!r.success, "the build should fail:\n{}", r.output);
    assert!(
        r.output.contains("Remote Execution Failure") && r.output.contains("Failed Precondition"),
        "expected the worker's status, not an exit code:\n{}\nworker:\n{}",
        r.output,
        w.log()
    );
    assert!(
        r.output.contains("qemu"),
        "the status should name the missing program:\n{}",
        r.output
    );
    assert!(r.output.contains("(Exit 34)"), "{}", r.output);
}

/// Bazel 4 sets action timeouts only on tests, which need rules fetched from the network:
/// this action is sent by a small REAPI client instead.
#[test]
fn an_expired_action_timeout_stops_the_guest_and_keeps_its_output() {
    let _serial = serial();
    let base = test_base();
    let w = WorkerProcess::start(&[&base], &[]);
    let n = unique("started");
    let t = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, stdout) = rt.block_on(client::run_with_timeout(
        &farm().url,
        &base,
        &format!("echo {n}; sleep 300"),
        Duration::from_secs(6),
    ));
    let elapsed = t.elapsed();
    assert_eq!(
        status.code,
        tonic::Code::DeadlineExceeded as i32,
        "{status:?}\nworker:\n{}",
        w.log()
    );
    assert!(
        elapsed < Duration::from_secs(90),
        "the timeout was not honoured: {elapsed:?}\nworker:\n{}",
        w.log()
    );
    // What the command printed before it was stopped comes back.
    assert_eq!(stdout.trim(), n);
    let start = Instant::now();
    while !w.qemus().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the timed-out guest is still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Just enough of a REAPI client to send one action with a timeout.
mod client {
    use std::time::Duration;

    use futures::StreamExt;
    use prost::Message;
    use reapi::proto::google::rpc::Status;
    use reapi::proto::re::content_addressable_storage_client::ContentAddressableStorageClient;
    use reapi::proto::re::execution_client::ExecutionClient;
    use reapi::proto::re::{
        batch_update_blobs_request, command, platform, Action, BatchReadBlobsRequest,
        BatchUpdateBlobsRequest, Command, Digest, Directory, ExecuteRequest, ExecuteResponse,
        Platform,
    };
    use sha2::Digest as _;

    fn digest(data: &[u8]) -> Digest {
        Digest {
            hash: format!("{:x}", sha2::Sha256::digest(data)),
            size_bytes: data.len() as i64,
        }
    }

    /// Runs `sh -c script` on `base` with `timeout`; the final status and stdout.
    #[allow(deprecated)]
    pub async fn run_with_timeout(
        url: &str,
        base: &str,
        script: &str,
        timeout: Duration,
    ) -> (Status, String) {
        let channel = tonic::transport::Channel::from_shared(url.replace("grpc://", "http://"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut cas = ContentAddressableStorageClient::new(channel.clone());
        let mut exec = ExecutionClient::new(channel);
        let platform = Platform {
            properties: vec![platform::Property {
                name: "guestbox-base".into(),
                value: base.into(),
            }],
        };
        let command = Command {
            arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
            environment_variables: vec![command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            platform: Some(platform.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        let root = Directory::default().encode_to_vec();
        let action = Action {
            command_digest: Some(digest(&command)),
            input_root_digest: Some(digest(&root)),
            timeout: Some(prost_types::Duration {
                seconds: timeout.as_secs() as i64,
                nanos: 0,
            }),
            do_not_cache: true,
            platform: Some(platform),
            ..Default::default()
        }
        .encode_to_vec();
        let requests = [&command, &root, &action]
            .into_iter()
            .map(|data| batch_update_blobs_request::Request {
                digest: Some(digest(data)),
                data: data.clone(),
                ..Default::default()
            })
            .collect();
        cas.batch_update_blobs(BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut ops = exec
            .execute(ExecuteRequest {
                skip_cache_lookup: true,
                action_digest: Some(digest(&action)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(op) = ops.next().await {
            let op = op.unwrap();
            if !op.done {
                continue;
            }
            use reapi::proto::google::longrunning::operation::Result as R;
            let Some(R::Response(any)) = op.result else {
                panic!("the operation ended without a response: {:?}", op.result);
            };
            let resp = ExecuteResponse::decode(any.value.as_slice()).unwrap();
            let stdout = match resp.result.and_then(|r| r.stdout_digest) {
                Some(d) if d.size_bytes > 0 => {
                    let mut r = cas
                        .batch_read_blobs(BatchReadBlobsRequest {
                            digests: vec![d],
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    String::from_utf8_lossy(&r.responses.pop().unwrap().data).into_owned()
                }
                _ => String::new(),
            };
            return (resp.status.unwrap_or_default(), stdout);
        }
        panic!("the operation stream ended before the operation was done");
    }
}

#[test]
fn bad_worker_arguments_are_refused_before_joining() {
    let o = guestbox()
        .args([
            "worker",
            "--reapi",
            "grpc://127.0.0.1:1",
            "--base",
            "no-such-base-here",
        ])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no-such-base-here"), "{err}");
    let base = test_base();
    for (url, why) in [("http//x", "scheme"), ("grpcs://127.0.0.1:5", "TLS")] {
        let o = guestbox()
            .args(["worker", "--reapi", url, "--base", &base])
            .output()
            .unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains(why), "{url}: {err}");
    }
    let o = guestbox()
        .args([
            "worker",
            "--reapi",
            "grpc://127.0.0.1:1",
            "--base",
            &base,
            "--jobs",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
}
