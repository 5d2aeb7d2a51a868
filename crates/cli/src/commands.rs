//! What each subcommand does.

use std::time::{Duration, Instant};

use guestbox::accel::{self, AccelChoice};
use guestbox::images::{self, DebianSource, GuestRecipe};
use guestbox::paths::Dirs;
use guestbox::progress::{Mode, Progress};
use guestbox::{boot_image, hostcheck, Error, Result};

use crate::cli::{BootArgs, Cli, Command, ImageArgs, Which};

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
        Command::Bootstrap(_) => pending("bootstrap", 3),
        Command::Run(_) => pending("run", 4),
        Command::Ls(_) => pending("ls", 3),
        Command::Inspect(_) => pending("inspect", 3),
        Command::Rm(_) => pending("rm", 3),
        Command::Gc(_) => pending("gc", 3),
        Command::Shell(_) => pending("shell", 4),
    }
}

fn pending(name: &str, issue: u32) -> Result<i32> {
    Err(Error::Usage(format!(
        "`guestbox {name}` is not implemented yet (tracked in issue #{issue}); \
         what works today: `guestbox images`, `guestbox boot guest|controller`"
    )))
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
