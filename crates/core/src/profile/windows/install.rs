//! Running the `install` stage from guestbox: the stage's exact machine (swtpm too, for a
//! TPM), supervised, boot keys pressed over QMP while the firmware starts the CD, and the
//! end read from COM1: the bootstrap's OK marker, its FAILED marker with the step, or a
//! guest that powered off saying neither. A stage that does not end in time is stopped,
//! with its console and a last screenshot kept for the user.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::stages::{Stage, StageEnd};
use crate::host::process::{run_tool, tail_of_file};
use crate::host::programs;
use crate::machine::Vm;
use crate::progress::Progress;
use crate::{Error, IoContext, Result};

/// What the install stage left.
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub took: Duration,
    /// COM1 of the install.
    pub console_log: PathBuf,
}

/// Creates the empty system disk the install writes to, unless it exists.
pub async fn create_disk(path: &Path, gib: u64) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let qemu_img = programs::path_of(programs::QEMU_IMG)?;
    let d = path.to_string_lossy().into_owned();
    let size = format!("{gib}G");
    run_tool(
        "qemu-img create (Windows disk)",
        &qemu_img,
        &["create", "-q", "-f", "qcow2", &d, &size],
    )
    .await?;
    Ok(())
}

/// What a stage that failed while its VM still ran leaves for the user: its console and
/// a screenshot, copied into `keep` (made now).
pub async fn keep_evidence(vm: &mut Vm, keep: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    std::fs::create_dir_all(keep).ctx(|| format!("creating {}", keep.display()))?;
    let shot = keep.join(format!("{}.screenshot.ppm", vm.spec.name));
    let screenshot = match vm.screendump(&shot).await {
        Ok(()) if shot.is_file() => Some(shot),
        Ok(()) => None,
        Err(e) => {
            tracing::warn!("no screenshot of the {}: {e}", vm.spec.name);
            None
        }
    };
    let kept = keep_console(&vm.local_path(&vm.spec.console_log), keep)?;
    Ok((kept, screenshot))
}

/// Copies a console log into `keep` (made if missing), unless it is there already; returns
/// the kept path. A copy: the console's directory goes when the stage's run directory does.
fn keep_console(console: &Path, keep: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(keep).ctx(|| format!("creating {}", keep.display()))?;
    let kept = keep.join(console.file_name().unwrap_or_default());
    if kept != console && console.exists() {
        std::fs::copy(console, &kept)
            .ctx(|| format!("copying {} to {}", console.display(), kept.display()))?;
    }
    Ok(kept)
}

/// Runs the install `stage` (its disk must exist; relative paths are relative to its
/// `spec.cwd`) for at most `timeout`. A failed stage leaves its console in `keep`, and one
/// stopped by the timeout a screenshot too (see [`keep_evidence`]); the error names them.
pub async fn run_install(
    qemu: &Path,
    stage: &Stage,
    timeout: Duration,
    keep: &Path,
    progress: &Progress,
) -> Result<InstallReport> {
    let StageEnd::PowerOff { ok, failed } = &stage.end else {
        return Err(Error::Stage {
            stage: stage.name.clone(),
            problem: "it does not end by powering off".into(),
        });
    };
    let local = |p: &Path| match &stage.spec.cwd {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    };
    let disk = stage
        .spec
        .drives
        .first()
        .map(|d| local(&d.path))
        .ok_or_else(|| Error::Stage {
            stage: stage.name.clone(),
            problem: "it has no disk".into(),
        })?;
    if !disk.exists() {
        return Err(Error::Stage {
            stage: stage.name.clone(),
            problem: format!("its disk {} does not exist", disk.display()),
        });
    }
    let console = local(&stage.spec.console_log);
    if let Some(run) = console.parent() {
        std::fs::create_dir_all(run).ctx(|| format!("creating {}", run.display()))?;
    }
    // A log from an earlier attempt would hold its markers.
    let _ = std::fs::remove_file(&console);
    let mut vm = Vm::start(qemu, stage.spec.clone()).await?;
    let step = progress.step(format!(
        "installing Windows and Cygwin (COM1 in {}; 15-30 min under KVM, hours under TCG)",
        console.display()
    ));
    let started = Instant::now();
    let deadline = started + timeout;
    let mut next_key = started;
    let status = loop {
        if let Some(status) = vm.process.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let (console, screenshot) = keep_evidence(&mut vm, keep).await?;
            vm.kill().await;
            return Err(Error::StageFailed(Box::new(crate::error::StageFailure {
                stage: stage.name.clone(),
                problem: format!(
                    "did not end within {} s (no {ok} or {failed} on COM1)",
                    timeout.as_secs()
                ),
                tail: tail_of_file(&console, 15),
                console,
                screenshot,
            })));
        }
        if let Some(k) = &stage.boot_keys {
            let now = Instant::now();
            if now >= next_key && now < started + k.during {
                next_key = now + k.every;
                let arg = serde_json::json!({"keys": [{"type": "qcode", "data": k.qcode}]});
                // Best effort: QMP may not be up yet, or QEMU just powered off.
                if let Ok(q) = vm.qmp().await {
                    let _ = q.execute("send-key", arg).await;
                }
            }
        }
        step.detail(&format!("{} min", started.elapsed().as_secs() / 60));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // swtpm writes the TPM's state as QEMU goes: wait for it.
    vm.finish_tpm(Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let tail = tail_of_file(&console, 15);
    let failed_here = !log.contains(ok) || log.contains(failed);
    // The console outlives the stage's directory: it is what the user reads next.
    let console = if failed_here {
        keep_console(&console, keep)?
    } else {
        console
    };
    if let Some(line) = log.lines().find(|l| l.contains(failed)) {
        let step_name = line
            .split_once(failed)
            .map(|(_, rest)| rest.trim_start_matches(':').trim())
            .unwrap_or_default();
        return Err(Error::WindowsBootstrap {
            step: step_name.to_string(),
            console,
            tail,
        });
    }
    if !log.contains(ok) {
        return Err(Error::VmExited {
            vm: "the Windows install".into(),
            status: format!("{status}, without {ok} on COM1"),
            stderr: vm.process.stderr_tail(5).trim().to_string(),
            log: console,
            tail,
        });
    }
    step.done();
    Ok(InstallReport {
        took: started.elapsed(),
        console_log: console,
    })
}
