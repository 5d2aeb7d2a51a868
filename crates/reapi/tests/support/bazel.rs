//! One Bazel (Debian's bazel-bootstrap 4.2.3) server and workspace shared by the tests of
//! a binary: each test writes its own package and builds it remotely. Bazel runs one
//! command at a time per output base anyway; tests hold [`Bazel::lock`] across a sequence
//! of builds so that one test's `clean` cannot pull outputs from under another.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::farm::{register_exit_hook, target_tmp, CLEANUP};

pub struct Bazel {
    pub workspace: PathBuf,
    output_user_root: PathBuf,
    output_base: PathBuf,
    // Async: tests hold it across awaits (each test has its own runtime; tokio's
    // mutex works across runtimes).
    lock: tokio::sync::Mutex<()>,
}

/// What one Bazel command did.
pub struct BazelRun {
    pub success: bool,
    pub code: Option<i32>,
    pub output: String,
    pub elapsed: Duration,
}

static BAZEL: OnceLock<Bazel> = OnceLock::new();

/// The longest one Bazel command may take here (they take seconds).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(150);

pub fn bazel() -> &'static Bazel {
    BAZEL.get_or_init(|| {
        register_exit_hook();
        let root = target_tmp().join("reapi-bazel");
        // Output bases of test binaries killed before their exit hook ran.
        super::farm::remove_stale(&root, "run-");
        let mine = root.join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&mine);
        let workspace = mine.join("ws");
        std::fs::create_dir_all(&workspace).expect("create the Bazel workspace");
        std::fs::write(
            workspace.join("WORKSPACE"),
            "workspace(name = \"reapi_tests\")\n",
        )
        .expect("write WORKSPACE");
        let b = Bazel {
            workspace,
            // Shared by runs: Bazel unpacks its install base there once.
            output_user_root: root.join("user-root"),
            output_base: mine.join("output-base"),
            lock: tokio::sync::Mutex::new(()),
        };
        if let Ok(mut c) = CLEANUP.lock() {
            let mut shutdown = vec!["bazel".to_string()];
            shutdown.extend(b.startup_options());
            shutdown.push("shutdown".into());
            c.commands.push(shutdown);
            c.dirs.push(mine);
        }
        b
    })
}

impl Bazel {
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    fn startup_options(&self) -> Vec<String> {
        vec![
            // The system rc stays: Debian's sets the install base of its packaged Bazel.
            "--nohome_rc".into(),
            format!("--output_user_root={}", self.output_user_root.display()),
            format!("--output_base={}", self.output_base.display()),
            // The exit hook shuts the server down; this ends it if the hook never ran.
            "--max_idle_secs=120".into(),
        ]
    }

    /// Writes package `name` (replacing an old one): its BUILD file and other files,
    /// `(path, contents, executable)`.
    pub fn package(&self, name: &str, build: &str, files: &[(&str, &[u8], bool)]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.workspace.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create package");
        std::fs::write(dir.join("BUILD"), build).expect("write BUILD");
        for (path, data, exec) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().expect("a file has a parent")).expect("mkdir");
            std::fs::write(&p, data).expect("write package file");
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        dir
    }

    /// Runs one Bazel command in the workspace (blocking), interrupted (as by Ctrl-C)
    /// after [`COMMAND_LIMIT`]: a test whose action never runs fails instead of hanging.
    pub fn run(&self, command: &str, args: &[String]) -> BazelRun {
        let start = Instant::now();
        let logs = tempfile::tempdir().expect("tempdir for Bazel's output");
        let out_path = logs.path().join("out");
        let out = std::fs::File::create(&out_path).expect("create output file");
        let mut child = Command::new("bazel")
            .args(self.startup_options())
            .arg(command)
            .args(args)
            .current_dir(&self.workspace)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("run bazel (install bazel-bootstrap: scripts/setup --with-tests)");
        let mut interrupted = false;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for bazel") {
                break st;
            }
            let e = start.elapsed();
            if e > COMMAND_LIMIT && !interrupted {
                // SAFETY: a signal to the Bazel client this function started.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                interrupted = true;
            }
            if e > COMMAND_LIMIT + Duration::from_secs(30) {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut output = std::fs::read_to_string(&out_path).unwrap_or_default();
        if interrupted {
            output.push_str(&format!(
                "\n(the test interrupted Bazel after {COMMAND_LIMIT:?})\n"
            ));
        }
        BazelRun {
            success: status.success() && !interrupted,
            code: status.code(),
            output,
            elapsed: start.elapsed(),
        }
    }

    /// `bazel COMMAND TARGETS` (build, test) executed remotely on the farm at `url`, with `properties`
    /// as the actions' default platform.
    pub fn build_remote(
        &self,
        command: &str,
        url: &str,
        properties: &[(&str, &str)],
        extra: &[&str],
        targets: &[&str],
    ) -> BazelRun {
        let mut args: Vec<String> = vec![
            format!("--remote_executor={url}"),
            "--remote_instance_name=".into(),
            "--spawn_strategy=remote".into(),
            "--genrule_strategy=remote".into(),
            "--remote_timeout=120".into(),
            "--color=no".into(),
            "--curses=no".into(),
            "--noshow_progress".into(),
            "--jobs=4".into(),
        ];
        for (k, v) in properties {
            args.push(format!("--remote_default_exec_properties={k}={v}"));
        }
        args.extend(extra.iter().map(|t| t.to_string()));
        args.push("--".into());
        args.extend(targets.iter().map(|t| t.to_string()));
        self.run(command, &args)
    }

    /// A file under `bazel-bin` of the last build.
    pub fn bin(&self, rel: &str) -> PathBuf {
        self.workspace.join("bazel-bin").join(rel)
    }

    pub fn clean(&self) {
        let r = self.run("clean", &[]);
        assert!(r.success, "bazel clean failed:\n{}", r.output);
    }

    pub fn workspace(&self) -> &Path {
        &self.workspace
    }
}
