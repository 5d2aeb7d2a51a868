//! Command-line syntax.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use guestbox::machine::accel::AccelChoice;
use guestbox::run::Volume;

#[derive(Debug, Parser)]
#[command(
    name = "guestbox",
    version,
    about = "Run builds and tests in a guest OS revived from a running snapshot, hermetically",
    long_about = "guestbox installs a guest operating system once, unattended, freezes it as a \
running snapshot and revives it for every job. The guest sits on a private two-VM link with a \
controller that exports your directories over SMB and runs your command over SSH; the guest \
never touches the host's network.\n\nExit codes: the command's own; 2 for bad usage or \
configuration; 124 for a timeout; 125 when guestbox itself failed; 130 when interrupted."
)]
pub struct Cli {
    /// Print nothing but errors (no progress).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output (--verbose info, twice debug). GUESTBOX_LOG=filter overrides.
    /// (No short form: `-v` is `run --volume`, as in docker.)
    #[arg(long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build (or find in the cache) the kernel, guest and controller images.
    Images(ImagesArgs),
    /// Boot an image to its ready marker and shut it down (a health check).
    Boot(BootArgs),
    /// Install and boot a guest once, then freeze it (running) as a base.
    Bootstrap(BootstrapArgs),
    /// Run a command in a revived guest; exits with the command's exit code.
    Run(RunArgs),
    /// List bases.
    Ls(LsArgs),
    /// Show a base's manifest.
    Inspect(InspectArgs),
    /// Check every file of a base against the checksums in its manifest.
    Verify(InspectArgs),
    /// Remove bases (not while a run uses them).
    Rm(RmArgs),
    /// Remove half-made bases and images, and run directories of runs that died.
    Gc,
    /// Measure revive, cold boot, parallel runs, memory and throughput; print a table.
    Bench(BenchArgs),
    /// Open an interactive shell (with a terminal) in a revived guest.
    Shell(ShellArgs),
    /// Check this host and a base: programs, KVM, space; unique randomness, the clock, a
    /// share's POSIX fidelity, no route out. Exits 1 naming what failed.
    Doctor(DoctorArgs),
    /// Join a Bazel Remote Execution farm as a bot whose actions run in revived guests.
    Worker(WorkerArgs),
    /// GitLab Runner custom executor driver: config, prepare, run, cleanup.
    Gitlab(GitlabArgs),
    /// Nix's builder for derivations made by nix/guestbox.nix (reads the derivation's
    /// attributes from the environment).
    #[command(hide = true)]
    NixBuilder,
    /// Push a base to an OCI registry as REGISTRY/REPOSITORY:TAG.
    ///
    /// What is sent: the base's disks, RAM files, device states, kernel and initrds, its
    /// sealed manifest, and its secrets.json, which holds the SSH client key and the SMB
    /// password its two VMs use on their private link. Whoever can pull the reference can
    /// read all of it, those included: push only where you would keep the base's disks.
    /// The two credentials open nothing but VMs revived from this base (or made from its
    /// guest image), which listen on their private link only; the base's frozen memory
    /// holds them anyway, and `run --cold` needs the file.
    ///
    /// Parts the repository has are not sent again (a second push sends nothing), parts
    /// another repository of the registry has are mounted, an interrupted push resumes.
    /// Credentials: GUESTBOX_REGISTRY_USER and GUESTBOX_REGISTRY_PASSWORD, else the file
    /// REGISTRY_AUTH_FILE names, else $DOCKER_CONFIG/config.json or ~/.docker/config.json
    /// (`docker login`); none: anonymous. HTTPS always; plain HTTP only for localhost,
    /// 127.0.0.1, [::1] and --insecure-registry hosts.
    Push(PushArgs),
    /// Pull a base from an OCI registry into the store (REF: REGISTRY/REPOSITORY:TAG or
    /// ...@sha256:DIGEST).
    ///
    /// Every part is checked against its digest as it arrives, the base is put together in
    /// a temporary directory and registered only once every file matches the checksums in
    /// its sealed manifest. A base already in the store is not pulled again. A base made by
    /// another QEMU or machine type is pulled with a warning and refused by `run` as a
    /// local one would be; one made by another guestbox build (another controller agent)
    /// is refused before anything is downloaded. An interrupted pull resumes: what it
    /// downloaded stays in the data directory's registry/pull for a week (`gc` removes it
    /// after that). Credentials and TLS as for `push`.
    Pull(PullArgs),
}

impl Command {
    /// Whether the command handles SIGTERM and SIGINT itself (instead of stopping at once).
    pub fn handles_signals(&self) -> bool {
        matches!(self, Command::Worker(_))
    }
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The base to check [default: the default base, if there is one].
    #[arg(long)]
    pub base: Option<String>,
    /// Revives for the randomness check.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub revives: u32,
}

/// `guestbox gitlab`: the stages of GitLab Runner's custom executor (`[runners.custom]`
/// config_exec, prepare_exec, run_exec, cleanup_exec). Reads the job from the runner's
/// environment (CUSTOM_ENV_CI_RUNNER_ID, CUSTOM_ENV_CI_JOB_ID, ...); exits with
/// BUILD_FAILURE_EXIT_CODE when the job failed and SYSTEM_FAILURE_EXIT_CODE when guestbox did.
#[derive(Debug, Args)]
pub struct GitlabArgs {
    #[command(subcommand)]
    pub stage: GitlabStage,
}

#[derive(Debug, Subcommand)]
pub enum GitlabStage {
    /// config_exec: print the builds and cache directories (host directories, shared into
    /// the guest at the same paths) and the driver.
    Config,
    /// prepare_exec: revive the job's base and keep it for the job's later stages.
    Prepare(GitlabPrepareArgs),
    /// run_exec: run one stage's script in the job's guest (bash, output live); the stages
    /// that fetch and store sources, caches and artifacts run on the host.
    Run {
        /// The script GitLab Runner wrote for the stage.
        script: PathBuf,
        /// The stage's name (prepare_script, get_sources, step_script, after_script, ...).
        stage: String,
    },
    /// cleanup_exec: discard the job's guest and its builds directory.
    Cleanup,
    /// The per-job process that holds the guest (started by prepare).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

#[derive(Debug, Args)]
pub struct GitlabPrepareArgs {
    /// The base for jobs that name none. A job names one with the variable GUESTBOX_BASE
    /// or, failing that, its image: (first match wins: GUESTBOX_BASE, image, --base).
    #[arg(long, value_name = "BASE")]
    pub base: Option<String>,
    /// The guest goes away after this long without a stage (a runner that died).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// The guest goes away after this long whatever happens [default: the job's timeout
    /// (CI_JOB_TIMEOUT, else 3 h) plus 10 minutes].
    #[arg(long, value_parser = parse_duration)]
    pub max_job_time: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    #[arg(long)]
    pub job_dir: PathBuf,
    /// The base's id.
    #[arg(long)]
    pub base: String,
    #[arg(long)]
    pub cache_dir: PathBuf,
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,
    #[arg(long, value_parser = parse_duration)]
    pub max_job_time: std::time::Duration,
}

/// `guestbox worker`: a Remote Workers API bot (BuildGrid and other REAPI farms).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The farm's bots endpoint (plain-text gRPC).
    #[arg(long, value_name = "grpc://HOST:PORT")]
    pub reapi: String,
    /// The REAPI instance name.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub instance: String,
    /// A base to run actions in (name or id; repeatable). Each is advertised as the platform
    /// property guestbox-base=<its id>, with OSFamily of its profile.
    #[arg(long = "base", value_name = "BASE", required = true)]
    pub bases: Vec<String>,
    /// Actions run at once (each in its own revived guest).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// On SIGTERM/SIGINT, how long running actions may take before they are stopped and
    /// given back to the farm [default: as long as they take]. A second signal stops them
    /// at once.
    #[arg(long, value_parser = parse_duration)]
    pub drain_timeout: Option<std::time::Duration>,
    /// Where input roots are laid out [default: worker/ in guestbox's data directory].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// This bot's id in the farm [default: HOSTNAME-PID].
    #[arg(long, value_name = "ID")]
    pub bot_id: Option<String>,
    /// How long one long-poll for work lasts.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub poll_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct VmArgs {
    /// Guest memory, e.g. 512M, 2G (plain numbers are MiB) [default: 1G; --profile windows
    /// 4G, windows-xp 512M].
    // An Option, not a default: the Windows profiles have their own defaults, and a
    // given `--memory 1G` must not read as "not given".
    #[arg(long, value_parser = parse_size_mib)]
    pub memory: Option<u64>,
    /// Guest CPUs [default: 1; --profile windows 2].
    #[arg(long)]
    pub cpus: Option<u32>,
    /// auto probes KVM (briefly, once per host boot) and falls back to TCG. Windows
    /// --emit probes nothing: there auto means tcg, give kvm for KVM command lines.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
}

/// `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl From<Accel> for AccelChoice {
    fn from(a: Accel) -> Self {
        match a {
            Accel::Auto => AccelChoice::Auto,
            Accel::Kvm => AccelChoice::Kvm,
            Accel::Tcg => AccelChoice::Tcg,
        }
    }
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// `--profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileName {
    /// Debian built from packages (the default).
    Debian,
    /// 64-bit Windows 10/11, Server 2016 and later (Autounattend.xml).
    Windows,
    /// 32-bit Windows XP / Server 2003 (winnt.sif), as in the original.
    WindowsXp,
}

impl VmArgs {
    /// Memory in MiB, 1 GiB unless given.
    pub fn memory_mib(&self) -> u64 {
        self.memory.unwrap_or(1024)
    }

    /// CPUs, 1 unless given.
    pub fn cpus(&self) -> u32 {
        self.cpus.unwrap_or(1)
    }
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Guest profile.
    #[arg(long, value_enum, default_value_t = ProfileName::Debian)]
    pub profile: ProfileName,
    /// A name for the base (bases are content-addressed; a name is an alias).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub vm: VmArgs,
    /// Seconds the guest may take to boot until it is ready (Windows: its first boot until
    /// SSH answers; the install has --install-timeout).
    #[arg(long, default_value = "600", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub windows: WindowsArgs,
}

/// Windows profiles: `--profile windows` for 64-bit Windows 10/11 and Server 2016-2025
/// (Autounattend.xml; older Windows cannot be selected here), `windows-xp` for 32-bit
/// XP/Server 2003 (winnt.sif).
#[derive(Debug, Args)]
#[command(next_help_heading = "Windows guests")]
pub struct WindowsArgs {
    /// Windows install ISO (your own media, e.g. an evaluation ISO).
    #[arg(long, value_name = "PATH")]
    pub iso: Option<std::path::PathBuf>,
    /// Local Cygwin mirror: the directory named after the mirror URL, as
    /// `setup-x86_64.exe --download` leaves it (holds x86_64/setup.ini; windows-xp: a
    /// 32-bit mirror from setup-x86.exe, holding x86/setup.ini).
    #[arg(long, value_name = "DIR")]
    pub cygwin_mirror: Option<std::path::PathBuf>,
    /// Cygwin's setup program [default: setup-x86_64.exe (XP: setup-x86.exe) next to the mirror].
    #[arg(long, value_name = "PATH")]
    pub cygwin_setup: Option<std::path::PathBuf>,
    /// Cygwin packages beyond Base (openssh and cygrunsrv are always included).
    #[arg(long, value_delimiter = ',')]
    pub cygwin_packages: Vec<String>,
    /// Product key, where the media needs one (XP always does).
    #[arg(long)]
    pub product_key: Option<String>,
    /// Edition to install by image index (1-based) in install.wim.
    #[arg(long, conflicts_with = "edition")]
    pub image_index: Option<u32>,
    /// Edition to install by name, e.g. "Windows 11 Pro".
    #[arg(long)]
    pub edition: Option<String>,
    /// Administrator password [default: the one in DIR/admin-password from an earlier
    /// --emit into DIR, else generated; kept there (owner-only), never printed].
    #[arg(long, env = "GUESTBOX_WINDOWS_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Install for UEFI (GPT) instead of BIOS (MBR).
    #[arg(long)]
    pub uefi: bool,
    /// Windows 11 on a real TPM 2.0 (swtpm) and Secure Boot instead of the LabConfig bypass.
    #[arg(long)]
    pub tpm: bool,
    /// Locale, e.g. en-US, de-DE (windows-xp: en-US, en-GB, de-DE, fr-FR, es-ES, it-IT,
    /// nl-NL or ja-JP).
    #[arg(long, default_value = "en-US")]
    pub locale: String,
    /// Windows time zone id, e.g. "UTC", "W. Europe Standard Time" (windows-xp: UTC and
    /// nine common ids; others are refused with the list).
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Write the floppy, the Cygwin CD, the answer file, every script and the QEMU command
    /// line of each stage into DIR, and start nothing (unless --run-install).
    #[arg(long, value_name = "DIR")]
    pub emit: Option<std::path::PathBuf>,
    /// With --emit: then run the install stage in DIR from guestbox (supervised, boot keys
    /// pressed over QMP, the end read from COM1) instead of its script.
    #[arg(long, requires = "emit")]
    pub run_install: bool,
    /// How long the Windows install may take before it is stopped (then its console and a
    /// screenshot are kept, and the error names them).
    #[arg(long, default_value = "12h", value_parser = parse_duration)]
    pub install_timeout: std::time::Duration,
}

/// What a job runs on and sees: shared by `run` and `shell`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Base to revive (name or id). Without it, the default Debian base (bootstrapped on
    /// first use).
    #[arg(long)]
    pub base: Option<String>,
    /// Share a host directory: HOST:GUEST or HOST:GUEST:ro. Up to 8.
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]", value_parser = parse_volume)]
    pub volumes: Vec<Volume>,
    /// Set an environment variable in the guest.
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Boot the base's disks from scratch instead of reviving its snapshot.
    #[arg(long)]
    pub cold: bool,
    /// Leave the guest's clock where the snapshot froze it (default: set it to host time).
    #[arg(long)]
    pub keep_snapshot_time: bool,
    /// INSECURE, for debugging a flaky build only: replay the snapshot's randomness bit
    /// for bit. Every run then sees the same random numbers, keys, tokens and UUIDs as
    /// every other run of this base (processes that run side by side may still take them
    /// in another order, anything in the kernel that draws at a moment set by timing
    /// shifts what comes after it, and the kernel reseeds itself from interrupt timings once
    /// its reseed interval has passed since the freeze: half the guest's uptime then, at
    /// least 1 s, at most 60 s). By default each revive is a new VM generation and the guest's
    /// kernel is reseeded from the host before the command starts.
    #[arg(long)]
    pub replay_snapshot_randomness: bool,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub vm: VmArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Stop the command after this long (e.g. 30s, 5m) and exit 124.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Forward guestbox's standard input to the command (otherwise it reads nothing).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Host directory for the exchange files (in-vm-exit), as in the original's xchg.
    #[arg(long, value_name = "DIR")]
    pub xchg: Option<std::path::PathBuf>,
    /// Print how long each stage took, to stderr.
    #[arg(long)]
    pub timings: bool,
    /// The command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Repetitions per measure (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The large guest's memory, for the revive-vs-RAM-size comparison.
    #[arg(long, default_value = "8G", value_parser = parse_size_mib)]
    pub big_memory: u64,
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Instead of the speed table: the reliability figures, N runs one after another
    /// (descriptors, processes, disk use, drift) after --parallel runs at once.
    #[arg(long, value_name = "N")]
    pub soak: Option<usize>,
    /// Only these sections (comma-separated) [default: all but registry and tree].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<crate::bench::Section>,
    /// The rows as JSON (key, what, value, number, unit, target) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Runs at once for --soak's load figure.
    #[arg(long, default_value_t = 8, requires = "soak")]
    pub parallel: usize,
    /// Only the push and pull figures (a registry of its own on 127.0.0.1, and curl):
    /// the same as --only registry.
    #[arg(long, conflicts_with_all = ["soak", "only"])]
    pub registry: bool,
    /// Windows bases to revive (section windows): one (4 GiB, bootstrap's default) and
    /// optionally a larger one for the RAM-size ratio, comma-separated.
    #[arg(long, value_name = "BASE", value_delimiter = ',', num_args = 1)]
    pub windows_base: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub base: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true)]
    pub bases: Vec<String>,
}

/// `-v HOST:GUEST[:ro|:rw]`. The host path is taken as given (checked against the disk
/// later, before anything starts); the guest path must be absolute and plain.
pub fn parse_volume(s: &str) -> Result<Volume, String> {
    let bad = |why: &str| format!("{s:?}: {why} (expected HOST:GUEST or HOST:GUEST:ro)");
    let (rest, mode) = match s.rsplit_once(':') {
        Some((rest, "ro")) => (rest, Some(true)),
        Some((rest, "rw")) => (rest, Some(false)),
        _ => (s, None),
    };
    let readonly = mode.unwrap_or(false);
    // A drive letter, for Windows guests: HOST:S:, HOST:S::ro, or HOST:S:ro.
    fn letter(r: &str) -> Option<(&str, &str)> {
        r.rsplit_once(':').filter(|(h, l)| {
            !h.is_empty() && l.len() == 1 && l.chars().all(|c| c.is_ascii_alphabetic())
        })
    }
    let drive = match rest.strip_suffix(':') {
        Some(r) => letter(r),
        None if mode.is_some() => letter(rest),
        None => None,
    };
    if let Some((host, l)) = drive {
        return Ok(Volume {
            host: PathBuf::from(host),
            guest: format!("{l}:"),
            readonly,
        });
    }
    let (host, guest) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("missing ':GUEST'"))?;
    if host.is_empty() {
        return Err(bad("empty host directory"));
    }
    if !guest.starts_with('/') {
        return Err(bad(
            "the guest path must be absolute (or, for a Windows guest, a drive letter like S:)",
        ));
    }
    if guest.contains('\0') || guest.contains('\n') || guest.split('/').any(|c| c == "..") {
        return Err(bad("the guest path may not contain '..', newlines or NUL"));
    }
    Ok(Volume {
        host: PathBuf::from(host),
        guest: guest.to_string(),
        readonly,
    })
}

/// `-e NAME=VALUE`: NAME must be a shell variable name.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    let valid = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{s:?}: {k:?} is not a valid variable name (letters, digits, _; not starting with a digit)"
        ));
    }
    if v.contains('\0') {
        return Err(format!("{k}: the value contains a NUL byte"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `512M`, `2G`, `1.5G`, `1024` (MiB).
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    // Accept 2G, 2GB, 2Gi, 2GiB alike (binary units throughout, as QEMU's -m does).
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'M' | 'm')) => (&t[..i], 1.0),
        Some((i, 'G' | 'g')) => (&t[..i], 1024.0),
        Some((i, 'T' | 't')) => (&t[..i], 1024.0 * 1024.0),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 2G)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("{s:?} is not a positive size"));
    }
    // Whole MiB: at least one, and few enough that the size in bytes fits in 64 bits
    // (`as u64` would saturate or give 0 silently).
    let mib = (v * mult).round();
    if mib < 1.0 {
        return Err(format!("{s:?} is less than 1 MiB"));
    }
    if mib > (u64::MAX >> 20) as f64 {
        return Err(format!("{s:?} is too large a size"));
    }
    Ok(mib as u64)
}

/// `90`, `90s`, `1.5s`, `5m`, `2h`, `250ms`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, unit) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 5m)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("{s:?} is not a positive duration"));
    }
    // Bounded: `Duration::from_secs_f64` panics past u64::MAX seconds, and a deadline
    // (`Instant::now() + timeout`) panics well before that.
    const MAX_SECS: f64 = 100.0 * 365.0 * 24.0 * 3600.0;
    if v * unit > MAX_SECS {
        return Err(format!("{s:?} is too long (at most 100 years)"));
    }
    let d = std::time::Duration::from_secs_f64(v * unit);
    if d.is_zero() {
        return Err(format!("{s:?} is shorter than a nanosecond"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn volumes_parse_and_reject() {
        let v = parse_volume("/src:/work:ro").unwrap();
        assert_eq!(
            v,
            Volume {
                host: "/src".into(),
                guest: "/work".into(),
                readonly: true
            }
        );
        let v = parse_volume("./out:/out").unwrap();
        assert!(!v.readonly);
        assert_eq!(v.host, PathBuf::from("./out"));
        for bad in [
            "/src",
            "/src:work",
            ":/x",
            "/a:/b/../c",
            "/a:",
            "/a:S",
            ":S:",
            "/a:SS:",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        // Drive letters, for Windows guests.
        for (spec, host, ro) in [
            ("/src:S:", "/src", false),
            ("/src:s::ro", "/src", true),
            ("/src:S:ro", "/src", true),
            ("C:/h:S:rw", "C:/h", false),
        ] {
            let v = parse_volume(spec).unwrap();
            assert_eq!(v.host, PathBuf::from(host), "{spec}");
            assert_eq!(v.guest.to_ascii_uppercase(), "S:", "{spec}");
            assert_eq!(v.readonly, ro, "{spec}");
        }
    }

    #[test]
    fn env_parses_and_rejects() {
        assert_eq!(parse_env("A_1=x=y").unwrap(), ("A_1".into(), "x=y".into()));
        assert_eq!(
            parse_env("EMPTY=").unwrap(),
            ("EMPTY".into(), String::new())
        );
        for bad in ["NOEQUALS", "=v", "1A=v", "A-B=v", "A B=v"] {
            assert!(parse_env(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("2G"), Ok(2048));
        assert_eq!(parse_size_mib("1.5GiB"), Ok(1536));
        assert_eq!(parse_size_mib("2Gi"), Ok(2048));
        assert_eq!(parse_size_mib("300"), Ok(300));
        assert!(parse_size_mib("lots").is_err());
        assert!(parse_size_mib("-1G").is_err());
        assert_eq!(
            parse_duration("30s"),
            Ok(std::time::Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("5m"),
            Ok(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_duration("7"), Ok(std::time::Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0").is_err());
    }
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Extra Debian packages for the guest, comma-separated (e.g. build-essential,git).
    #[arg(long, value_delimiter = ',')]
    pub packages: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub image: ImageArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Guest,
    Controller,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Which image to boot.
    #[arg(value_enum)]
    pub which: Which,
    #[command(flatten)]
    pub image: ImageArgs,
    /// auto probes KVM (briefly, once per host boot) and falls back to TCG.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Seconds to wait for the ready marker.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
}

/// Input fuzzing (issue #6): property tests of `--memory`/`--big-memory` and `--timeout`.
/// Whatever the text, no panic; a refusal names the text; an accepted value is in range
/// (at least 1 MiB / 1 ns, at most what the byte count / a deadline can hold); generated
/// valid specs give exactly their value.
#[cfg(test)]
mod fuzz {
    use std::time::Duration;

    use proptest::prelude::*;
    use proptest::sample::select;

    use super::*;

    const MAX_MIB: u64 = u64::MAX >> 20;
    const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 4000,
            // Nothing written into the source tree; a failure prints its minimal input.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
    }

    /// Pieces that mean something to a number-and-unit parser, glued together.
    fn numberish(units: &'static [&'static str]) -> impl Strategy<Value = String> {
        let pieces = prop_oneof![
            4 => select(vec![
                "0", "1", "5", "9", "00", ".", ".", "e", "E", "-", "+", " ", "_", "inf", "NaN",
                "infinity", "e308", "e-320", "18446744073709551616", "\u{a0}", "é", "٣",
            ]),
            3 => select(units),
        ];
        prop::collection::vec(pieces, 0..6).prop_map(|p| p.concat())
    }

    const SIZE_UNITS: &[&str] = &[
        "M", "m", "MB", "MiB", "Mi", "G", "g", "GB", "GiB", "Gi", "T", "t", "TiB", "B", "b", "i",
        "K", "k",
    ];
    const DURATION_UNITS: &[&str] = &["s", "ms", "m", "h", "S", "d", "min", "us"];

    fn check_size(s: &str) -> Result<Option<u64>, TestCaseError> {
        match parse_size_mib(s) {
            Err(msg) => {
                prop_assert!(msg.contains(&format!("{s:?}")), "{s:?}: {msg}");
                Ok(None)
            }
            Ok(mib) => {
                prop_assert!((1..=MAX_MIB).contains(&mib), "{s:?} gave {mib} MiB");
                Ok(Some(mib))
            }
        }
    }

    fn check_duration(s: &str) -> Result<Option<Duration>, TestCaseError> {
        match parse_duration(s) {
            Err(msg) => {
                prop_assert!(msg.contains(&format!("{s:?}")), "{s:?}: {msg}");
                Ok(None)
            }
            Ok(d) => {
                prop_assert!(!d.is_zero() && d <= MAX_DURATION, "{s:?} gave {d:?}");
                Ok(Some(d))
            }
        }
    }

    /// A unit as written and MiB per unit.
    fn size_unit() -> impl Strategy<Value = (&'static str, u64)> {
        select(vec![
            ("", 1),
            ("M", 1),
            ("m", 1),
            ("MB", 1),
            ("MiB", 1),
            ("Mi", 1),
            ("G", 1024),
            ("g", 1024),
            ("GB", 1024),
            ("Gb", 1024),
            ("GiB", 1024),
            ("Gi", 1024),
            ("T", 1 << 20),
            ("TiB", 1 << 20),
            ("tb", 1 << 20),
        ])
    }

    /// Blanks around a value (the shell may leave them in a quoted argument).
    fn blanks() -> impl Strategy<Value = &'static str> {
        select(vec!["", "", "", " ", "\t", " \n"])
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn size_arbitrary_text(s in text()) {
            check_size(&s)?;
        }

        #[test]
        fn size_numberish_text(s in numberish(SIZE_UNITS)) {
            check_size(&s)?;
        }

        #[test]
        fn size_valid_specs_give_their_value(
            n in 0..=(1u64 << 20),
            quarters in 0..4u64,
            dot in any::<bool>(),
            (unit, per) in size_unit(),
            (pre, post) in (blanks(), blanks()),
        ) {
            prop_assume!(n > 0 || quarters >= 2 || (quarters == 1 && per > 1));
            let number = match (quarters, dot) {
                (0, false) => n.to_string(),
                (0, true) => format!("{n}.0"),
                (q, _) => format!("{n}.{}", [0, 25, 5, 75][q as usize]),
            };
            let s = format!("{pre}{number}{unit}{post}");
            // Whole MiB, halves rounded up.
            let want = n * per + (quarters * per).div_ceil(4) - u64::from(per == 1 && quarters == 1);
            prop_assert_eq!(check_size(&s)?, Some(want), "{:?}", s);
        }

        #[test]
        fn size_too_large_is_refused(
            mantissa in "[1-9][0-9]{0,4}(\\.[0-9]{1,3})?",
            extra in 0..300u32,
            (unit, per) in size_unit(),
            digits in "[1-9][0-9]{19,40}",
            plain in any::<bool>(),
        ) {
            // At least 2^44 MiB: the size in bytes would not fit in 64 bits.
            let min_exp = match per { 1 => 14, 1024 => 11, _ => 8 };
            let s = if plain {
                format!("{digits}{unit}")
            } else {
                format!("{mantissa}e{}{unit}", min_exp + extra)
            };
            prop_assert_eq!(check_size(&s)?, None, "{:?}", s);
        }

        #[test]
        fn size_below_one_mib_or_not_positive_is_refused(
            s in prop_oneof![
                "0\\.(0{0,3}[1-4][0-9]{0,4}|0{1,6})M?",
                "-[0-9]{1,5}(\\.[0-9]{1,2})?[MGT]?",
                "[0.]{1,4}[MGT]?".prop_filter("a number", |s| s.chars().any(|c| c == '0')),
                (7..320u32, select(vec!["G", "GiB"])).prop_map(|(e, u)| format!("1e-{e}{u}")),
                (4..320u32).prop_map(|e| format!("4e-{e}")),
            ],
        ) {
            prop_assert_eq!(check_size(&s)?, None, "{:?}", s);
        }

        #[test]
        fn duration_arbitrary_text(s in text()) {
            check_duration(&s)?;
        }

        #[test]
        fn duration_numberish_text(s in numberish(DURATION_UNITS)) {
            check_duration(&s)?;
        }

        #[test]
        fn duration_valid_specs_give_their_value(
            n in 1..=100_000u64,
            half in any::<bool>(),
            unit in select(vec!["", "s", "ms", "m", "h"]),
            (pre, post) in (blanks(), blanks()),
        ) {
            let half = half && unit != "ms";
            let s = format!("{pre}{n}{}{unit}{post}", if half { ".5" } else { "" });
            let per_ms = match unit { "ms" => 1, "m" => 60_000, "h" => 3_600_000, _ => 1000 };
            let want = Duration::from_millis(n * per_ms + if half { per_ms / 2 } else { 0 });
            prop_assert_eq!(check_duration(&s)?, Some(want), "{:?}", s);
        }

        #[test]
        fn duration_too_long_is_refused(
            mantissa in "[1-9](\\.[0-9]{1,3})?",
            e in 10..320u32,
            unit in select(vec!["", "s", "ms", "m", "h"]),
            digits in "[1-9][0-9]{15,40}",
            plain in any::<bool>(),
        ) {
            // Far more than 100 years (3.2e9 s), even in ms.
            let e = if unit == "ms" { e + 3 } else { e };
            let s = if plain { format!("{digits}{unit}") } else { format!("{mantissa}e{e}{unit}") };
            prop_assert_eq!(check_duration(&s)?, None, "{:?}", s);
        }

        #[test]
        fn duration_below_a_nanosecond_or_not_positive_is_refused(
            s in prop_oneof![
                (10..330u32, select(vec!["", "s"])).prop_map(|(e, u)| format!("1e-{e}{u}")),
                (7..330u32).prop_map(|e| format!("1e-{e}ms")),
                "-[0-9]{1,5}(\\.[0-9]{1,2})?(s|ms|m|h)?",
                "[0.]{1,4}(s|ms|m|h)?".prop_filter("a number", |s| s.contains('0')),
            ],
        ) {
            prop_assert_eq!(check_duration(&s)?, None, "{:?}", s);
        }
    }
}

/// How to reach a registry: shared by `push` and `pull`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Allow plain HTTP to this registry (HOST or HOST:PORT) when HTTPS fails; repeatable.
    /// localhost, 127.0.0.1 and [::1] always may.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Trust the CA certificates in this PEM file too (a registry with its own CA, as
    /// docker's certs.d/HOST/ca.crt); repeatable.
    #[arg(long = "ca-certificate", value_name = "PEM")]
    pub ca_certificates: Vec<PathBuf>,
    /// Print the result as JSON on stdout: the transfer report (bytes on the wire, blobs
    /// moved and skipped, seconds) and the base id.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The base (name or id).
    pub base: String,
    /// Where to: REGISTRY[:PORT]/REPOSITORY:TAG, e.g. registry.example:5000/team/debian-build:v3.
    #[arg(value_name = "REF", value_parser = parse_reference)]
    pub reference: oci::Reference,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Cut files into parts of this size (e.g. 64M); a cut connection costs at most one
    /// part, and a pull can only resume whole parts it has [default: 256M].
    #[arg(long, value_parser = parse_size_mib, value_name = "SIZE")]
    pub part_size: Option<u64>,
    /// Bytes per upload request (PATCH) [default: 16M, at most the part size].
    #[arg(long, value_parser = parse_size_mib, value_name = "SIZE")]
    pub chunk_size: Option<u64>,
    /// zstd level of the parts, 1-22: lower pushes faster, higher sends fewer bytes
    /// [default: 3].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub level: Option<i32>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// What: REGISTRY[:PORT]/REPOSITORY:TAG or REGISTRY[:PORT]/REPOSITORY@sha256:DIGEST.
    #[arg(value_name = "REF", value_parser = parse_reference)]
    pub reference: oci::Reference,
    /// A name for the pulled base (an alias, as `bootstrap --name` gives).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `REGISTRY/REPOSITORY[:TAG][@DIGEST]`, as docker writes it.
pub fn parse_reference(s: &str) -> Result<oci::Reference, String> {
    s.parse().map_err(|e: oci::Error| e.to_string())
}
