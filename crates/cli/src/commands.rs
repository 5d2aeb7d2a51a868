//! What each subcommand does.

use std::time::{Duration, Instant};

use guestbox::accel::{self, AccelChoice};
use guestbox::bootstrap::{bootstrap, BootstrapOptions};
use guestbox::images::{self, DebianSource, GuestRecipe};
use guestbox::paths::Dirs;
use guestbox::profile::Profile;
use guestbox::progress::{Mode, Progress};
use guestbox::run::{parse_env, RunOptions, Volume};
use guestbox::store::{Base, Store};
use guestbox::{boot_image, hostcheck, Error, Result};

use crate::cli::{
    BootArgs, BootstrapArgs, Cli, Command, ImageArgs, JobArgs, RunArgs, ShellArgs, VmArgs, Which,
};

pub async fn dispatch(cli: Cli) -> Result<i32> {
    let progress = Progress::new(if cli.quiet { Mode::Quiet } else { Mode::Normal });
    match cli.command {
        Command::Images(args) => {
            let built = images(&args.image, &progress).await?;
            println!("kernel      {}", built.kernel.dir.display());
            println!("guest       {}", built.guest.disk.display());
            println!("controller  {}", built.controller.disk.display());
            Ok(0)
        }
        Command::Boot(args) => boot(args, &progress).await,
        Command::Bootstrap(args) if args.profile.starts_with("windows") => {
            crate::windows::bootstrap(&args, &progress).await
        }
        Command::Bootstrap(args) => {
            if args.windows.emit.is_some() || args.windows.iso.is_some() {
                return Err(Error::Usage(
                    "--iso and --emit are for --profile windows or windows-xp".into(),
                ));
            }
            let base = bootstrap(&Dirs::from_env()?, &bootstrap_options(&args)?, &progress).await?;
            println!("{}", base.manifest.id);
            Ok(0)
        }
        Command::Run(args) => run(args, &progress).await,
        Command::Ls(args) => ls(args.json),
        Command::Inspect(args) => {
            let base = store()?.resolve(&args.base)?;
            let mut json =
                serde_json::to_value(&base.manifest).map_err(|e| Error::Other(e.to_string()))?;
            json["names"] = serde_json::json!(base.names);
            json["path"] = serde_json::json!(base.dir);
            println!(
                "{}",
                serde_json::to_string_pretty(&json).map_err(|e| Error::Other(e.to_string()))?
            );
            Ok(0)
        }
        Command::Verify(args) => {
            let base = store()?.resolve(&args.base)?;
            let problems = guestbox::store::verify(&base)?;
            if problems.is_empty() {
                println!(
                    "base {}: all {} files intact",
                    base.manifest.id,
                    base.manifest.files.len()
                );
                return Ok(0);
            }
            Err(Error::Other(format!(
                "base {} is damaged; remove it with `guestbox rm {}` and bootstrap again:\n  {}",
                base.manifest.id,
                &base.manifest.id[..12.min(base.manifest.id.len())],
                problems.join("\n  ")
            )))
        }
        Command::Rm(args) => {
            let store = store()?;
            for what in &args.bases {
                match store.resolve(what) {
                    Ok(base) => {
                        store.remove(&base)?;
                        println!("removed {}", base.manifest.id);
                    }
                    // A damaged base cannot be loaded, but its full id still names it.
                    Err(e)
                        if guestbox::store::is_base_id(what)
                            && store
                                .base_dir(what)
                                .join(guestbox::store::MANIFEST)
                                .is_file() =>
                    {
                        tracing::debug!("removing a base that does not load: {e}");
                        store.remove_id(what)?;
                        println!("removed {what}");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(0)
        }
        Command::Gc => {
            let report = guestbox::gc::collect(&Dirs::from_env()?)?;
            for line in &report.removed {
                println!("removed {line}");
            }
            println!(
                "gc: {} removed, {} MiB freed",
                report.removed.len(),
                report.bytes >> 20
            );
            Ok(0)
        }
        Command::Bench(args) => {
            if let Some(soak) = args.soak {
                let rows = guestbox::bench::reliability(
                    &Dirs::from_env()?,
                    args.accel.parse()?,
                    args.parallel,
                    soak,
                    &progress,
                )
                .await?;
                guestbox::bench::print_table(&rows, &format!("reliability, accel {}", args.accel));
                return Ok(0);
            }
            let opts = guestbox::bench::BenchOptions {
                runs: args.runs,
                small_mib: 1024,
                big_mib: args.big_memory,
                accel: args.accel.parse()?,
            };
            let rows = guestbox::bench::bench(&Dirs::from_env()?, &opts, &progress).await?;
            guestbox::bench::print_table(
                &rows,
                &format!("medians of {} runs, accel {}", args.runs, args.accel),
            );
            Ok(0)
        }
        Command::Shell(args) => shell(args, &progress).await,
    }
}

fn store() -> Result<Store> {
    Ok(Store::new(&Dirs::from_env()?))
}

fn profile_from(name: &str, image: &ImageArgs) -> Result<Profile> {
    match name {
        "debian" => Ok(Profile::Debian(GuestRecipe::new(image.packages.clone()))),
        other => Err(Error::Usage(format!(
            "--profile {other:?}: expected debian, windows or windows-xp"
        ))),
    }
}

fn bootstrap_options(args: &BootstrapArgs) -> Result<BootstrapOptions> {
    Ok(BootstrapOptions {
        profile: profile_from(&args.profile, &args.image)?,
        name: args.name.clone(),
        memory_mib: args.vm.memory_mib(),
        cpus: args.vm.cpus(),
        accel: args.vm.accel.parse()?,
        timeout: args.timeout,
    })
}

/// The name the default Debian base gets, so later runs find it without re-deriving it.
const DEFAULT_BASE: &str = "default";

async fn default_base(image: &ImageArgs, vm: &VmArgs, progress: &Progress) -> Result<Base> {
    let store = store()?;
    let plain = image.packages.is_empty()
        && vm.memory_mib() == 1024
        && vm.cpus() == 1
        && vm.accel == "auto";
    if plain {
        // A default base made by another guestbox build has another agent: make a new one.
        if let Ok(base) = store.resolve(DEFAULT_BASE) {
            if base.manifest.agent == guestbox::store::agent_id() {
                return Ok(base);
            }
        }
        progress.note(
            "no default base yet: bootstrapping the Debian guest once (later runs revive it)",
        );
    }
    let opts = BootstrapOptions {
        profile: Profile::Debian(GuestRecipe::new(image.packages.clone())),
        name: plain.then(|| DEFAULT_BASE.to_string()),
        memory_mib: vm.memory_mib(),
        cpus: vm.cpus(),
        accel: vm.accel.parse()?,
        timeout: Duration::from_secs(600),
    };
    bootstrap(&Dirs::from_env()?, &opts, progress).await
}

/// A frozen base cannot change its memory, CPUs, accelerator or packages at revive: asking
/// for other ones along with `--base` is an error, not something to ignore.
fn fits_base(base: &Base, name: &str, image: &ImageArgs, vm: &VmArgs) -> Result<()> {
    let pair = &base.manifest.pair;
    let mut wrong = Vec::new();
    if let Some(m) = vm.memory.filter(|m| *m != pair.guest_memory_mib) {
        wrong.push(format!(
            "--memory {m} MiB (it has {} MiB)",
            pair.guest_memory_mib
        ));
    }
    if let Some(c) = vm.cpus.filter(|c| *c != pair.guest_cpus) {
        wrong.push(format!("--cpus {c} (it has {})", pair.guest_cpus));
    }
    if vm.accel != "auto" && vm.accel != pair.accel.qemu_name() {
        wrong.push(format!(
            "--accel {} (it was made under {})",
            vm.accel,
            pair.accel.qemu_name()
        ));
    }
    if !image.packages.is_empty() {
        wrong.push(format!(
            "--packages {} (a base's packages are fixed when it is bootstrapped)",
            image.packages.join(",")
        ));
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "base {name} was frozen with its own settings, which a revive cannot change: {}; \
         bootstrap a base with them (`guestbox bootstrap --name NAME ...`) or drop them",
        wrong.join(", ")
    )))
}

/// The base and the run options a `run` or `shell` asks for.
async fn job(job: &JobArgs, argv: Vec<String>, progress: &Progress) -> Result<(Base, RunOptions)> {
    let volumes = job
        .volumes
        .iter()
        .map(|v| v.parse::<Volume>())
        .collect::<Result<Vec<_>>>()?;
    let env = job
        .env
        .iter()
        .map(|e| parse_env(e))
        .collect::<Result<Vec<_>>>()?;
    if argv.is_empty() {
        return Err(Error::Usage(
            "no command given: guestbox run [OPTIONS] -- COMMAND [ARGS...]".into(),
        ));
    }
    // Before a first run bootstraps the default base for minutes, not after.
    guestbox::run::check_volumes(&volumes)?;
    let base = match &job.base {
        Some(b) => {
            let base = store()?.resolve(b)?;
            fits_base(&base, b, &job.image, &job.vm)?;
            base
        }
        None => default_base(&job.image, &job.vm, progress).await?,
    };
    let opts = RunOptions {
        volumes,
        env,
        workdir: job.workdir.clone(),
        argv,
        keep_snapshot_time: job.keep_snapshot_time,
        cold: job.cold,
        boot_timeout: Duration::from_secs(600),
        ..RunOptions::default()
    };
    Ok((base, opts))
}

async fn run(args: RunArgs, progress: &Progress) -> Result<i32> {
    let (base, mut opts) = job(&args.job, args.command.clone(), progress).await?;
    opts.timeout = args.timeout;
    opts.xchg = args.xchg.clone();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut stdin = tokio::io::stdin();
    let store = store()?;
    let input = args.interactive.then_some(&mut stdin);
    let outcome =
        guestbox::run::run_with_stdin(&store, &base, &opts, input, &mut stdout, &mut stderr)
            .await?;
    if args.timings {
        let t = &outcome.timings;
        eprintln!(
            "guestbox: revive {:.3} s, controller ready {:.3} s, command started {:.3} s, done {:.3} s",
            t.revive.as_secs_f64(),
            t.controller_ready.as_secs_f64(),
            t.command_started.as_secs_f64(),
            t.command_done.as_secs_f64()
        );
    }
    Ok(outcome.exit_code)
}

async fn shell(args: ShellArgs, progress: &Progress) -> Result<i32> {
    let size = crate::terminal::size();
    // The SSH master cannot see our terminal's size through the agent's pipes: the
    // guest's terminal is sized by the shell command itself.
    let start = format!(
        "stty rows {} cols {} 2>/dev/null; if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi",
        size.0, size.1
    );
    let (base, mut opts) = job(&args.job, vec!["sh".into(), "-c".into(), start], progress).await?;
    opts.tty = Some(
        std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "vt100".into()),
    );
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut stdin = tokio::io::stdin();
    let store = store()?;
    let raw = crate::terminal::RawMode::enable();
    let outcome = guestbox::run::run_with_stdin(
        &store,
        &base,
        &opts,
        Some(&mut stdin),
        &mut stdout,
        &mut stderr,
    )
    .await;
    drop(raw);
    Ok(outcome?.exit_code)
}

fn ls(json: bool) -> Result<i32> {
    let bases = store()?.list()?;
    if json {
        let rows: Vec<_> = bases
            .iter()
            .map(|b| {
                serde_json::json!({
                    "id": b.manifest.id,
                    "names": b.names,
                    "profile": b.manifest.profile,
                    "created": b.manifest.created,
                    "memory_mib": b.manifest.pair.guest_memory_mib,
                    "cpus": b.manifest.pair.guest_cpus,
                    "accel": b.manifest.pair.accel,
                    "disk_bytes": b.disk_usage(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| Error::Other(e.to_string()))?
        );
        return Ok(0);
    }
    println!(
        "{:<14} {:<16} {:<8} {:>7} {:>5} {:<5} {:>9}  CREATED",
        "ID", "NAMES", "PROFILE", "MEMORY", "CPUS", "ACCEL", "DISK"
    );
    for b in &bases {
        let m = &b.manifest;
        println!(
            "{:<14} {:<16} {:<8} {:>6}M {:>5} {:<5} {:>8}M  {}",
            &m.id[..12.min(m.id.len())],
            if b.names.is_empty() {
                "-".to_string()
            } else {
                b.names.join(",")
            },
            m.profile,
            m.pair.guest_memory_mib,
            m.pair.guest_cpus,
            m.pair.accel.qemu_name(),
            b.disk_usage() >> 20,
            m.created
        );
    }
    Ok(0)
}

async fn images(args: &ImageArgs, progress: &Progress) -> Result<images::Images> {
    hostcheck::require(hostcheck::IMAGE_BUILD)?;
    let dirs = Dirs::from_env()?;
    dirs.create()?;
    images::ensure(
        &dirs,
        &DebianSource::default(),
        &GuestRecipe::new(args.packages.clone()),
        progress,
    )
    .await
}

async fn boot(args: BootArgs, progress: &Progress) -> Result<i32> {
    let choice: AccelChoice = args.accel.parse()?;
    hostcheck::require(hostcheck::VM)?;
    let built = images(&args.image, progress).await?;
    let dirs = Dirs::from_env()?;
    let qemu = hostcheck::path_of(hostcheck::QEMU)?;
    let accel = accel::resolve(
        choice,
        &dirs,
        &qemu,
        &built.kernel.vmlinuz,
        &built.guest_initrd,
        progress,
    )
    .await?;
    let which = match args.which {
        Which::Guest => boot_image::Which::Guest,
        Which::Controller => boot_image::Which::Controller,
    };
    let step = progress.step(format!(
        "booting the {} image ({})",
        which.name(),
        accel.qemu_name()
    ));
    let started = Instant::now();
    let report = boot_image::boot_to_ready(
        &qemu,
        &built,
        which,
        accel,
        args.memory,
        Duration::from_secs(args.timeout),
        &dirs,
    )
    .await?;
    step.done();
    println!(
        "{} ready in {:.2} s ({}), shut down cleanly; console log: {}",
        which.name(),
        report.ready_after.as_secs_f64(),
        accel.qemu_name(),
        report.console_log.display()
    );
    tracing::debug!("total {:.2} s", started.elapsed().as_secs_f64());
    Ok(0)
}
