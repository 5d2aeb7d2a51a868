//! Command-line syntax.

use clap::{Args, Parser, Subcommand, ValueEnum};

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
}

#[derive(Debug, Args)]
pub struct VmArgs {
    /// Guest memory, e.g. 512M, 2G (plain numbers are MiB).
    #[arg(long, default_value = "1G", value_parser = parse_size_mib)]
    pub memory: u64,
    /// Guest CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// auto probes KVM (briefly, once per host boot) and falls back to TCG.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Guest profile: debian (built from Debian packages).
    #[arg(long, default_value = "debian")]
    pub profile: String,
    /// A name for the base (bases are content-addressed; a name is an alias).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub vm: VmArgs,
    /// Seconds the guest may take to install and boot.
    #[arg(long, default_value = "600", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub windows: WindowsArgs,
}

/// Windows profiles (`--profile windows` for Vista..11/Server, `windows-xp` for XP/2003).
#[derive(Debug, Args)]
#[command(next_help_heading = "Windows guests")]
pub struct WindowsArgs {
    /// Windows install ISO (your own media, e.g. an evaluation ISO).
    #[arg(long, value_name = "PATH")]
    pub iso: Option<std::path::PathBuf>,
    /// Local Cygwin mirror: the directory named after the mirror URL, as
    /// `setup-x86_64.exe --download` leaves it (holds x86_64/setup.ini).
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
    /// Administrator password [default: generated, kept in the base, never printed].
    #[arg(long, env = "GUESTBOX_WINDOWS_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Install for UEFI (GPT) instead of BIOS (MBR).
    #[arg(long)]
    pub uefi: bool,
    /// Windows 11 on a real TPM 2.0 (swtpm) and Secure Boot instead of the LabConfig bypass.
    #[arg(long)]
    pub tpm: bool,
    /// Locale, e.g. en-US, de-DE.
    #[arg(long, default_value = "en-US")]
    pub locale: String,
    /// Windows time zone id, e.g. "UTC", "W. Europe Standard Time".
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Write the floppy, the Cygwin CD, the answer file, every script and the QEMU command
    /// line of each stage into DIR, and start nothing.
    #[arg(long, value_name = "DIR")]
    pub emit: Option<std::path::PathBuf>,
}

/// What a job runs on and sees: shared by `run` and `shell`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Base to revive (name or id). Without it, the default Debian base (bootstrapped on
    /// first use).
    #[arg(long)]
    pub base: Option<String>,
    /// Share a host directory: HOST:GUEST or HOST:GUEST:ro. Up to 8.
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub volumes: Vec<String>,
    /// Set an environment variable in the guest.
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Boot the base's disks from scratch instead of reviving its snapshot.
    #[arg(long)]
    pub cold: bool,
    /// Leave the guest's clock where the snapshot froze it (default: set it to host time).
    #[arg(long)]
    pub keep_snapshot_time: bool,
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
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
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
    Ok((v * mult).round() as u64)
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
    Ok(std::time::Duration::from_secs_f64(v * unit))
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
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// Seconds to wait for the ready marker.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
}
