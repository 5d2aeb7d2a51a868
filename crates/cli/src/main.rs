//! The `guestbox` command: a thin layer over guestbox-core.

mod bench;
mod bench_run;
mod cli;
mod commands;
mod doctor;
#[cfg(test)]
mod fuzz_args;
mod gitlab;
mod nix;
mod registry;
mod report;
mod terminal;
mod windows;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    init_logging(args.verbose, args.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("guestbox: cannot start: {e}");
            return ExitCode::from(125);
        }
    };
    // One thread: children get PR_SET_PDEATHSIG from the thread that spawned them, and that
    // thread must live as long as guestbox does.
    // `worker` drains on SIGTERM/SIGINT instead of stopping at once: it listens itself.
    let own_signals = args.command.handles_signals();
    let code = runtime.block_on(async {
        let result = async {
            match commands::dispatch(args).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("guestbox: error: {e}");
                    e.exit_code()
                }
            }
        };
        if own_signals {
            return result.await;
        }
        tokio::select! {
            code = result => code,
            signal = interrupted() => {
                eprintln!("guestbox: {signal}: stopping and cleaning up");
                130
            }
        }
    });
    // Shutting the runtime down drops every pending future: VMs and tools are killed, build
    // directories removed. A read of our stdin may still block a pool thread: don't wait
    // for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(u8::try_from(code).unwrap_or(125))
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter =
        EnvFilter::try_from_env("GUESTBOX_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
