//! `guestbox bench`: the speed and memory figures, measured in one go and printed as a
//! table of medians and ratios. Targets are checked here, not in timed tests.

mod transfer;

use std::path::Path;
use std::time::{Duration, Instant};

use guestbox::bootstrap::{bootstrap, BootstrapOptions};
use guestbox::host::programs::{self, Program};
use guestbox::host::Dirs;
use guestbox::images::GuestRecipe;
use guestbox::machine::accel::AccelChoice;
use guestbox::profile::Profile;
use guestbox::progress::Progress;
use guestbox::run::{run, Outcome, RunOptions, Session, SessionOptions, Streams, Volume};
use guestbox::store::{files, gc, Base, Store};
use guestbox::{Error, IoContext, Result};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub runs: usize,
    pub small_mib: u64,
    pub big_mib: u64,
    pub accel: AccelChoice,
    /// The sections to run; empty: all.
    pub only: Vec<Section>,
    /// Windows bases for [`Section::Windows`]: one, and optionally a larger one.
    pub windows_bases: Vec<String>,
}

impl BenchOptions {
    fn wants(&self, s: Section) -> bool {
        if self.only.is_empty() {
            // Not by default: the registry rows need Debian's docker-registry, the tree
            // rows a base of their own and minutes of emulated round trips, the Windows
            // rows bases only their owner can make (from Windows media).
            return match s {
                Section::Registry | Section::Tree => false,
                Section::Windows => !self.windows_bases.is_empty(),
                _ => true,
            };
        }
        self.only.contains(&s)
    }

    /// Whether any section needs the Debian base of `small_mib`.
    fn wants_debian(&self) -> bool {
        [
            Section::Revive,
            Section::Run,
            Section::Cold,
            Section::Write,
            Section::Registry,
            Section::Tree,
        ]
        .into_iter()
        .any(|s| self.wants(s))
    }
}

/// One row of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// A stable name, for `--json`.
    pub key: String,
    pub what: String,
    /// As printed.
    pub value: String,
    /// The measure as a number, where it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub unit: String,
    pub target: String,
}

impl Row {
    /// A measured number in `unit`.
    pub fn new(key: &str, what: &str, number: f64, unit: &str, target: &str) -> Row {
        let value = match unit {
            "s" | "CPU-s" => format!("{number:.3} {unit}"),
            "ms" => format!("{number:.1} ms"),
            "/min" => format!("{number:.0} /min"),
            "%" => format!("{number:.0}%"),
            "x" => format!("{number:.2}x"),
            _ => format!("{number:.2} {unit}"),
        };
        Row {
            key: key.into(),
            what: what.into(),
            value,
            number: Some(number),
            unit: unit.into(),
            target: target.into(),
        }
    }

    /// A row whose value is text (a split, a pair of figures).
    pub fn text(key: &str, what: &str, value: String, target: &str) -> Row {
        Row {
            key: key.into(),
            what: what.into(),
            value,
            number: None,
            unit: String::new(),
            target: target.into(),
        }
    }
}

/// A key from a row's words: `revive to running (1 pair)` → `revive_to_running_1_pair`.
fn slug(what: &str) -> String {
    let mut s = String::new();
    for c in what.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('_') && !s.is_empty() {
            s.push('_');
        }
    }
    s.trim_end_matches('_').to_string()
}

/// The sections of `guestbox bench`, each runnable alone (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Revive of one pair, of a big guest, of four at once; memory and CPU per revive.
    Revive,
    /// `run -- true` split by stage and process, runs per minute, an exec, a shared file.
    Run,
    /// Cold boot and a cold run, for comparison.
    Cold,
    /// Writes to a shared directory against the guest's own disk.
    Write,
    /// Push and pull of the base through a registry of its own on loopback, against curl
    /// moving the same blobs (not in the default set: it needs Debian's docker-registry).
    Registry,
    /// `find` + `stat` and `git status` over a 10 000-file tree, shared read-only against
    /// the guest's own disk.
    Tree,
    /// Revive of the Windows bases given with --windows-base (a 4 GiB one, the default
    /// of `bootstrap --profile windows`; a second, larger one for the RAM-size ratio).
    Windows,
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn base_with(
    dirs: &Dirs,
    memory_mib: u64,
    accel: AccelChoice,
    progress: &Progress,
) -> Result<Base> {
    base_with_packages(dirs, memory_mib, accel, &[], progress).await
}

async fn base_with_packages(
    dirs: &Dirs,
    memory_mib: u64,
    accel: AccelChoice,
    packages: &[&str],
    progress: &Progress,
) -> Result<Base> {
    let opts = BootstrapOptions {
        profile: Profile::Debian(GuestRecipe::new(
            packages.iter().map(|p| p.to_string()).collect(),
        )),
        name: None,
        memory_mib,
        cpus: 1,
        accel,
        timeout: Duration::from_secs(600),
    };
    bootstrap(dirs, &opts, progress).await
}

/// What `count` revives started together cost.
struct Revived {
    /// Wall time until every pair runs.
    wall: Duration,
    /// (private KiB, PSS KiB) of each guest QEMU while all run.
    memory: Vec<(u64, u64)>,
    /// CPU seconds per pair until it runs: guestbox with its tools (qemu-img), the guest's
    /// QEMU, the controller's QEMU.
    cpu: [f64; 3],
}

async fn revive_many(dirs: &Dirs, base: &Base, count: usize) -> Result<Revived> {
    revive_many_as(dirs, base, count, false, &[]).await
}

/// [`revive_many`], `unconfined`: without the QEMUs' sandbox and user change (to measure
/// what they cost), with `volumes` shared.
async fn revive_many_as(
    dirs: &Dirs,
    base: &Base,
    count: usize,
    unconfined: bool,
    volumes: &[Volume],
) -> Result<Revived> {
    let store = Store::new(dirs);
    let opts = SessionOptions {
        boot_timeout: Duration::from_secs(60),
        unconfined,
        volumes: volumes.to_vec(),
        ..SessionOptions::default()
    };
    let ours = own_cpu();
    let started = Instant::now();
    let revives = (0..count).map(|_| Session::revive(&store, base, &opts));
    let sessions = futures::future::try_join_all(revives).await?;
    let wall = started.elapsed();
    let per_pair = |pid: Option<u32>| pid.map_or(f64::NAN, cpu_of);
    let mut cpu = [(own_cpu() - ours) / count as f64, 0.0, 0.0];
    for s in &sessions {
        let (guest, controller) = s.pids();
        cpu[1] += per_pair(guest) / count as f64;
        cpu[2] += per_pair(controller) / count as f64;
    }
    // Let the guests run a moment so their touched pages show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let memory = sessions
        .iter()
        .filter_map(|s| s.pids().0)
        .map(|pid| memory_of(pid).unwrap_or((0, 0)))
        .collect();
    for s in sessions {
        s.discard().await;
    }
    Ok(Revived { wall, memory, cpu })
}

/// Medians of revives confined ([0]) and not ([1]): wall time and CPU per pair.
struct Cost {
    wall: [f64; 2],
    cpu: [f64; 2],
}

/// Revives `base` `rounds` times confined and `rounds` times not, `volumes` shared, the
/// order alternating from round to round: one kind always right after the other would pay
/// for it (the other's teardown, caches) and load drifts alike over both.
async fn confinement_cost(
    dirs: &Dirs,
    base: &Base,
    rounds: usize,
    volumes: &[Volume],
) -> Result<Cost> {
    let mut wall = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    for i in 0..rounds {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for kind in order {
            let r = revive_many_as(dirs, base, 1, kind == 1, volumes).await?;
            wall[kind].push(secs(r.wall));
            cpu[kind].push(r.cpu.iter().sum::<f64>());
        }
    }
    let [w0, w1] = wall;
    let [c0, c1] = cpu;
    Ok(Cost {
        wall: [median(w0), median(w1)],
        cpu: [median(c0), median(c1)],
    })
}

impl Cost {
    fn text(&self) -> String {
        format!(
            "{:+.1} ms wall ({:.3} vs {:.3} s), {:+.1} ms CPU ({:.3} vs {:.3} CPU-s)",
            (self.wall[0] - self.wall[1]) * 1e3,
            self.wall[0],
            self.wall[1],
            (self.cpu[0] - self.cpu[1]) * 1e3,
            self.cpu[0],
            self.cpu[1],
        )
    }
}

/// Seconds `guestbox run --base ID -- true` takes as a separate process: what a user sees,
/// with process start, argument parsing and the store lookup.
async fn run_binary(id: &str) -> Result<f64> {
    let exe = std::env::current_exe().ctx(|| "finding the guestbox binary")?;
    let t = Instant::now();
    let out = tokio::process::Command::new(&exe)
        .args(["--quiet", "run", "--base", id, "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ctx(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        return Err(Error::Command {
            what: "`guestbox run -- true`".into(),
            status: out.status.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(secs(t.elapsed()))
}

/// CPU seconds used so far by this process and its reaped children.
pub(crate) fn own_cpu() -> f64 {
    let usage = |who| {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    };
    usage(libc::RUSAGE_SELF) + usage(libc::RUSAGE_CHILDREN)
}

/// CPU seconds a live process's threads have run, from their schedstat (nanoseconds).
pub(crate) fn cpu_of(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// (private KiB, PSS KiB) of a process, from /proc/PID/smaps_rollup.
pub fn memory_of(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).ctx(|| format!("reading {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((
        field("Private_Clean:") + field("Private_Dirty:"),
        field("Pss:"),
    ))
}

async fn quiet_run(dirs: &Dirs, base: &Base, opts: &RunOptions) -> Result<(Outcome, String)> {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut streams = Streams {
        stdin: None,
        stdout: &mut out,
        stderr: &mut err,
        window: None,
    };
    let outcome = run(&Store::new(dirs), base, opts, &mut streams).await?;
    if outcome.exit_code != 0 {
        return Err(Error::Command {
            what: format!("the benchmark command {:?}", opts.command.argv),
            status: format!("exit status {}", outcome.exit_code),
            detail: String::from_utf8_lossy(&err).into_owned(),
        });
    }
    Ok((outcome, String::from_utf8_lossy(&out).into_owned()))
}

fn command(argv: &[&str]) -> RunOptions {
    let mut opts = RunOptions::default();
    opts.command.argv = argv.iter().map(|s| s.to_string()).collect();
    opts.session.boot_timeout = Duration::from_secs(600);
    opts
}

/// MiB/s of writing 100 MiB (with fsync) to `path` in the guest.
async fn write_throughput(
    dirs: &Dirs,
    base: &Base,
    target: &str,
    volume: Option<&Path>,
) -> Result<f64> {
    let script = format!(
        "s=$(date +%s%N); dd if=/dev/zero of={target}/bench.bin bs=1M count=100 conv=fsync 2>/dev/null; e=$(date +%s%N); rm -f {target}/bench.bin; echo $((e - s))"
    );
    let mut opts = command(&["sh", "-c", &script]);
    if let Some(dir) = volume {
        opts.session.volumes = vec![Volume {
            host: dir.to_path_buf(),
            guest: target.to_string(),
            readonly: false,
        }];
    }
    let (_, out) = quiet_run(dirs, base, &opts).await?;
    let ns: f64 = out.trim().parse().map_err(|_| Error::Command {
        what: "timing dd in the guest".into(),
        status: "unexpected output".into(),
        detail: out.clone(),
    })?;
    Ok(100.0 / (ns / 1e9))
}

/// Directories × files of the tree the walk rows use (10 000 files).
const TREE_DIRS: usize = 100;
const TREE_FILES: usize = 100;

/// The host's git commits the tree: the index then holds the host's stat data, which the
/// guest must see unchanged (inode, owner, mode, size, times to the second) for
/// `git status` to trust it, as it does for a checkout of yours. Made in the guest instead,
/// the index would cost every file read once more over SMB.
const HOST_GIT: Program = Program {
    name: "git",
    package: "git",
    why: "guestbox bench commits its 10 000-file tree on the host, as a checkout the guest reads",
};

/// Shell that writes the tree into the current directory: `dNN/fNN.txt`, each four lines
/// `file NN NN`. The guest runs it for its local copy; [`make_tree`] writes the same.
fn tree_shell() -> String {
    format!(
        "for d in $(seq -w 0 {}); do mkdir d$d; for f in $(seq -w 0 {}); do \
         printf 'file %s %s\\n' $d $f $d $f $d $f $d $f > d$d/f$f.txt; done; done",
        TREE_DIRS - 1,
        TREE_FILES - 1
    )
}

/// The git steps that make the current directory a repository of what it holds, packed
/// (10 000 loose objects would be walked too). Host and guest run the same.
const GIT_STEPS: &[&[&str]] = &[
    &["init", "-q"],
    &["add", "-A"],
    &[
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@localhost",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-qm",
        "tree",
    ],
    &["repack", "-adq"],
    &["prune-packed"],
];

/// [`GIT_STEPS`] as one shell command line (every word is plain: no quoting needed).
fn git_commit_shell() -> String {
    GIT_STEPS
        .iter()
        .map(|args| format!("git {}", args.join(" ")))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// Writes the tree on the host and commits it with the host's git.
fn make_tree(tree: &Path) -> Result<()> {
    let git = programs::require(&[HOST_GIT])?.remove(0);
    for d in 0..TREE_DIRS {
        let dir = tree.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        for f in 0..TREE_FILES {
            let file = dir.join(format!("f{f:02}.txt"));
            std::fs::write(&file, format!("file {d:02} {f:02}\n").repeat(4))
                .ctx(|| format!("writing {}", file.display()))?;
        }
    }
    for args in GIT_STEPS {
        let out = std::process::Command::new(&git)
            .args(*args)
            .current_dir(tree)
            // Yours stays out of it (hooks, signing, templates).
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .ctx(|| "running git on the host")?;
        if !out.status.success() {
            return Err(Error::Command {
                what: format!("git {} on the host (the benchmark tree)", args.join(" ")),
                status: out.status.to_string(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    Ok(())
}

/// Seconds of `find` (with an lstat of every entry) and of `git status` over the tree
/// shared read-only, then over the same tree made on the guest's disk:
/// `[find shared, git shared, find local, git local]`. One pass each: over SMB a pass
/// costs about a minute under TCG, and the shared one is measured cold, as every run
/// meets its shares.
async fn tree_walks(dirs: &Dirs, base: &Base, tree: &Path) -> Result<[f64; 4]> {
    let script = format!(
        "set -e; t() {{ s=$(date +%s%N); \"$@\" >/tmp/t.out; e=$(date +%s%N); echo $((e - s)); }}; \
         walk() {{ find \"$1\" -printf '%p %s %m %U %T@\\n'; }}; \
         st() {{ git -c safe.directory='*' -C \"$1\" status --porcelain; }}; \
         echo \"find /src $(t walk /src)\"; echo \"git /src $(t st /src)\"; \
         test ! -s /tmp/t.out || {{ echo 'git status is not clean in the share:' >&2; head /tmp/t.out >&2; exit 1; }}; \
         mkdir /root/tree; cd /root/tree; {tree}; {commit}; cd /; \
         echo \"find /root/tree $(t walk /root/tree)\"; echo \"git /root/tree $(t st /root/tree)\"; \
         test ! -s /tmp/t.out",
        tree = tree_shell(),
        commit = git_commit_shell(),
    );
    let mut opts = command(&["sh", "-c", &script]);
    opts.session.volumes = vec![Volume {
        host: tree.to_path_buf(),
        guest: "/src".into(),
        readonly: true,
    }];
    let (_, out) = quiet_run(dirs, base, &opts).await?;
    let bad = || Error::Command {
        what: "timing the tree walks in the guest".into(),
        status: "unexpected output".into(),
        detail: out.clone(),
    };
    let mut got = [f64::NAN; 4];
    for (slot, (what, dir)) in [
        ("find", "/src"),
        ("git", "/src"),
        ("find", "/root/tree"),
        ("git", "/root/tree"),
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = format!("{what} {dir} ");
        let ns: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(bad)?;
        got[slot] = ns / 1e9;
    }
    Ok(got)
}

pub async fn bench(dirs: &Dirs, opts: &BenchOptions, progress: &Progress) -> Result<Vec<Row>> {
    let n = opts.runs.max(1);
    let store = Store::new(dirs);
    let mut rows = Vec::new();
    if opts.wants(Section::Windows) {
        rows.extend(windows_rows(dirs, opts, n, progress).await?);
    }
    if !opts.wants_debian() {
        return Ok(rows);
    }
    let small = base_with(dirs, opts.small_mib, opts.accel, progress).await?;
    let mut revive = None;
    if opts.wants(Section::Revive) {
        let (r, one) = revive_rows(dirs, &small, opts, n, progress).await?;
        rows.extend(r);
        revive = Some(one);
    }
    if opts.wants(Section::Run) {
        let step = progress.step(format!(
            "what a job pays after the revive: `run -- true` {n} times, runs per minute, an exec, a shared file"
        ));
        rows.extend(crate::bench_run::rows(&store, &small, n).await?);
        let mut binary = Vec::new();
        for _ in 0..n {
            binary.push(run_binary(&small.manifest.id).await?);
        }
        rows.push(Row::new(
            "run_true_binary_s",
            "  the same as a user types it (the guestbox binary)",
            median(binary),
            "s",
            "",
        ));
        step.done();
    }
    if opts.wants(Section::Cold) {
        let step = progress.step(format!("cold boot and `run --cold -- true`, {n} times"));
        let mut cold_ready = Vec::new();
        let mut cold_total = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            quiet_run(dirs, &small, &command(&["true"])).await?;
            warm.push(secs(t.elapsed()));
            let mut cold = command(&["true"]);
            cold.session.cold = true;
            let t = Instant::now();
            let (o, _) = quiet_run(dirs, &small, &cold).await?;
            cold_total.push(secs(t.elapsed()));
            cold_ready.push(secs(o.timings.revive));
        }
        step.done();
        let (cr, ct, w) = (median(cold_ready), median(cold_total), median(warm));
        rows.push(Row::new(
            "cold_boot_s",
            "cold boot to ready (same pair, SSH and SMB set up)",
            cr,
            "s",
            "",
        ));
        if let Some(rs) = revive {
            rows.push(Row::new(
                "cold_vs_revive",
                "  cold boot / revive",
                cr / rs,
                "x",
                ">= 10x",
            ));
        }
        rows.push(Row::new("cold_run_s", "`run --cold -- true`", ct, "s", ""));
        rows.push(Row::new(
            "cold_vs_revived_run",
            "  cold / revived run",
            ct / w,
            "x",
            ">= 5x",
        ));
    }
    if opts.wants(Section::Write) {
        let step = progress
            .step("write throughput: 100 MiB to a shared directory and to the guest's disk");
        let out_dir = tempfile::tempdir().ctx(|| "creating a temporary directory")?;
        let mut shared = Vec::new();
        let mut local = Vec::new();
        for _ in 0..n.min(3) {
            shared.push(write_throughput(dirs, &small, "/out", Some(out_dir.path())).await?);
            local.push(write_throughput(dirs, &small, "/root", None).await?);
        }
        step.done();
        let (sh, lo) = (median(shared), median(local));
        rows.push(Row::new(
            "write_shared_mib_s",
            "write 100 MiB (fsync) to a shared dir (SMB)",
            sh,
            "MiB/s",
            "",
        ));
        rows.push(Row::new(
            "write_local_mib_s",
            "write 100 MiB (fsync) to the guest's disk",
            lo,
            "MiB/s",
            "",
        ));
        rows.push(Row::new(
            "write_shared_vs_local",
            "  shared / local",
            sh / lo * 100.0,
            "%",
            ">= 80%",
        ));
    }
    if opts.wants(Section::Registry) {
        rows.extend(transfer::rows(&small, n, progress).await?);
    }
    if opts.wants(Section::Tree) {
        // git must be in the guest: a base of its own (cached like the others).
        let with_git =
            base_with_packages(dirs, opts.small_mib, opts.accel, &["git"], progress).await?;
        let files = TREE_DIRS * TREE_FILES;
        let step = progress.step(format!(
            "a {files}-file git tree: find + stat and git status, shared read-only and on the guest's disk"
        ));
        let tree = tempfile::tempdir().ctx(|| "creating a temporary directory")?;
        make_tree(tree.path())?;
        let [find_sh, git_sh, find_lo, git_lo] = tree_walks(dirs, &with_git, tree.path()).await?;
        step.done();
        rows.push(Row::new(
            "tree_find_shared_s",
            &format!("find + stat, {files} files, shared read-only (SMB)"),
            find_sh,
            "s",
            "",
        ));
        rows.push(Row::new(
            "tree_find_local_s",
            &format!("find + stat, {files} files, on the guest's disk"),
            find_lo,
            "s",
            "",
        ));
        rows.push(Row::new(
            "tree_find_shared_vs_local",
            "  shared / local",
            find_sh / find_lo,
            "x",
            "",
        ));
        rows.push(Row::new(
            "tree_git_status_shared_s",
            &format!("git status, {files} files, shared read-only (SMB)"),
            git_sh,
            "s",
            "",
        ));
        rows.push(Row::new(
            "tree_git_status_local_s",
            &format!("git status, {files} files, on the guest's disk"),
            git_lo,
            "s",
            "",
        ));
        rows.push(Row::new(
            "tree_git_status_shared_vs_local",
            "  shared / local",
            git_sh / git_lo,
            "x",
            "",
        ));
    }
    Ok(rows)
}

/// Revive of Windows bases (firmware guests: q35 or pc, AHCI or IDE, OVMF or SeaBIOS, a TPM
/// where the base has one): the first given, and the second against it.
async fn windows_rows(
    dirs: &Dirs,
    opts: &BenchOptions,
    n: usize,
    progress: &Progress,
) -> Result<Vec<Row>> {
    let store = Store::new(dirs);
    if opts.windows_bases.is_empty() || opts.windows_bases.len() > 2 {
        return Err(Error::Usage(
            "bench --only windows needs --windows-base BASE[,BIGGER_BASE]: one or two Windows \
             bases (made with `guestbox bootstrap --profile windows`; without Windows media, \
             from the stand-in's, see the README's benchmarks)"
                .into(),
        ));
    }
    let mut bases = Vec::new();
    for name in &opts.windows_bases {
        let base = store.resolve(name)?;
        if base.manifest.pair.guest.is_none() {
            return Err(Error::Usage(format!(
                "--windows-base {name}: base {} is a {} base, not a Windows one",
                &base.manifest.id[..12],
                base.manifest.profile
            )));
        }
        bases.push(base);
    }
    let mib = |b: &Base| b.manifest.pair.guest_memory_mib;
    // What the revive restores besides RAM: the firmware's variables, a TPM's state.
    let kind = |b: &Base| {
        let g = b.manifest.pair.guest.as_ref();
        let firmware = match g.and_then(|g| g.uefi.as_ref()) {
            Some(u) if u.secure_boot => "UEFI Secure Boot",
            Some(_) => "UEFI",
            None => "BIOS",
        };
        let tpm = if g.is_some_and(|g| g.tpm) {
            " + TPM"
        } else {
            ""
        };
        format!("{}, {} MiB, {firmware}{tpm}", b.manifest.profile, mib(b))
    };
    let step = progress.step(format!(
        "reviving Windows bases {n} times ({})",
        bases
            .iter()
            .map(|b| format!("{} MiB", mib(b)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut walls = vec![Vec::new(); bases.len()];
    for _ in 0..n {
        for (base, wall) in bases.iter().zip(&mut walls) {
            wall.push(secs(revive_many(dirs, base, 1).await?.wall));
        }
    }
    step.done();
    let medians: Vec<f64> = walls.into_iter().map(median).collect();
    let mut rows = vec![Row::new(
        "revive_windows_s",
        &format!("revive of a Windows base ({})", kind(&bases[0])),
        medians[0],
        "s",
        "<= 0.3 s (4 GiB)",
    )];
    if let (Some(big), Some(m)) = (bases.get(1), medians.get(1)) {
        rows.push(Row::new(
            "revive_windows_second_s",
            &format!("revive of a Windows base ({})", kind(big)),
            *m,
            "s",
            "",
        ));
        rows.push(Row::new(
            "revive_windows_second_vs_first",
            &format!("  {} MiB / {} MiB", mib(big), mib(&bases[0])),
            m / medians[0],
            "x",
            "<= 1.2 (8 GiB / 4 GiB)",
        ));
    }
    Ok(rows)
}

/// Revive figures: one pair, a big guest, four at once; memory and CPU per revive. Also
/// returns one revive's median seconds (for the cold/revive ratio).
async fn revive_rows(
    dirs: &Dirs,
    small: &Base,
    opts: &BenchOptions,
    n: usize,
    progress: &Progress,
) -> Result<(Vec<Row>, f64)> {
    let big = base_with(dirs, opts.big_mib, opts.accel, progress).await?;
    let step = progress.step(format!(
        "reviving {n} times ({} MiB and {} MiB guests), then 4 at once",
        opts.small_mib, opts.big_mib
    ));
    let mut rev_small = Vec::new();
    let mut rev_big = Vec::new();
    let mut private_small = Vec::new();
    let mut cpu1 = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..n {
        let r = revive_many(dirs, small, 1).await?;
        rev_small.push(secs(r.wall));
        private_small.extend(r.memory);
        for (all, one) in cpu1.iter_mut().zip(r.cpu) {
            all.push(one);
        }
        rev_big.push(secs(revive_many(dirs, &big, 1).await?.wall));
    }
    step.done();
    let rounds = 4 * n;
    let step = progress.step(format!(
        "what confinement costs: {rounds} revives with it and {rounds} without, alternating"
    ));
    let cost = confinement_cost(dirs, small, rounds, &[]).await?;
    step.done();
    // A directory of guestbox's own user shared: as root, root's, which the controller's
    // QEMU serves as root of a user namespace (descriptors and idmapped views).
    let step = progress.step(format!(
        "the same with a directory of guestbox's user shared: {rounds} and {rounds}"
    ));
    let shared = tempfile::tempdir().ctx(|| "creating a directory to share")?;
    let volume = Volume {
        host: shared.path().to_path_buf(),
        guest: "/shared".into(),
        readonly: false,
    };
    let cost_shared = confinement_cost(dirs, small, rounds, &[volume]).await?;
    step.done();
    let step = progress.step(format!("4 parallel revives, {n} times"));
    let mut par4 = Vec::new();
    let mut private4 = Vec::new();
    let mut cpu4 = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..n {
        let r = revive_many(dirs, small, 4).await?;
        par4.push(secs(r.wall));
        private4.extend(r.memory);
        for (all, one) in cpu4.iter_mut().zip(r.cpu) {
            all.push(one);
        }
    }
    step.done();
    let (rs, rb, p4) = (median(rev_small), median(rev_big), median(par4));
    let m = &small.manifest;
    let mut rows = vec![
        Row::new(
            "revive_s",
            "revive to running (guest + controller)",
            rs,
            "s",
            "<= 0.15 s",
        ),
        Row::new(
            "revive_big_s",
            &format!("revive, {} MiB guest", opts.big_mib),
            rb,
            "s",
            "",
        ),
        Row::new(
            "revive_big_vs_small",
            &format!("  {} MiB / {} MiB", opts.big_mib, opts.small_mib),
            rb / rs,
            "x",
            "<= 1.2",
        ),
        Row::new(
            "revive_4_parallel_s",
            "4 parallel revives, wall",
            p4,
            "s",
            "",
        ),
        Row::new(
            "revive_4_parallel_vs_1",
            "  4 parallel / 1",
            p4 / rs,
            "x",
            "<= 2 (cores)",
        ),
    ];
    rows.push(Row::text(
        "confinement_cost",
        "  confinement (seccomp, no root), per revive",
        cost.text(),
        "a few ms",
    ));
    rows.push(Row::text(
        "confinement_cost_shared",
        "  the same, sharing a directory of guestbox's user (as root: namespaced controller)",
        cost_shared.text(),
        "a few ms",
    ));
    // Where a revive's CPU goes: on a host with few cores this, not waiting, bounds how
    // many revives fit in the time of one.
    let cpu_split = |cpu: [Vec<f64>; 3]| {
        let [a, b, c] = cpu.map(median);
        format!("{a:.3} | {b:.3} | {c:.3} = {:.3} CPU-s", a + b + c)
    };
    rows.push(Row::text(
        "revive_cpu_split",
        "CPU per revive: guestbox + qemu-img | guest QEMU | controller QEMU",
        cpu_split(cpu1),
        "",
    ));
    rows.push(Row::text(
        "revive_cpu_split_4",
        "  the same, 4 revives at once",
        cpu_split(cpu4),
        "",
    ));
    let priv_kib = median(private4.iter().map(|m| m.0 as f64).collect());
    let pss_kib = median(private4.iter().map(|m| m.1 as f64).collect());
    let priv1 = median(private_small.iter().map(|m| m.0 as f64).collect());
    rows.push(Row::text(
        "private_memory_4",
        "private memory per revived guest (4 at once)",
        format!(
            "{:.0} MiB of {} MiB ({:.1}%), PSS {:.0} MiB",
            priv_kib / 1024.0,
            opts.small_mib,
            priv_kib / 1024.0 / opts.small_mib as f64 * 100.0,
            pss_kib / 1024.0
        ),
        "small fraction",
    ));
    rows.push(Row::new(
        "private_memory_1_mib",
        "  private memory, one revived guest",
        priv1 / 1024.0,
        "MiB",
        "",
    ));
    rows.push(Row::new(
        "snapshot_s",
        "snapshot of both VMs (at bootstrap)",
        m.timings.get("snapshot").copied().unwrap_or(f64::NAN),
        "s",
        "",
    ));
    rows.push(Row::text(
        "snapshot_size",
        "  device state, guest + controller",
        format!(
            "{} KiB + {} KiB",
            m.files.get(files::GUEST_STATE).map_or(0, |f| f.size / 1024),
            m.files
                .get(files::CONTROLLER_STATE)
                .map_or(0, |f| f.size / 1024)
        ),
        "",
    ));
    Ok((rows, rs))
}

/// The rows as JSON or as a table.
pub fn report(rows: &[Row], title: &str, json: bool) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "title": title,
            "rows": rows,
        }))
        .ctx(|| "printing the rows")?;
        println!("{text}");
    } else {
        print_table(rows, title);
    }
    Ok(())
}

/// The rows as a table: what (wrapped at a readable width), value, target.
pub fn print_table(rows: &[Row], title: &str) {
    const WHAT: usize = 58;
    let v = rows.iter().map(|r| r.value.len()).max().unwrap_or(10);
    println!("guestbox bench: {title}");
    println!("{:<WHAT$}  {:>v$}  target", "measure", "value");
    for r in rows {
        let lines = wrap(&r.what, WHAT);
        let (last, first) = lines
            .split_last()
            .map_or((&r.what, &[][..]), |(l, f)| (l, f));
        for l in first {
            println!("{l}");
        }
        println!("{last:<WHAT$}  {:>v$}  {}", r.value, r.target);
    }
}

/// Words of `text` in lines of at most `width` (a longer word stands alone); continuation
/// lines keep the first line's indent plus two.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let indent = text.len() - text.trim_start().len();
    let mut lines = Vec::new();
    let mut line = " ".repeat(indent);
    for word in text.split_whitespace() {
        if line.trim().is_empty() {
            line.push_str(word);
        } else if line.len() + 1 + word.len() <= width {
            line.push(' ');
            line.push_str(word);
        } else {
            lines.push(std::mem::replace(&mut line, " ".repeat(indent + 2) + word));
        }
    }
    lines.push(line);
    lines
}

/// Entries in a directory (open descriptors in /proc/self/fd, ...); 0 if unreadable.
fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Processes whose parent is this one (QEMUs, qemu-img ...), alive or zombie.
fn child_processes() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                == Some(me.as_str())
        })
        .count()
}

/// `guestbox bench --soak N`: load and soak figures for the README's Reliability
/// section. `parallel` runs at once from one base, each writing its own outputs, checked;
/// then `soak` runs one after another, with this process's descriptors and children and
/// the disk use of GUESTBOX_HOME compared before and after, and the run time's drift.
pub async fn reliability(
    dirs: &Dirs,
    accel: AccelChoice,
    parallel: usize,
    soak: usize,
    progress: &Progress,
) -> Result<Vec<Row>> {
    let base = base_with(dirs, 1024, accel, progress).await?;
    let mut rows = Vec::new();
    let mut row =
        |what: String, value: String| rows.push(Row::text(&slug(&what), &what, value, ""));

    let step = progress.step(format!("{parallel} runs in parallel from one base"));
    let outs = (0..parallel)
        .map(|_| tempfile::tempdir().ctx(|| "creating a temporary directory"))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let jobs = outs.iter().enumerate().map(|(i, d)| {
        let mut o = command(&[
            "sh",
            "-c",
            &format!("echo run-{i} > /out/who; seq 1 {} > /out/seq", 10_000 + i),
        ]);
        o.session.volumes = vec![Volume {
            host: d.path().to_path_buf(),
            guest: "/out".into(),
            readonly: false,
        }];
        let base = &base;
        async move { quiet_run(dirs, base, &o).await }
    });
    let results = futures::future::join_all(jobs).await;
    let wall = started.elapsed();
    let mut correct = 0;
    for (i, (r, d)) in results.iter().zip(&outs).enumerate() {
        let who = std::fs::read_to_string(d.path().join("who")).unwrap_or_default();
        let seq = std::fs::read_to_string(d.path().join("seq")).unwrap_or_default();
        let entries = count_entries(&d.path().to_string_lossy());
        if r.is_ok()
            && who.trim() == format!("run-{i}")
            && seq.lines().count() == 10_000 + i
            && entries == 2
        {
            correct += 1;
        }
    }
    step.done();
    row(
        format!("{parallel} parallel runs: correct, own outputs only"),
        format!("{correct} of {parallel}"),
    );
    row(
        format!("{parallel} parallel runs: wall time"),
        format!("{:.1} s", secs(wall)),
    );

    let step = progress.step(format!("{soak} runs one after another"));
    let out = tempfile::tempdir().ctx(|| "creating a temporary directory")?;
    // One run first, so lazily opened things (QEMU probes, caches) are in the baseline.
    quiet_run(dirs, &base, &command(&["true"])).await?;
    let (fds0, kids0, disk0) = (
        count_entries("/proc/self/fd"),
        child_processes(),
        gc::usage(&dirs.data),
    );
    let mut times = Vec::new();
    let mut failed = 0;
    for i in 0..soak {
        let mut o = command(&["sh", "-c", &format!("echo {i} > /out/n; cat /out/n")]);
        o.session.volumes = vec![Volume {
            host: out.path().to_path_buf(),
            guest: "/out".into(),
            readonly: false,
        }];
        let t = Instant::now();
        match quiet_run(dirs, &base, &o).await {
            Ok((_, stdout)) if stdout.trim() == i.to_string() => {}
            _ => failed += 1,
        }
        times.push(secs(t.elapsed()));
        step.detail(&format!("{} of {soak}", i + 1));
    }
    let (fds1, kids1, disk1) = (
        count_entries("/proc/self/fd"),
        child_processes(),
        gc::usage(&dirs.data),
    );
    step.done();
    let window = (soak / 10).max(1);
    let first = median(times[..window.min(times.len())].to_vec());
    let last = median(times[times.len().saturating_sub(window)..].to_vec());
    row(
        format!("{soak} sequential runs: failed"),
        failed.to_string(),
    );
    row(
        "  open descriptors of guestbox, before -> after".into(),
        format!("{fds0} -> {fds1}"),
    );
    row(
        "  child processes, before -> after".into(),
        format!("{kids0} -> {kids1}"),
    );
    row(
        "  disk use of GUESTBOX_HOME, before -> after".into(),
        format!(
            "{:.1} -> {:.1} MiB",
            disk0 as f64 / 1048576.0,
            disk1 as f64 / 1048576.0
        ),
    );
    row(
        format!("  run time, median of first {window} -> last {window}"),
        format!(
            "{first:.3} -> {last:.3} s ({:+.1}%)",
            (last / first - 1.0) * 100.0
        ),
    );
    row(
        "  run time, median of all".into(),
        format!("{:.3} s", median(times)),
    );
    Ok(rows)
}
