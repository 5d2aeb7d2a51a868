//! `guestbox bootstrap --profile windows|windows-xp`: all the way to a base (install, first
//! boot next to the controller, the share mapped, both VMs frozen), or with `--emit DIR`
//! only the install media and each stage's QEMU command line (`--run-install` then runs
//! the install stage).

use std::path::PathBuf;

use guestbox::bootstrap::{self as core_bootstrap, BootstrapOptions};
use guestbox::host::{programs, Dirs};
use guestbox::machine::Accel;
use guestbox::profile::windows as win;
use guestbox::profile::Profile as CoreProfile;
use guestbox::progress::Progress;
use guestbox::{Error, Result};
use media::cygwin::CygwinMirror;
use media::windows::{
    Firmware, ImageSelection, Profile, Secret, Win11Requirements, WindowsSettings,
};

use crate::cli::{self, BootstrapArgs, ProfileName};

pub async fn bootstrap(args: &BootstrapArgs, progress: &Progress) -> Result<i32> {
    let w = &args.windows;
    let profile = match args.profile {
        ProfileName::WindowsXp => Profile::WindowsXp,
        ProfileName::Windows | ProfileName::Debian => Profile::Windows,
    };
    let name = profile.name();
    let iso = w.iso.clone().ok_or_else(|| {
        Error::Usage(format!(
            "--profile {name}: --iso PATH (your Windows install ISO) is required"
        ))
    })?;
    let mirror_dir = w.cygwin_mirror.clone().ok_or_else(|| {
        Error::Usage(format!(
            "--profile {name}: --cygwin-mirror DIR is required (a local Cygwin mirror; see the README)"
        ))
    })?;
    if profile == Profile::WindowsXp {
        // XP's Setup takes numbers, not names: refuse what we cannot map, before writing.
        if media::windows::xp_time_zone(&w.timezone).is_none() {
            return Err(Error::Usage(format!(
                "--timezone {:?}: --profile windows-xp knows only {}",
                w.timezone,
                media::windows::xp_time_zone_names()
            )));
        }
        if media::windows::xp_language(&w.locale).is_none() {
            return Err(Error::Usage(format!(
                "--locale {:?}: --profile windows-xp knows only {}",
                w.locale,
                media::windows::xp_language_names()
            )));
        }
    }
    // An empty GUESTBOX_WINDOWS_PASSWORD is a mistake, not a wish for no password.
    if w.admin_password.as_deref() == Some("") {
        return Err(Error::Usage(
            "--admin-password (or GUESTBOX_WINDOWS_PASSWORD) is empty: give a password, or \
             leave both unset to reuse DIR/admin-password or have one generated"
                .into(),
        ));
    }
    let Some(dir) = w.emit.clone() else {
        return full_bootstrap(args, profile, iso, mirror_dir, progress).await;
    };
    let keys = dir.join("controller-key");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Usage(format!("--emit {}: {e}", dir.display())))?;
    // Given, else the one an earlier emit into DIR kept (same inputs, same floppy), else
    // new. emit() keeps it in DIR/admin-password.
    let password = match &w.admin_password {
        Some(p) => Secret::new(p.clone()),
        None => match win::stored_password(&dir)? {
            Some(p) => p,
            None => Secret::new(win::bootstrap::generated_password()?),
        },
    };
    let public_key = win::bootstrap::ensure_controller_key(&keys).await?;
    let settings = choices(w, WindowsSettings::new(profile, password, public_key));
    let mirror = cygwin_mirror(w, mirror_dir, settings.cygwin.arch);
    // The emitted command lines are for this host: KVM only if asked for explicitly (the
    // scripts run outside guestbox, which would otherwise probe it).
    let accel = match args.vm.accel {
        cli::Accel::Kvm => Accel::Kvm,
        cli::Accel::Auto | cli::Accel::Tcg => Accel::Tcg,
    };
    let mut hw = win::Hardware::new(&settings, accel);
    if let Some(m) = args.vm.memory {
        hw.memory_mib = m;
    }
    if let Some(c) = args.vm.cpus {
        hw.cpus = c;
    }
    let step = progress.step(format!(
        "writing the {name} install media and stage scripts"
    ));
    let report = win::emit(&dir, &settings, &iso, &mirror, &hw)?;
    step.done();
    println!("wrote {}:", report.dir.display());
    for (stage, script) in &report.stage_scripts {
        println!("  stage {stage:<11} {}", script.display());
    }
    println!(
        "  controller key  {} (keep it: it logs in to the installed guest)",
        keys.display()
    );
    println!(
        "  admin password  {} (owner-only; reused by the next --emit here)",
        dir.join(win::ADMIN_PASSWORD_FILE).display()
    );
    println!(
        "  accel           {}",
        match accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg (give --accel kvm for KVM; Windows under TCG takes hours)",
        }
    );
    if w.run_install {
        programs::require(programs::VM)?;
        let qemu = programs::path_of(programs::QEMU)?;
        let install = report
            .stages
            .iter()
            .find(|s| s.name == win::STAGE_INSTALL)
            .ok_or_else(|| Error::Stage {
                stage: win::STAGE_INSTALL.into(),
                problem: "it was not emitted".into(),
            })?;
        // The stage's paths are relative to DIR, as in its script; its disk is made as the
        // script makes it.
        let mut install = install.clone();
        install.spec.cwd = Some(report.dir.clone());
        win::install::create_disk(&report.dir.join(win::DISK_FILE), hw.disk_gib).await?;
        // A failed install keeps its console and a screenshot next to the stage scripts.
        let keep = report.dir.join("failed-install");
        let done =
            win::install::run_install(&qemu, &install, w.install_timeout, &keep, progress).await?;
        println!(
            "install stage done in {:.0} s (COM1: {}); next: the first-boot script",
            done.took.as_secs_f64(),
            done.console_log.display()
        );
    }
    Ok(0)
}

/// The user's choices for the answer file, on top of `settings` (which holds the secrets).
fn choices(w: &cli::WindowsArgs, mut settings: WindowsSettings) -> WindowsSettings {
    settings.firmware = if w.uefi || w.tpm {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    if w.tpm {
        settings.win11 = Win11Requirements::RealTpmUefi;
    }
    if let Some(i) = w.image_index {
        settings.image = ImageSelection::Index(i);
    }
    if let Some(name) = &w.edition {
        settings.image = ImageSelection::Name(name.clone());
    }
    settings.product_key = w.product_key.clone();
    settings.locale = w.locale.clone();
    settings.timezone = w.timezone.clone();
    for p in &w.cygwin_packages {
        if !settings.cygwin.packages.contains(p) {
            settings.cygwin.packages.push(p.clone());
        }
    }
    settings
}

/// The mirror in `dir`, with its setup program (given, or next to the mirror).
fn cygwin_mirror(
    w: &cli::WindowsArgs,
    dir: PathBuf,
    arch: media::cygwin::CygwinArch,
) -> CygwinMirror {
    let setup_exe = w.cygwin_setup.clone().unwrap_or_else(|| {
        dir.parent()
            .map(|p| p.join(arch.setup_exe()))
            .unwrap_or_else(|| PathBuf::from(arch.setup_exe()))
    });
    CygwinMirror {
        dir,
        setup_exe,
        arch,
    }
}

/// `bootstrap --profile windows|windows-xp` without `--emit`: install (cached), first
/// boot next to the controller, the share mapped, both VMs frozen into a base — the same
/// bootstrap as every profile's.
async fn full_bootstrap(
    args: &BootstrapArgs,
    kind: Profile,
    iso: PathBuf,
    mirror_dir: PathBuf,
    progress: &Progress,
) -> Result<i32> {
    let w = &args.windows;
    // The install makes its own controller key and (unless given) password; the profile
    // records only the choices, so these placeholders go nowhere.
    let settings = choices(
        w,
        WindowsSettings::new(kind, Secret::new("unused"), PLACEHOLDER_KEY),
    );
    settings
        .validate()
        .map_err(|e| Error::Usage(e.to_string()))?;
    let mirror = cygwin_mirror(w, mirror_dir, settings.cygwin.arch);
    let defaults = win::Hardware::new(&settings, Accel::Tcg);
    let sources = win::Sources {
        iso,
        mirror,
        admin_password: w.admin_password.clone().map(Secret::new),
        product_key: w.product_key.clone(),
        install_timeout: w.install_timeout,
    };
    let wp = win::WindowsProfile::new(&settings, defaults.disk_gib, Some(sources));
    let profile = match kind {
        Profile::Windows => CoreProfile::Windows(wp),
        Profile::WindowsXp => CoreProfile::WindowsXp(wp),
    };
    let opts = BootstrapOptions {
        profile,
        name: args.name.clone(),
        memory_mib: args.vm.memory.unwrap_or(defaults.memory_mib),
        cpus: args.vm.cpus.unwrap_or(defaults.cpus),
        accel: args.vm.accel.into(),
        timeout: args.timeout,
    };
    let base = core_bootstrap::bootstrap(&Dirs::from_env()?, &opts, progress).await?;
    println!("{}", base.manifest.id);
    Ok(0)
}

/// A syntactically valid public key for settings that only record choices.
const PLACEHOLDER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVudXNlZHVudXNlZHVudXNlZHVudXNlZHVudXNl unused";
