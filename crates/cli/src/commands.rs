//! What each subcommand does.

use std::time::{Duration, Instant};

use guestbox::bootstrap::{bootstrap, BootstrapOptions};
use guestbox::host::{programs, Dirs};
use guestbox::images::{self, DebianSource, GuestRecipe};
use guestbox::machine::accel;
use guestbox::profile::Profile;
use guestbox::progress::Progress;
use guestbox::run::{self, Command as JobCommand, RunOptions, SessionOptions, Streams};
use guestbox::store::{self, gc, Base, Listed, Store};
use guestbox::{health, Error, IoContext, Result};

use crate::cli::{
    Accel, BootArgs, BootstrapArgs, Cli, Command, ImageArgs, JobArgs, ProfileName, RunArgs,
    ShellArgs, VmArgs, Which,
};

pub async fn dispatch(cli: Cli) -> Result<i32> {
    let progress = crate::report::progress(cli.quiet);
    match cli.command {
        Command::Push(args) => Ok(crate::registry::exit_code(
            crate::registry::push(&args, &progress, cli.quiet).await,
        )),
        Command::Pull(args) => Ok(crate::registry::exit_code(
            crate::registry::pull(&args, &progress, cli.quiet).await,
        )),
        Command::Images(args) => {
            let built = images(&args.image, &progress).await?;
            println!("kernel      {}", built.kernel.dir.display());
            println!("guest       {}", built.guest.disk.display());
            println!("controller  {}", built.controller.disk.display());
            Ok(0)
        }
        Command::Boot(args) => boot(args, &progress).await,
        Command::Bootstrap(args) if args.profile != ProfileName::Debian => {
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
            let mut json = serde_json::to_value(&base.manifest).ctx(|| "printing the manifest")?;
            json["names"] = serde_json::json!(base.names);
            json["path"] = serde_json::json!(base.dir);
            json["origin"] = serde_json::json!(base.origin());
            println!(
                "{}",
                serde_json::to_string_pretty(&json).ctx(|| "printing the manifest")?
            );
            Ok(0)
        }
        Command::Verify(args) => {
            let base = store()?.resolve(&args.base)?;
            let problems = store::verify(&base)?;
            if problems.is_empty() {
                println!(
                    "base {}: all {} files intact",
                    base.manifest.id,
                    base.manifest.files.len()
                );
                return Ok(0);
            }
            Err(Error::DamagedBase {
                id: base.manifest.id[..12.min(base.manifest.id.len())].to_string(),
                problem: format!(
                    "its files differ from its manifest:\n  {}\n ",
                    problems.join("\n  ")
                ),
            })
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
                        if store::is_base_id(what)
                            && store.base_dir(what).join(store::MANIFEST).is_file() =>
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
            let report = gc::collect(&Dirs::from_env()?)?;
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
                let rows = crate::bench::reliability(
                    &Dirs::from_env()?,
                    args.accel.into(),
                    args.parallel,
                    soak,
                    &progress,
                )
                .await?;
                crate::bench::report(
                    &rows,
                    &format!("reliability, accel {}", args.accel.name()),
                    args.json,
                )?;
                return Ok(0);
            }
            let opts = crate::bench::BenchOptions {
                runs: args.runs,
                small_mib: 1024,
                big_mib: args.big_memory,
                accel: args.accel.into(),
                only: if args.registry {
                    vec![crate::bench::Section::Registry]
                } else {
                    args.only.clone()
                },
                windows_bases: args.windows_base.clone(),
            };
            let rows = crate::bench::bench(&Dirs::from_env()?, &opts, &progress).await?;
            crate::bench::report(
                &rows,
                &format!("medians of {} runs, accel {}", args.runs, args.accel.name()),
                args.json,
            )?;
            Ok(0)
        }
        Command::Shell(args) => shell(args, &progress).await,
        Command::Doctor(args) => {
            crate::doctor::doctor(args.base.as_deref(), args.revives, &progress).await
        }
        Command::Worker(args) => crate::worker::worker(args).await,
        Command::Gitlab(args) => crate::gitlab::gitlab(args).await,
        Command::NixBuilder => crate::nix::nix_builder().await,
    }
}

fn store() -> Result<Store> {
    Ok(Store::new(&Dirs::from_env()?))
}

fn bootstrap_options(args: &BootstrapArgs) -> Result<BootstrapOptions> {
    Ok(BootstrapOptions {
        profile: Profile::Debian(GuestRecipe::new(args.image.packages.clone())),
        name: args.name.clone(),
        memory_mib: args.vm.memory_mib(),
        cpus: args.vm.cpus(),
        accel: args.vm.accel.into(),
        timeout: args.timeout,
    })
}

/// The name the default Debian base gets, so later runs find it without re-deriving it.
pub(crate) const DEFAULT_BASE: &str = "default";

async fn default_base(image: &ImageArgs, vm: &VmArgs, progress: &Progress) -> Result<Base> {
    let store = store()?;
    let plain = image.packages.is_empty()
        && vm.memory_mib() == 1024
        && vm.cpus() == 1
        && vm.accel == Accel::Auto;
    if plain {
        // A default base made by another guestbox build has another agent: make a new one.
        if let Ok(base) = store.resolve(DEFAULT_BASE) {
            if base.manifest.agent == store::agent_id() {
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
        accel: vm.accel.into(),
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
    if vm.accel != Accel::Auto && vm.accel.name() != pair.accel.qemu_name() {
        wrong.push(format!(
            "--accel {} (it was made under {})",
            vm.accel.name(),
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
    if argv.is_empty() {
        return Err(Error::Usage(
            "no command given: guestbox run [OPTIONS] -- COMMAND [ARGS...]".into(),
        ));
    }
    // Before a first run bootstraps the default base for minutes, not after.
    run::check_volumes(&job.volumes)?;
    let base = match &job.base {
        Some(b) => {
            let base = store()?.resolve(b)?;
            fits_base(&base, b, &job.image, &job.vm)?;
            base
        }
        None => default_base(&job.image, &job.vm, progress).await?,
    };
    let opts = RunOptions {
        session: SessionOptions {
            volumes: job.volumes.clone(),
            xchg: None,
            cold: job.cold,
            boot_timeout: Duration::from_secs(600),
            replay_snapshot_randomness: job.replay_snapshot_randomness,
            unconfined: false,
        },
        command: JobCommand {
            argv,
            env: job.env.clone(),
            workdir: job.workdir.clone(),
            keep_snapshot_time: job.keep_snapshot_time,
            ..JobCommand::default()
        },
    };
    Ok((base, opts))
}

async fn run(args: RunArgs, progress: &Progress) -> Result<i32> {
    let (base, mut opts) = job(&args.job, args.command.clone(), progress).await?;
    opts.command.timeout = args.timeout;
    opts.session.xchg = args.xchg.clone();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut stdin = tokio::io::stdin();
    let mut streams = Streams {
        stdin: if args.interactive {
            Some(&mut stdin)
        } else {
            None
        },
        stdout: &mut stdout,
        stderr: &mut stderr,
        window: None,
    };
    let outcome = run::run(&store()?, &base, &opts, &mut streams).await?;
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
    let argv = run::LOGIN_SHELL.iter().map(|s| s.to_string()).collect();
    let (base, mut opts) = job(&args.job, argv, progress).await?;
    let (rows, cols) = crate::terminal::size();
    opts.command.tty = Some(run::Terminal {
        term: std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "vt100".into()),
        rows,
        cols,
    });
    // The guest's terminal follows ours: every SIGWINCH sends the new size.
    let (window_tx, window) = tokio::sync::watch::channel((rows, cols));
    let resizes = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut winch) = signal(SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            if window_tx.send(crate::terminal::size()).is_err() {
                return;
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut stdin = tokio::io::stdin();
    let store = store()?;
    let raw = crate::terminal::RawMode::enable();
    let mut streams = Streams {
        stdin: Some(&mut stdin),
        stdout: &mut stdout,
        stderr: &mut stderr,
        window: Some(window),
    };
    let outcome = run::run(&store, &base, &opts, &mut streams).await;
    resizes.abort();
    drop(raw);
    Ok(outcome?.exit_code)
}

fn ls(json: bool) -> Result<i32> {
    let listed = store()?.survey()?;
    if json {
        let rows: Vec<_> = listed
            .iter()
            .map(|l| match l {
                Listed::Healthy(b) => serde_json::json!({
                    "id": b.manifest.id,
                    "names": b.names,
                    "profile": b.manifest.profile,
                    "created": b.manifest.created,
                    "memory_mib": b.manifest.pair.guest_memory_mib,
                    "cpus": b.manifest.pair.guest_cpus,
                    "accel": b.manifest.pair.accel,
                    "disk_bytes": b.disk_usage(),
                    "origin": b.origin(),
                }),
                Listed::Damaged { id, problem } => serde_json::json!({
                    "id": id,
                    "damaged": problem.to_string(),
                    "remove_with": format!("guestbox rm {id}"),
                }),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).ctx(|| "printing the list")?
        );
        return Ok(0);
    }
    // Columns as wide as their longest entry (names are the user's: any length).
    let names_of = |b: &Base| {
        if b.names.is_empty() {
            "-".to_string()
        } else {
            b.names.join(",")
        }
    };
    let healthy = listed.iter().filter_map(|l| match l {
        Listed::Healthy(b) => Some(b),
        Listed::Damaged { .. } => None,
    });
    let (nw, pw) = healthy.fold((5, 7), |(n, p), b| {
        (n.max(names_of(b).len()), p.max(b.manifest.profile.len()))
    });
    println!(
        "{:<14} {:<nw$} {:<pw$} {:>7} {:>5} {:<5} {:>9}  {:<20}  ORIGIN",
        "ID", "NAMES", "PROFILE", "MEMORY", "CPUS", "ACCEL", "DISK", "CREATED"
    );
    let mut damaged = Vec::new();
    for l in &listed {
        let b = match l {
            Listed::Healthy(b) => b,
            Listed::Damaged { id, problem } => {
                println!("{:<14} DAMAGED: see below", &id[..12.min(id.len())]);
                damaged.push((id, problem));
                continue;
            }
        };
        let m = &b.manifest;
        println!(
            "{:<14} {:<nw$} {:<pw$} {:>6}M {:>5} {:<5} {:>8}M  {:<20}  {}",
            &m.id[..12.min(m.id.len())],
            names_of(b),
            m.profile,
            m.pair.guest_memory_mib,
            m.pair.guest_cpus,
            m.pair.accel.qemu_name(),
            b.disk_usage() >> 20,
            m.created,
            b.origin().describe(true)
        );
    }
    for (id, problem) in damaged {
        eprintln!("guestbox: {problem}\n  remove it with: guestbox rm {id}");
    }
    Ok(0)
}

async fn images(args: &ImageArgs, progress: &Progress) -> Result<images::Images> {
    programs::require(programs::IMAGE_BUILD)?;
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
    programs::require(programs::VM)?;
    let built = images(&args.image, progress).await?;
    let dirs = Dirs::from_env()?;
    let qemu = programs::path_of(programs::QEMU)?;
    let accel = accel::resolve(
        args.accel.into(),
        &dirs,
        &qemu,
        &built.kernel.vmlinuz,
        &built.guest_initrd,
        progress,
    )
    .await?;
    let which = match args.which {
        Which::Guest => health::Which::Guest,
        Which::Controller => health::Which::Controller,
    };
    let step = progress.step(format!(
        "booting the {} image ({})",
        which.name(),
        accel.qemu_name()
    ));
    let started = Instant::now();
    let report = health::boot_to_ready(
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
