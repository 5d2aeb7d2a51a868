//! `guestbox push` and `guestbox pull`: bases through an OCI registry. The registry client
//! is guestbox-oci; the store's side (checking a pulled base, registering it atomically,
//! its origin) is guestbox-core's `store::import`. This file joins them, draws progress and
//! prints the result.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use guestbox::host::fs::FileLock;
use guestbox::host::{programs, Dirs};
use guestbox::progress::Progress;
use guestbox::run::compat;
use guestbox::store::import::{self, Begun};
use guestbox::store::{self, Base, Origin, Store, MANIFEST};
use guestbox::IoContext;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use oci::{PartInfo, PullOptions, PushOptions, Report, Skip};

use crate::cli::{PullArgs, PushArgs, RegistryArgs};

/// A push or pull failed: in the registry client (exit 2 for the caller's mistakes, 125
/// for the rest) or in guestbox (its own exit codes).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Registry(#[from] oci::Error),
    #[error(transparent)]
    Guestbox(#[from] guestbox::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Registry(e) if e.is_usage() => 2,
            Failure::Registry(_) => 125,
            Failure::Guestbox(e) => e.exit_code(),
        }
    }
}

/// The exit code of a push or pull, its error printed.
pub fn exit_code(result: Result<i32, Failure>) -> i32 {
    result.unwrap_or_else(|e| {
        eprintln!("guestbox: error: {e}");
        e.exit_code()
    })
}

fn client(args: &RegistryArgs) -> Result<oci::Client, Failure> {
    Ok(oci::Client::new(oci::Options {
        insecure_registries: args.insecure_registries.clone(),
        ca_certificates: args.ca_certificates.clone(),
        ..oci::Options::default()
    })?)
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).ctx(|| "printing the result")?;
    println!("{text}");
    Ok(())
}

/// Annotations on the pushed manifest, so a registry's UI (and `crane manifest`) says what
/// the artifact is without fetching its config.
fn annotations(base: &Base) -> oci::Annotations {
    let m = &base.manifest;
    let q = m.qemu_version;
    oci::Annotations::from([
        ("org.opencontainers.image.created".into(), m.created.clone()),
        ("vnd.guestbox.base.id".into(), m.id.clone()),
        ("vnd.guestbox.base.profile".into(), m.profile.clone()),
        (
            "vnd.guestbox.base.qemu".into(),
            format!("{}.{}.{}", q.0, q.1, q.2),
        ),
        ("vnd.guestbox.base.machine".into(), m.pair.machine.clone()),
        ("vnd.guestbox.version".into(), m.guestbox_version.clone()),
    ])
}

pub async fn push(args: &PushArgs, progress: &Progress, quiet: bool) -> Result<i32, Failure> {
    let dirs = Dirs::from_env()?;
    let store = Store::new(&dirs);
    let base = store.resolve(&args.base)?;
    // A damaged base would be refused by every pull; say so here, before sending it.
    store::quick_check(&base)?;
    // `rm` waits until the push is done.
    let _hold = base.lock_shared()?;
    let client = client(&args.registry)?;
    let files = import::transported_files(&base.manifest);
    let to_push = oci::Base::from_dir(&base.dir, MANIFEST, &files)?;
    let mut opts = PushOptions::new(import::push_state(&dirs));
    if let Some(p) = args.part_size {
        opts.part_size = p << 20;
    }
    opts.chunk_size = args
        .chunk_size
        .map_or(opts.chunk_size, |c| c << 20)
        .min(opts.part_size);
    if let Some(level) = args.level {
        opts.zstd_level = level;
    }
    opts.annotations = annotations(&base);
    let id = base.manifest.id.clone();
    progress.note(&format!(
        "pushing base {} to {} with its secrets.json (the SSH key and SMB password of its \
         private link): whoever can pull it can read all of the base",
        short(&id),
        args.reference
    ));
    let bars = Bars::new("pushed", quiet);
    let report = client.push(&args.reference, &to_push, &opts, &bars).await;
    bars.finish();
    let report = report?;
    let pinned = args.reference.with_digest(&report.digest);
    if args.registry.json {
        let mut json = serde_json::to_value(&report).ctx(|| "printing the report")?;
        json["base"] = serde_json::json!(id);
        json["pinned"] = serde_json::json!(pinned.to_string());
        print_json(&json)?;
    } else {
        progress.note(&format!(
            "pushed base {} as {pinned}: {}",
            short(&id),
            summary(&report, "sent")
        ));
        println!("{pinned}");
    }
    Ok(0)
}

fn summary(r: &Report, verb: &str) -> String {
    let mut s = format!(
        "{:.1} MiB {verb} ({:.1} MiB of blobs for {:.1} MiB of files) in {:.1} s",
        mib(r.bytes_transferred),
        mib(r.bytes_blobs),
        mib(r.bytes_files),
        r.seconds
    );
    if r.seconds > 0.0 && r.bytes_transferred > 0 {
        s += &format!(", {:.0} MiB/s", mib(r.bytes_transferred) / r.seconds);
    }
    s += &format!(
        "; {} of {} blobs moved, {} already there",
        r.blobs_transferred, r.blobs, r.blobs_skipped
    );
    if r.blobs_mounted > 0 {
        s += &format!(" ({} mounted from other repositories)", r.blobs_mounted);
    }
    if r.bytes_resumed > 0 {
        s += &format!(
            ", {:.1} MiB resumed from an earlier attempt",
            mib(r.bytes_resumed)
        );
    }
    s
}

pub async fn pull(args: &PullArgs, progress: &Progress, quiet: bool) -> Result<i32, Failure> {
    if let Some(name) = &args.name {
        store::check_name(name)?;
    }
    let started = Instant::now();
    let dirs = Dirs::from_env()?;
    dirs.create()?;
    let store = Store::new(&dirs);
    let client = client(&args.registry)?;
    let reference = &args.reference;
    // The manifest and config first: nothing big moves before the base is known to be one
    // this guestbox can take, and not here already.
    let found = client.inspect(reference).await?;
    let manifest = import::parse_manifest(&found.config)?;
    // A base with another agent runs in no way here, cold or revived: refuse it now.
    compat::check_agent_of(&manifest)?;
    let mut warnings = Vec::new();
    // One made by another QEMU or machine type is refused by `run` exactly as a local
    // one; pulled anyway, because `run --cold` boots it, and another QEMU here may.
    let host = match programs::path_of(programs::QEMU) {
        Ok(qemu) => compat::check_host(&store, &manifest, &qemu).await,
        Err(e) => Err(e),
    };
    if let Err(e) = host {
        let text = format!("{e}. Pulling it anyway; `guestbox run` will refuse it here");
        progress.note(&format!("warning: {text}"));
        warnings.push(text);
    }
    let pinned = reference.with_digest(&found.digest);
    let (base, report, present) = match store.begin_import(&found.config).await? {
        Begun::Present(base) => {
            let same = base.manifest.seal == manifest.seal;
            progress.note(&format!(
                "base {} is already in the store ({}){}: nothing to pull",
                short(&base.manifest.id),
                base.origin().describe(true),
                if same {
                    String::new()
                } else {
                    format!(
                        ", from another bootstrap of the same inputs than {pinned}; keeping \
                         it (`guestbox rm {}` first to take the pulled one)",
                        short(&base.manifest.id)
                    )
                }
            ));
            let report = Report {
                reference: reference.to_string(),
                digest: found.digest.clone(),
                blobs: found.blobs,
                blobs_skipped: found.blobs,
                bytes_blobs: found.bytes_blobs,
                bytes_files: found.files.iter().map(|f| f.size).sum(),
                seconds: started.elapsed().as_secs_f64(),
                ..Report::default()
            };
            (*base, report, true)
        }
        Begun::Started(import) => {
            let staging = import::pull_staging(&dirs, &found.digest);
            std::fs::create_dir_all(&staging).ctx(|| format!("creating {}", staging.display()))?;
            let staging_lock = FileLock::exclusive(&staging.join(import::STAGING_LOCK)).await?;
            let opts = PullOptions {
                staging_dir: staging.clone(),
                dest_dir: import.dir().to_path_buf(),
                // Remembered, so a push to another repository of this registry mounts.
                state_dir: Some(import::push_state(&dirs)),
                sync: true,
            };
            let bars = Bars::new("pulled", quiet);
            let pulled = client.pull(&pinned, &opts, &bars).await;
            bars.finish();
            let pulled = pulled?;
            // Every blob arrived and matched its digest: nothing is left to resume, whatever
            // the check below finds.
            drop(staging_lock);
            if let Err(e) = std::fs::remove_dir_all(&staging) {
                tracing::warn!("could not remove {}: {e}", staging.display());
            }
            let step = progress.step("checking every file against the base's sealed manifest");
            let (dir, m) = (import.dir().to_path_buf(), import.manifest().clone());
            tokio::task::spawn_blocking(move || import::check(&dir, &m))
                .await
                .map_err(|e| guestbox::Error::Io {
                    context: "checking the pulled base".into(),
                    source: std::io::Error::other(e),
                })??;
            step.done();
            let base = import.register(&Origin::pulled(&reference.to_string(), &found.digest))?;
            (base, pulled.report, false)
        }
    };
    let id = base.manifest.id.clone();
    if let Some(name) = &args.name {
        store.set_name(name, &id)?;
    }
    let names = store.names_of(&id);
    if args.registry.json {
        let mut json = serde_json::to_value(&report).ctx(|| "printing the report")?;
        json["base"] = serde_json::json!(id);
        json["names"] = serde_json::json!(names);
        json["already_present"] = serde_json::json!(present);
        json["warnings"] = serde_json::json!(warnings);
        json["total_seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
        print_json(&json)?;
    } else {
        if !present {
            progress.note(&format!(
                "pulled base {} from {pinned}: {}",
                short(&id),
                summary(&report, "received")
            ));
        }
        println!("{id}");
    }
    Ok(0)
}

/// Progress of a push or pull: on a terminal, a bar for the whole base (its file bytes,
/// with ETA) and one per part moving (its bytes on the wire, rate, ETA); otherwise one line
/// per part; nothing with `--quiet`.
pub struct Bars {
    verb: &'static str,
    mode: Mode,
    parts: Mutex<HashMap<PartInfo, PartState>>,
}

enum Mode {
    Quiet,
    Lines,
    Terminal {
        multi: MultiProgress,
        total: ProgressBar,
    },
}

#[derive(Default)]
struct PartState {
    bar: Option<ProgressBar>,
    started: Option<Instant>,
    /// Bytes of the blob already there when it started (resumed).
    resumed: u64,
    size: u64,
    /// File bytes of this part counted into the total bar so far.
    credited: u64,
    /// Said as skipped already (a pull still writes a skipped part into its file).
    skipped: bool,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Bars {
    pub fn new(verb: &'static str, quiet: bool) -> Bars {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(0));
            total.set_style(style(
                "{msg:<26} [{bar:30}] {bytes:>10}/{total_bytes:<10} of files  {elapsed} eta {eta}",
            ));
            total.set_message("the base");
            Mode::Terminal { multi, total }
        } else {
            Mode::Lines
        };
        Bars {
            verb,
            mode,
            parts: Mutex::new(HashMap::new()),
        }
    }

    fn with_part<T>(&self, part: &PartInfo, f: impl FnOnce(&mut PartState) -> T) -> T {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        f(parts.entry(part.clone()).or_default())
    }

    /// Counts `upto` of the part's file bytes into the total bar.
    fn credit(&self, state: &mut PartState, upto: u64) {
        if let Mode::Terminal { total, .. } = &self.mode {
            if upto > state.credited {
                total.inc(upto - state.credited);
                state.credited = upto;
            }
        }
    }

    fn line(&self, text: String) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("guestbox: {text}"),
            Mode::Terminal { multi, .. } => {
                let _ = multi.println(text);
            }
        }
    }

    pub fn finish(&self) {
        if let Mode::Terminal { multi, total } = &self.mode {
            total.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

impl oci::Progress for Bars {
    fn begin(&self, parts: &[PartInfo]) {
        if let Mode::Terminal { total, .. } = &self.mode {
            total.set_length(parts.iter().map(|p| p.length).sum());
            total.reset_eta();
        }
    }

    fn part_started(&self, part: &PartInfo, size: u64, done: u64) {
        let bar = match &self.mode {
            Mode::Terminal { multi, total } => {
                let bar = multi.insert_before(total, ProgressBar::new(size));
                bar.set_style(style(
                    "  {prefix:<24} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}",
                ));
                bar.set_prefix(part.label());
                bar.set_position(done);
                Some(bar)
            }
            _ => None,
        };
        self.with_part(part, |s| {
            s.bar = bar;
            s.started = Some(Instant::now());
            s.resumed = done;
            s.size = size;
        });
    }

    fn part_bytes(&self, part: &PartInfo, done: u64, total: u64) {
        self.with_part(part, |s| {
            if let Some(bar) = &s.bar {
                bar.set_position(done);
            }
            let upto = if total == 0 {
                part.length
            } else {
                (part.length as u128 * done as u128 / total as u128) as u64
            };
            self.credit(s, upto);
        });
    }

    fn part_finished(&self, part: &PartInfo) {
        let text = self.with_part(part, |s| {
            if s.skipped {
                self.credit(s, part.length);
                return None;
            }
            if let Some(bar) = s.bar.take() {
                bar.finish_and_clear();
                if let Mode::Terminal { multi, .. } = &self.mode {
                    multi.remove(&bar);
                }
            }
            self.credit(s, part.length);
            let moved = s.size.saturating_sub(s.resumed);
            let secs = s.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            let mut text = format!(
                "{} {}: {:.1} MiB in {:.2} s",
                self.verb,
                part.label(),
                mib(moved),
                secs
            );
            if secs > 0.0 {
                text += &format!(" ({:.0} MiB/s)", mib(moved) / secs);
            }
            if s.resumed > 0 {
                text += &format!(", {:.1} MiB resumed", mib(s.resumed));
            }
            Some(text)
        });
        if let Some(text) = text {
            self.line(text);
        }
    }

    fn part_skipped(&self, part: &PartInfo, why: &Skip) {
        self.with_part(part, |s| {
            s.skipped = true;
            self.credit(s, part.length);
        });
        let why = match why {
            Skip::Present => "already in the registry".to_string(),
            Skip::Mounted { from } => format!("mounted from {from}"),
            Skip::Staged => "downloaded by an earlier attempt".to_string(),
            Skip::Duplicate => "the same bytes as another part".to_string(),
        };
        self.line(format!("{}: {why}", part.label()));
    }
}
