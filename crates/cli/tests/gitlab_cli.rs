//! `guestbox gitlab` driven by a stand-in for gitlab-runner (which is not installable
//! here): [`RunnerStandIn`] replays the custom executor's documented call sequence of one
//! job through the real binary — config_exec, prepare_exec, run_exec once per stage
//! (prepare_script, get_sources, restore_cache, download_artifacts, step_script,
//! after_script, archive_cache / archive_cache_on_failure, upload_artifacts_on_success /
//! _on_failure, cleanup_file_variables), cleanup_exec — with the runner's environment
//! (CUSTOM_ENV_* job variables, BUILD_FAILURE_EXIT_CODE, SYSTEM_FAILURE_EXIT_CODE) and
//! its way of cancelling (SIGTERM to run_exec, then cleanup_exec).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{descendants, guestbox, live_cmdline, test_home, text};

/// Distinct from GitLab's own values, so that the test sees the driver use the variables.
const BUILD_FAILURE: i32 = 41;
const SYSTEM_FAILURE: i32 = 42;
/// The project's path under the builds directory, as GitLab lays it out.
const PROJECT: &str = "group/project";

/// Makes sure the default base exists (cheap when it does).
fn default_base_ready() {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

/// A stand-in for gitlab-runner running one job with the custom executor.
struct RunnerStandIn {
    runner_id: String,
    job_id: String,
    vars: Vec<(String, String)>,
    /// Where the runner writes each stage's script.
    scripts: tempfile::TempDir,
    /// What config_exec said (the runner calls it first).
    config: serde_json::Value,
}

/// One run_exec call.
struct StageRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// When each stdout line arrived, from the start of the call.
    line_times: Vec<(String, Duration)>,
    elapsed: Duration,
}

impl RunnerStandIn {
    fn new(job_vars: &[(&str, &str)]) -> RunnerStandIn {
        let mut r = Self::unconfigured(job_vars);
        let o = r.driver(&["config"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "config_exec: {}", text(&o).1);
        r.config = serde_json::from_slice(&o.stdout).expect("config_exec prints JSON");
        r
    }

    fn unconfigured(job_vars: &[(&str, &str)]) -> RunnerStandIn {
        static N: AtomicU32 = AtomicU32::new(0);
        RunnerStandIn {
            runner_id: "17".into(),
            job_id: format!("{}{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)),
            vars: job_vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            scripts: tempfile::tempdir().unwrap(),
            config: serde_json::Value::Null,
        }
    }

    /// CI_PROJECT_DIR: the project under the builds directory config_exec gave.
    fn project_dir(&self) -> String {
        let builds = self.config["builds_dir"].as_str().unwrap_or("/builds");
        format!("{builds}/{PROJECT}")
    }

    fn cache_dir(&self) -> String {
        self.config["cache_dir"]
            .as_str()
            .unwrap_or("/cache")
            .to_string()
    }

    fn key(&self) -> String {
        format!("runner-{}-job-{}", self.runner_id, self.job_id)
    }

    fn job_dir(&self) -> PathBuf {
        test_home().join("gitlab/jobs").join(self.key())
    }

    /// `guestbox gitlab ARGS` with the environment the runner gives every stage.
    fn driver(&self, args: &[&str]) -> Command {
        let mut c = guestbox();
        c.arg("gitlab").args(args);
        c.env("BUILD_FAILURE_EXIT_CODE", BUILD_FAILURE.to_string())
            .env("SYSTEM_FAILURE_EXIT_CODE", SYSTEM_FAILURE.to_string())
            .env("CUSTOM_ENV_CI_RUNNER_ID", &self.runner_id)
            .env("CUSTOM_ENV_CI_JOB_ID", &self.job_id)
            .env("CUSTOM_ENV_CI_JOB_TIMEOUT", "600")
            .env("CUSTOM_ENV_CI_PROJECT_DIR", self.project_dir());
        for (k, v) in &self.vars {
            c.env(format!("CUSTOM_ENV_{k}"), v);
        }
        c
    }

    fn prepare(&self, args: &[&str]) -> Output {
        let mut a = vec!["prepare"];
        a.extend_from_slice(args);
        self.driver(&a).output().unwrap()
    }

    /// Writes the stage's script as the runner does: its variables exported, then the body.
    fn script(&self, stage: &str, body: &str) -> PathBuf {
        let path = self.scripts.path().join(format!("script-{stage}"));
        std::fs::write(
            &path,
            format!(
                "#!/usr/bin/env bash\nset -eo pipefail\nexport CI_JOB_ID={}\nexport CI_PROJECT_DIR='{}'\n{body}\n",
                self.job_id,
                self.project_dir()
            ),
        )
        .unwrap();
        path
    }

    fn start_stage(&self, stage: &str, body: &str) -> Child {
        let script = self.script(stage, body);
        self.driver(&["run", script.to_str().unwrap(), stage])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// run_exec for one stage, reading its output as it comes.
    fn stage(&self, stage: &str, body: &str) -> StageRun {
        let start = Instant::now();
        let mut child = self.start_stage(stage, body);
        let mut err = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut out = child.stdout.take().unwrap();
        let (mut stdout, mut line_times, mut buf) = (String::new(), Vec::new(), [0u8; 4096]);
        let mut pending = String::new();
        loop {
            let n = out.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            let chunk = String::from_utf8_lossy(&buf[..n]);
            stdout.push_str(&chunk);
            pending.push_str(&chunk);
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                line_times.push((line.trim_end().to_string(), start.elapsed()));
            }
        }
        let status = child.wait().unwrap();
        StageRun {
            code: status.code(),
            stdout,
            stderr: err_reader.join().unwrap(),
            line_times,
            elapsed: start.elapsed(),
        }
    }

    fn cleanup(&self) -> Output {
        self.driver(&["cleanup"]).output().unwrap()
    }

    /// Runs the job's stages as the runner orders them: the build stages stop at the first
    /// failure, after_script always runs, then the cache and artifacts stages of the
    /// outcome. Returns each stage's run.
    fn job(&self, steps: &[(&str, &str)]) -> Vec<(String, StageRun)> {
        let body = |name: &str| {
            steps
                .iter()
                .find(|(s, _)| *s == name)
                .map_or("true".to_string(), |(_, b)| b.to_string())
        };
        let mut runs = Vec::new();
        let mut failed = false;
        for stage in [
            "prepare_script",
            "get_sources",
            "restore_cache",
            "download_artifacts",
            "step_script",
        ] {
            let r = self.stage(stage, &body(stage));
            failed = r.code != Some(0);
            runs.push((stage.to_string(), r));
            if failed {
                break;
            }
        }
        let tail: &[&str] = if failed {
            &[
                "after_script",
                "archive_cache_on_failure",
                "upload_artifacts_on_failure",
                "cleanup_file_variables",
            ]
        } else {
            &[
                "after_script",
                "archive_cache",
                "upload_artifacts_on_success",
                "cleanup_file_variables",
            ]
        };
        for stage in tail {
            let r = self.stage(stage, &body(stage));
            runs.push((stage.to_string(), r));
        }
        runs
    }

    /// The supervisor's pid and its QEMUs, while the job's guest lives.
    fn guest_processes(&self) -> (i32, Vec<i32>) {
        let pid: i32 = std::fs::read_to_string(self.job_dir().join("supervisor.pid"))
            .expect("the job has a supervisor")
            .trim()
            .parse()
            .unwrap();
        let qemus: Vec<i32> = descendants(pid)
            .into_iter()
            .filter(|p| live_cmdline(*p).is_some_and(|c| c.contains("qemu-system")))
            .collect();
        assert_eq!(qemus.len(), 2, "the job's guest and controller");
        (pid, qemus)
    }
}

/// A test that failed half-way still ends its job, as the runner would (cleanup_exec
/// runs even after a failed stage): no guest outlives the test.
impl Drop for RunnerStandIn {
    fn drop(&mut self) {
        if self.job_dir().exists() {
            let _ = self.cleanup();
        }
    }
}

fn stage<'a>(runs: &'a [(String, StageRun)], name: &str) -> &'a StageRun {
    &runs
        .iter()
        .find(|(s, _)| s == name)
        .unwrap_or_else(|| panic!("stage {name} did not run"))
        .1
}

/// Fails unless every pid is gone within `limit`.
fn assert_all_gone(pids: &[i32], limit: Duration, what: &str) {
    let start = Instant::now();
    let alive = || -> Vec<i32> {
        pids.iter()
            .copied()
            .filter(|p| live_cmdline(*p).is_some())
            .collect()
    };
    while !alive().is_empty() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        alive().is_empty(),
        "{what}: processes {:?} are still running",
        alive()
    );
}

#[test]
fn stand_in_runner_runs_every_stage_of_a_job_in_one_guest() {
    default_base_ready();
    let runner = RunnerStandIn::new(&[]);
    let config = &runner.config;
    // Host directories, shared into the guest at the same paths.
    assert_eq!(
        config["builds_dir"].as_str(),
        runner.job_dir().join("builds").to_str()
    );
    assert_eq!(
        config["cache_dir"].as_str(),
        test_home().join("gitlab/cache").to_str()
    );
    assert_eq!(config["builds_dir_is_shared"], false);
    assert_eq!(config["driver"]["name"], "guestbox");
    assert!(config["driver"]["version"].is_string());
    assert_eq!(config["job_env"]["GUESTBOX_GITLAB_JOB"], runner.key());

    // No GUESTBOX_BASE, no image: the runner's default from prepare_args.
    let o = runner.prepare(&["--base", "default"]);
    assert_eq!(o.status.code(), Some(0), "prepare_exec: {}", text(&o).1);
    assert!(text(&o).0.contains("ready"), "{}", text(&o).0);
    let (supervisor, qemus) = runner.guest_processes();

    let cache_file = format!("{}/{}.txt", runner.cache_dir(), runner.job_id);
    let step_script = format!(
        "cd \"$CI_PROJECT_DIR\"; echo first; sleep 3; cat src.txt; \
         echo guest-disk-state > /tmp/state; echo \"cached in $(uname -n)\" > '{cache_file}'; \
         echo second"
    );
    let archive_cache = format!("cat '{cache_file}'");
    let runs = runner.job(&[
        ("prepare_script", "echo \"Running on $(uname -n)\""),
        // On the host (it would use git and the network): the sources land in the
        // builds directory, which the guest sees.
        (
            "get_sources",
            "mkdir -p \"$CI_PROJECT_DIR\" && echo \"sources from $(uname -n)\" > \"$CI_PROJECT_DIR/src.txt\"",
        ),
        ("step_script", &step_script),
        ("after_script", "cat /tmp/state"),
        // On the host: what the guest left in the cache directory is there.
        ("archive_cache", &archive_cache),
    ]);
    let _ = std::fs::remove_file(&cache_file);
    for (name, r) in &runs {
        assert_eq!(r.code, Some(0), "{name}: {}\n{}", r.stdout, r.stderr);
    }
    assert!(
        stage(&runs, "prepare_script")
            .stdout
            .contains("Running on guestbox-guest"),
        "not in the guest: {}",
        stage(&runs, "prepare_script").stdout
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let step = stage(&runs, "step_script");
    assert!(
        step.stdout
            .contains(&format!("first\nsources from {}\nsecond", host.trim())),
        "{}",
        step.stdout
    );
    assert_eq!(
        stage(&runs, "archive_cache").stdout.trim(),
        "cached in guestbox-guest"
    );
    // Live: the first line came seconds before the stage ended.
    let first = step
        .line_times
        .iter()
        .find(|(l, _)| l == "first")
        .expect("a first line")
        .1;
    assert!(
        step.elapsed - first >= Duration::from_secs(2),
        "output came at the end: first line at {first:?}, end at {:?}",
        step.elapsed
    );
    // One guest across the stages (separate processes): its disk kept the state.
    assert_eq!(
        stage(&runs, "after_script").stdout.trim(),
        "guest-disk-state"
    );

    let o = runner.cleanup();
    assert_eq!(o.status.code(), Some(0), "cleanup_exec: {}", text(&o).1);
    let mut all = qemus.clone();
    all.push(supervisor);
    assert_all_gone(&all, Duration::from_secs(5), "after cleanup");
    assert!(!runner.job_dir().exists(), "the job's directory was left");
}

#[test]
fn a_failing_step_is_a_build_failure_and_after_script_still_runs() {
    default_base_ready();
    // GUESTBOX_BASE beats the image, which names no base (a docker image).
    let runner = RunnerStandIn::new(&[("GUESTBOX_BASE", "default"), ("CI_JOB_IMAGE", "ruby:3.3")]);
    let o = runner.prepare(&[]);
    assert_eq!(o.status.code(), Some(0), "prepare_exec: {}", text(&o).1);
    let runs = runner.job(&[
        (
            "step_script",
            "echo before > /tmp/state; echo failing >&2; exit 7",
        ),
        ("after_script", "cat /tmp/state"),
        ("upload_artifacts_on_failure", "echo uploading"),
    ]);
    let step = stage(&runs, "step_script");
    assert_eq!(step.code, Some(BUILD_FAILURE), "{}", step.stderr);
    assert!(step.stderr.contains("failing"), "{}", step.stderr);
    assert!(step.stderr.contains("exited with 7"), "{}", step.stderr);
    assert_eq!(stage(&runs, "after_script").code, Some(0));
    assert_eq!(stage(&runs, "after_script").stdout.trim(), "before");
    assert_eq!(
        stage(&runs, "upload_artifacts_on_failure").stdout.trim(),
        "uploading"
    );
    assert!(runs.iter().all(|(s, _)| s != "archive_cache"));
    let o = runner.cleanup();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert!(!runner.job_dir().exists());
}

#[test]
fn a_cancelled_job_leaves_no_process() {
    default_base_ready();
    let runner = RunnerStandIn::new(&[("GUESTBOX_BASE", "default")]);
    let o = runner.prepare(&[]);
    assert_eq!(o.status.code(), Some(0), "prepare_exec: {}", text(&o).1);
    let (supervisor, qemus) = runner.guest_processes();
    let mut run = runner.start_stage("step_script", "echo started; sleep 300");
    let mut out = run.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("started") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "run_exec ended before the script started");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The runner cancels a job with SIGTERM to run_exec, then calls cleanup_exec.
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = run.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "run_exec took {:?} to stop",
        t.elapsed()
    );
    assert_ne!(status.code(), Some(0));
    let t = Instant::now();
    let o = runner.cleanup();
    // The guest went with the cancelled stage: cleanup has nothing to wait for.
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "cleanup took {:?}",
        t.elapsed()
    );
    assert_eq!(o.status.code(), Some(0), "cleanup_exec: {}", text(&o).1);
    let mut all = qemus.clone();
    all.push(supervisor);
    assert_all_gone(&all, Duration::from_secs(5), "after the cancelled job");
    assert!(!runner.job_dir().exists(), "the job's directory was left");
}

#[test]
fn an_idle_guest_goes_away_by_itself() {
    default_base_ready();
    let runner = RunnerStandIn::new(&[("GUESTBOX_BASE", "default")]);
    // The runner died after prepare: no stage, no cleanup ever comes.
    let o = runner.prepare(&["--idle-timeout", "3s"]);
    assert_eq!(o.status.code(), Some(0), "prepare_exec: {}", text(&o).1);
    let (supervisor, qemus) = runner.guest_processes();
    let mut all = qemus.clone();
    all.push(supervisor);
    assert_all_gone(&all, Duration::from_secs(30), "after the idle timeout");
    assert!(!runner.job_dir().exists(), "the job's directory was left");
    // A late stage is a system failure that says why.
    let r = runner.stage("step_script", "true");
    assert_eq!(r.code, Some(SYSTEM_FAILURE), "{}", r.stderr);
    assert!(r.stderr.contains("has no guest"), "{}", r.stderr);
    let o = runner.cleanup();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

#[test]
fn a_job_with_the_wrong_base_or_no_job_id_fails_clearly() {
    // An image that is no base, without GUESTBOX_BASE: the job's fault.
    let runner = RunnerStandIn::new(&[("CI_JOB_IMAGE", "ruby:3.3")]);
    let o = runner.prepare(&["--base", "default"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(BUILD_FAILURE), "{err}");
    assert!(err.contains("ruby:3.3") && err.contains("image"), "{err}");
    assert!(!runner.job_dir().exists());
    // Nothing names a base.
    let o = RunnerStandIn::new(&[]).prepare(&[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(BUILD_FAILURE), "{err}");
    assert!(err.contains("GUESTBOX_BASE"), "{err}");
    // Not run by a runner: a system failure naming the variable.
    let o = RunnerStandIn::unconfigured(&[])
        .driver(&["config"])
        .env_remove("CUSTOM_ENV_CI_JOB_ID")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(SYSTEM_FAILURE), "{err}");
    assert!(err.contains("CUSTOM_ENV_CI_JOB_ID"), "{err}");
    // A stage for a job that was never prepared.
    let runner = RunnerStandIn::new(&[]);
    let r = runner.stage("step_script", "true");
    assert_eq!(r.code, Some(SYSTEM_FAILURE), "{}", r.stderr);
    assert!(Path::new(&runner.scripts.path()).exists());
}
