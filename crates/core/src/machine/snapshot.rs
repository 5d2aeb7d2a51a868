//! Freezing a running pair into state files, and reviving it from them.
//!
//! Guest RAM lives in files (`memory-backend-file`). Suspend = `stop` + capability
//! `x-ignore-shared` + migrate to a file: only device state (~1 MB) is written, in tens of
//! milliseconds. Revive = the same RAM files mapped private (copy-on-write, so the base is
//! never written and concurrent runs share its pages through the page cache), `-incoming
//! defer`, `migrate-incoming` from the state file, `cont`: about 0.1 s whatever the RAM size.
//! QEMU 7.2 has no `file:` URI, so state files are passed as fds (`getfd` + `fd:`).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use super::Vm;
use crate::{Error, IoContext, Result};

const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

fn qmp_error(vm: &Vm) -> impl Fn(qmp::QmpError) -> Error + '_ {
    move |source| vm.qmp_error(source)
}

/// Pauses the VM (its clock too, with `clock=vm`).
pub async fn stop(vm: &mut Vm) -> Result<()> {
    let q = vm.qmp().await?;
    let r = q.stop().await;
    r.map_err(qmp_error(vm))
}

/// Writes a stopped VM's device state (not its file-backed RAM) to `state`.
pub async fn save(vm: &mut Vm, state: &Path) -> Result<u64> {
    let file = File::create(state).ctx(|| format!("creating {}", state.display()))?;
    let q = vm.qmp().await?;
    let result = async {
        q.migrate_set_capabilities(&[("x-ignore-shared", true)])
            .await?;
        q.send_fd("state", file.as_fd()).await?;
        q.migrate("fd:state").await?;
        q.wait_migration(MIGRATION_TIMEOUT).await
    }
    .await;
    result.map_err(qmp_error(vm))?;
    file.sync_all()
        .ctx(|| format!("syncing {}", state.display()))?;
    let size = file
        .metadata()
        .ctx(|| format!("reading {}", state.display()))?
        .len();
    Ok(size)
}

/// Loads `state` into a VM started with `incoming: true`; it stays paused until `resume`.
pub async fn load(vm: &mut Vm, state: &Path) -> Result<()> {
    let file = File::open(state).ctx(|| format!("opening {}", state.display()))?;
    let q = vm.qmp().await?;
    let result = async {
        q.migrate_set_capabilities(&[("x-ignore-shared", true)])
            .await?;
        q.send_fd("state", file.as_fd()).await?;
        q.migrate_incoming("fd:state").await?;
        q.wait_migration(MIGRATION_TIMEOUT).await
    }
    .await;
    result.map_err(qmp_error(vm))?;
    Ok(())
}

pub async fn resume(vm: &mut Vm) -> Result<()> {
    let q = vm.qmp().await?;
    let r = q.cont().await;
    r.map_err(qmp_error(vm))
}
