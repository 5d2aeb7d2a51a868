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
    /// More log output (-v info, -vv debug). GUESTBOX_LOG=filter overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
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
    /// Install and boot a guest once, then freeze it as a base [not implemented yet].
    Bootstrap(Pending),
    /// Run a command in a revived guest [not implemented yet].
    Run(Pending),
    /// List bases [not implemented yet].
    Ls(Pending),
    /// Show a base's manifest [not implemented yet].
    Inspect(Pending),
    /// Remove a base [not implemented yet].
    Rm(Pending),
    /// Remove unreferenced artifacts and stale runs [not implemented yet].
    Gc(Pending),
    /// Open an interactive shell in a revived guest [not implemented yet].
    Shell(Pending),
}

#[derive(Debug, Args)]
pub struct Pending {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
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
