//! End to end: Bazel (Debian's bazel-bootstrap 4.2.3) builds remotely through a private
//! BuildGrid 0.4.4 farm whose only bots are `reapi::Worker`s running a host executor
//! double. Each test advertises its own unique base, so tests sharing the farm never get
//! each other's work.

mod support;

use std::time::{Duration, Instant};

use support::bazel::BazelRun;
use support::{
    bazel, blocking, config, farm, init_logs, start_worker, unique, Behaviour, HostExecutorDouble,
    RunningWorker,
};

async fn worker(base: &str, behaviour: Behaviour) -> RunningWorker {
    worker_with(
        config(&farm().url, &[base], std::path::Path::new("")),
        behaviour,
    )
    .await
}

async fn worker_with(c: reapi::WorkerConfig, behaviour: Behaviour) -> RunningWorker {
    init_logs();
    start_worker(c, HostExecutorDouble::new(behaviour)).await
}

/// `bazel build` (or test) of `targets` with `guestbox-base=base`, off the runtime.
async fn remote(command: &str, base: &str, extra: &[&str], targets: &[&str]) -> BazelRun {
    let url = farm().url.clone();
    let base = base.to_string();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    let command = command.to_string();
    blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        bazel().build_remote(
            &command,
            &url,
            &[("guestbox-base", &base), ("OSFamily", "Linux")],
            &extra,
            &targets,
        )
    })
    .await
}

fn genrule(name: &str, cmd: &str) -> String {
    format!("genrule(name = \"{name}\", outs = [\"{name}.txt\"], cmd = \"{cmd}\")\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genrule_output_comes_back() {
    let base = unique("base");
    let w = worker(&base, Behaviour::Run).await;
    let bz = bazel();
    let _l = bz.lock().await;
    let first = unique("hello");
    let second = unique("again");
    bz.package(
        "ok",
        &format!(
            "{}{}",
            genrule("first", &format!("echo {first} > $@")),
            genrule("second", &format!("echo {second} > $@"))
        ),
        &[],
    );
    let r = remote("build", &base, &[], &["//ok:first"]).await;
    assert!(r.success, "the build failed:\n{}", r.output);
    eprintln!("first remote genrule, Bazel command: {:?}", r.elapsed);
    assert_eq!(
        std::fs::read_to_string(bz.bin("ok/first.txt"))
            .expect("output")
            .trim(),
        first
    );
    // The same again with Bazel's server and the worker warm: what one action costs.
    let t = Instant::now();
    let r = remote("build", &base, &[], &["//ok:second"]).await;
    eprintln!("one remote genrule end to end (warm): {:?}", t.elapsed());
    assert!(r.success, "the build failed:\n{}", r.output);
    assert_eq!(
        std::fs::read_to_string(bz.bin("ok/second.txt"))
            .expect("output")
            .trim(),
        second
    );
    let s = w.snapshot();
    assert_eq!((s.leases_accepted, s.leases_succeeded), (2, 2), "{s:?}");
    assert_eq!(w.executor.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_action_fails_the_build_with_its_exit_code() {
    let base = unique("base");
    let w = worker(&base, Behaviour::Run).await;
    let bz = bazel();
    let _l = bz.lock().await;
    let n = unique("n");
    bz.package(
        "fails",
        &genrule("bad", &format!("echo {n} >&2; exit 3")),
        &[],
    );
    let r = remote("build", &base, &[], &["//fails:bad"]).await;
    assert!(!r.success, "the build should fail:\n{}", r.output);
    assert!(
        r.output.contains("(Exit 3)"),
        "Bazel should show exit code 3:\n{}",
        r.output
    );
    // stderr came back through the CAS.
    assert!(
        r.output.contains(&n),
        "Bazel should show the action's stderr:\n{}",
        r.output
    );
    let s = w.snapshot();
    // The command failed, not the lease.
    assert_eq!(
        (s.leases_accepted, s.leases_succeeded, s.leases_failed),
        (1, 1, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_identical_build_is_an_action_cache_hit() {
    let base = unique("base");
    let w = worker(&base, Behaviour::Run).await;
    let bz = bazel();
    let _l = bz.lock().await;
    let n = unique("cached");
    bz.package("cache", &genrule("c", &format!("echo {n} > $@")), &[]);
    let r = remote("build", &base, &[], &["//cache:c"]).await;
    assert!(r.success, "the build failed:\n{}", r.output);
    assert_eq!(w.snapshot().leases_accepted, 1);
    // Without its local outputs and action cache, Bazel must ask the farm's.
    bz.clean();
    let r = remote("build", &base, &[], &["//cache:c"]).await;
    assert!(r.success, "the second build failed:\n{}", r.output);
    assert!(
        r.output.contains("remote cache hit"),
        "expected a remote cache hit:\n{}",
        r.output
    );
    assert_eq!(
        std::fs::read_to_string(bz.bin("cache/c.txt"))
            .expect("output")
            .trim(),
        n
    );
    assert_eq!(
        w.snapshot().leases_accepted,
        1,
        "the cached action must not run again"
    );
    assert_eq!(w.executor.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_goes_only_to_the_worker_with_the_base() {
    let wanted = unique("base");
    let other = unique("base");
    // A short poll, so that its CreateBotSession returns (BuildGrid holds it open for
    // most of the poll when there is no work) and the test knows it is in the farm.
    let mut c = config(&farm().url, &[&other], std::path::Path::new(""));
    c.poll_timeout = Duration::from_secs(5);
    let mut wrong = worker_with(c, Behaviour::Run).await;
    let right = worker(&wanted, Behaviour::Run).await;
    wrong.wait_joined().await;
    let bz = bazel();
    let _l = bz.lock().await;
    let n = unique("routed");
    bz.package("routed", &genrule("r", &format!("echo {n} > $@")), &[]);
    let r = remote("build", &wanted, &[], &["//routed:r"]).await;
    assert!(r.success, "the build failed:\n{}", r.output);
    assert_eq!(right.snapshot().leases_accepted, 1);
    let ws = wrong.snapshot();
    assert_eq!(
        ws.leases_accepted, 0,
        "a worker without the base got the work: {ws:?}"
    );
    assert!(ws.sessions_created >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_infrastructure_failure_is_a_failed_status_not_an_exit_code() {
    let base = unique("base");
    let msg = unique("the guest did not revive (test double)");
    let w = worker(&base, Behaviour::InfraFailure(msg.clone())).await;
    let bz = bazel();
    let _l = bz.lock().await;
    let n = unique("infra");
    bz.package("infra", &genrule("i", &format!("echo {n} > $@")), &[]);
    // No client-side retries of the failed execution: one answer to look at.
    let r = remote("build", &base, &["--remote_retries=0"], &["//infra:i"]).await;
    assert!(!r.success, "the build should fail:\n{}", r.output);
    // Bazel reports a non-OK ExecuteResponse status as a remote execution failure (its own
    // exit code 34, REMOTE_ERROR), with the status code and message.
    assert!(
        r.output.contains("Remote Execution Failure")
            && r.output.contains(&format!("Unavailable: {msg}")),
        "Bazel should show a remote execution failure with the worker's status:\n{}",
        r.output
    );
    assert!(
        r.output.contains("(Exit 34)"),
        "expected Bazel's remote-error code, no action exit code:\n{}",
        r.output
    );
    let s = w.snapshot();
    assert!(s.leases_failed >= 1 && s.leases_succeeded == 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_running_lease() {
    let base = unique("base");
    let w = worker(&base, Behaviour::Run).await;
    let bz = bazel();
    let _l = bz.lock().await;
    let n = unique("drained");
    bz.package(
        "drain",
        &genrule("d", &format!("sleep 3; echo {n} > $@")),
        &[],
    );
    let b = base.clone();
    let build = tokio::spawn(async move { remote("build", &b, &[], &["//drain:d"]).await });
    tokio::time::timeout(Duration::from_secs(120), w.executor.wait_started(1))
        .await
        .expect("the action started");
    let executor = w.executor.clone();
    let t = Instant::now();
    // What the CLI does on SIGTERM.
    let s = w.stop().await.expect("the worker drained cleanly");
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "run returned before the action ended"
    );
    assert_eq!(
        (s.leases_accepted, s.leases_succeeded, s.running),
        (1, 1, 0),
        "{s:?}"
    );
    let r = build.await.expect("build task");
    assert!(r.success, "the drained lease's build failed:\n{}", r.output);
    assert_eq!(
        std::fs::read_to_string(bz.bin("drain/d.txt"))
            .expect("output")
            .trim(),
        n
    );
    assert_eq!(executor.calls(), 1);
}

/// Inputs and outputs above the batch limit go through ByteStream; executable bits,
/// nested directories and output directories (Tree messages) survive the round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_inputs_and_outputs_and_output_directories_round_trip() {
    let base = unique("base");
    let mut c = config(&farm().url, &[&base], std::path::Path::new(""));
    c.batch_limit = 1024;
    let w = worker_with(c, Behaviour::Run).await;
    let bz = bazel();
    let _l = bz.lock().await;
    let n = unique("big");
    // 200 KiB of varied bytes, unique to this run so the CAS does not have it yet.
    let mut data = Vec::with_capacity(200 * 1024);
    let mut x: u32 = n
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    while data.len() < 200 * 1024 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let tool = format!(
        "#!/bin/bash\nset -eu\ncp \"$1\" \"$2\"\nhead -c 300000 /dev/zero | tr '\\\\0' x > \"$3\"\necho {n} >> \"$3\"\n"
    );
    let build = r#"
load(":tree.bzl", "tree")
genrule(
    name = "big",
    srcs = ["data.bin", "tool.sh", "nested/deeper/note.txt"],
    outs = ["copy.bin", "big.out"],
    cmd = "$(location tool.sh) $(location data.bin) $(location copy.bin) $(location big.out) && test -s $(location nested/deeper/note.txt)",
)
tree(name = "dir")
"#;
    let bzl = r#"
def _impl(ctx):
    d = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [d],
        command = "mkdir -p {d}/sub/empty && echo a > {d}/a.sh && chmod +x {d}/a.sh && echo b > {d}/sub/b.txt".format(d = d.path),
    )
    return [DefaultInfo(files = depset([d]))]

tree = rule(implementation = _impl)
"#;
    bz.package(
        "bytes",
        build,
        &[
            ("data.bin", &data, false),
            ("tool.sh", tool.as_bytes(), true),
            ("nested/deeper/note.txt", n.as_bytes(), false),
            ("tree.bzl", bzl.as_bytes(), false),
        ],
    );
    let r = remote("build", &base, &[], &["//bytes:big", "//bytes:dir"]).await;
    assert!(r.success, "the build failed:\n{}", r.output);
    assert_eq!(std::fs::read(bz.bin("bytes/copy.bin")).expect("copy"), data);
    let big = std::fs::read_to_string(bz.bin("bytes/big.out")).expect("big");
    assert_eq!(big.len(), 300000 + n.len() + 1);
    assert!(big.ends_with(&format!("{n}\n")));
    use std::os::unix::fs::PermissionsExt;
    let a = bz.bin("bytes/dir/a.sh");
    assert_eq!(std::fs::read_to_string(&a).expect("a.sh"), "a\n");
    assert!(
        std::fs::metadata(&a).expect("a.sh").permissions().mode() & 0o100 != 0,
        "a.sh lost its executable bit"
    );
    assert_eq!(
        std::fs::read_to_string(bz.bin("bytes/dir/sub/b.txt")).expect("b.txt"),
        "b\n"
    );
    // (Bazel 4 does not recreate empty directories of a remote tree artifact; the
    // worker's Tree with them is checked in reapi_client.rs.)
    assert_eq!(w.snapshot().leases_succeeded, 2);
}
