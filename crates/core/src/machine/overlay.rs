//! Copy-on-write disks: a run writes to its own qcow2 overlay, never to the base.

use std::path::Path;

use crate::host::{process::run_tool, programs};
use crate::Result;

/// Makes `overlay` a qcow2 that reads through to `base` and takes every write itself.
pub async fn create(base: &Path, overlay: &Path) -> Result<()> {
    let qemu_img = programs::path_of(programs::QEMU_IMG)?;
    let base_s = base.to_string_lossy().into_owned();
    let overlay_s = overlay.to_string_lossy().into_owned();
    run_tool(
        "qemu-img create (overlay)",
        &qemu_img,
        &[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base_s, &overlay_s,
        ],
    )
    .await?;
    Ok(())
}
