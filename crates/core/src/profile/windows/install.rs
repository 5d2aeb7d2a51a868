//! Running the `install` stage of an emitted Windows bootstrap from guestbox itself: the
//! same command line as the emitted script, run in the emitted directory, supervised, with
//! the boot-key presses over QMP, and the end read from COM1: the bootstrap's OK marker,
//! its FAILED marker with the step, or a guest that powered off saying neither.
//!
//! The stages after it (first boot with the controller, snapshot) need a running Windows
//! and are not run by guestbox yet.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Hardware, Stage, StageEnd, STAGE_INSTALL};
use crate::host::process::{run_tool, tail_of_file, Supervised};
use crate::host::programs;
use crate::host::ShortDir;
use crate::progress::Progress;
use crate::{Error, IoContext, Result};

/// What the install stage left.
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub took: Duration,
    /// COM1 of the install, kept in the emitted directory.
    pub console_log: std::path::PathBuf,
}

/// Runs `stage` (the `install` stage of [`super::emit`]'s report) in `dir`.
pub async fn run_install(
    qemu: &Path,
    dir: &Path,
    stage: &Stage,
    hw: &Hardware,
    timeout: Duration,
    progress: &Progress,
) -> Result<InstallReport> {
    let StageEnd::PowerOff { ok, failed } = &stage.end else {
        return Err(Error::Stage {
            stage: stage.name.clone(),
            problem: "it does not end by powering off".into(),
        });
    };
    if stage.name != STAGE_INSTALL {
        return Err(Error::Stage {
            stage: stage.name.clone(),
            problem: "it is not the install stage".into(),
        });
    }
    if stage.swtpm.is_some() {
        // swtpm would have to be supervised alongside QEMU; the emitted script does it.
        return Err(Error::Usage(
            "running the install with --tpm from guestbox is not wired yet: run the emitted install script".into(),
        ));
    }
    let at = |p: &Path| dir.join(p);
    let disk = stage
        .spec
        .drives
        .first()
        .map(|d| at(&d.path))
        .ok_or_else(|| Error::Stage {
            stage: stage.name.clone(),
            problem: "it has no disk".into(),
        })?;
    if !disk.exists() {
        let qemu_img = programs::path_of(programs::QEMU_IMG)?;
        let d = disk.to_string_lossy().into_owned();
        let size = format!("{}G", hw.disk_gib);
        run_tool(
            "qemu-img create (Windows disk)",
            &qemu_img,
            &["create", "-q", "-f", "qcow2", &d, &size],
        )
        .await?;
    }
    if let Some(run) = stage.spec.qmp_socket.parent() {
        let run = at(run);
        std::fs::create_dir_all(&run).ctx(|| format!("creating {}", run.display()))?;
    }
    let console = at(&stage.spec.console_log);
    // A log from an earlier attempt would hold its markers.
    let _ = std::fs::remove_file(&console);
    let stderr = console.with_extension("stderr");
    let mut qemu_proc =
        Supervised::spawn_with(&stage.name, qemu, &stage.argv()?, &stderr, None, Some(dir))?;
    let step = progress.step(format!(
        "installing Windows and Cygwin (COM1 in {}; hours under TCG)",
        console.display()
    ));
    let started = Instant::now();
    let keys = match &stage.boot_keys {
        Some(k) => {
            // Through a short path: `dir` may be deep, QEMU's socket path is relative to it.
            let short = ShortDir::open(dir)?;
            let qmp_path = short.join(&stage.spec.qmp_socket.to_string_lossy());
            let k = k.clone();
            Some(tokio::spawn(async move {
                let Ok(q) = qmp::Qmp::connect(&qmp_path, Duration::from_secs(10)).await else {
                    return;
                };
                let until = Instant::now() + k.during;
                while Instant::now() < until {
                    let arg = serde_json::json!({"keys": [{"type": "qcode", "data": k.qcode}]});
                    if q.execute("send-key", arg).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(k.every).await;
                }
                drop(short);
            }))
        }
        None => None,
    };
    let deadline = started + timeout;
    let outcome = loop {
        if let Some(status) = qemu_proc.try_wait()? {
            break Ok(status);
        }
        if Instant::now() >= deadline {
            break Err(());
        }
        step.detail(&format!("{} min", started.elapsed().as_secs() / 60));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(k) = keys {
        k.abort();
    }
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let tail = tail_of_file(&console, 15);
    let status = match outcome {
        Ok(status) => status,
        Err(()) => {
            qemu_proc.kill().await;
            return Err(Error::BootTimeout {
                vm: "the Windows install".into(),
                seconds: timeout.as_secs(),
                log: console,
                tail,
            });
        }
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
            stderr: qemu_proc.stderr_tail(5).trim().to_string(),
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
