//! Copy-on-write disks: a run writes to its own qcow2 overlay, never to the base.
//!
//! An empty overlay of a given backing file is the same bytes every time (qcow2 records the
//! backing file's path and format, and its size, nothing of the run), so it is made once
//! with `qemu-img` as a template and copied for each run: two `qemu-img` processes fewer
//! per revive.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::host::{process::run_tool, programs};
use crate::{IoContext, Result};

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

/// [`create`], from a template kept in `templates` for this exact backing file (its path,
/// size and modification time name the template).
pub async fn create_from_template(base: &Path, overlay: &Path, templates: &Path) -> Result<()> {
    let meta = std::fs::metadata(base).ctx(|| format!("reading {}", base.display()))?;
    let key = blake3::hash(
        format!(
            "{}|{}|{}.{}",
            base.display(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        )
        .as_bytes(),
    );
    let template = templates.join(format!("{}.qcow2", &key.to_hex()[..24]));
    if !template.is_file() {
        std::fs::create_dir_all(templates).ctx(|| format!("creating {}", templates.display()))?;
        // Made aside and renamed: a concurrent run sees a whole template or none. The
        // name is this call's own (pid and a counter): two runs of one process (threads,
        // tests) making the same template at once must not share the file.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = templates.join(format!(
            ".{}-{}-{}.qcow2",
            &key.to_hex()[..24],
            std::process::id(),
            CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        create(base, &tmp).await?;
        std::fs::rename(&tmp, &template).ctx(|| format!("saving {}", template.display()))?;
    }
    std::fs::copy(&template, overlay).ctx(|| format!("making {}", overlay.display()))?;
    Ok(())
}

/// The backing file a qcow2 file names (its header: the name's offset at byte 8, its
/// length at byte 16), if it names one.
pub fn backing_file(qcow2: &Path) -> Option<std::path::PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::ffi::OsStringExt;
    let mut f = std::fs::File::open(qcow2).ok()?;
    let mut header = [0u8; 20];
    f.read_exact(&mut header).ok()?;
    if &header[..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let len = u32::from_be_bytes(header[16..20].try_into().ok()?) as usize;
    if offset == 0 || len == 0 || len > 4096 {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; len];
    f.read_exact(&mut name).ok()?;
    Some(std::ffi::OsString::from_vec(name).into())
}

/// Where overlay templates live, under the cache directory.
pub const TEMPLATES_DIR: &str = "overlays";

/// The templates in `templates` whose backing file is gone (a removed base): `rm` and `gc`
/// remove them.
pub fn stale_templates(templates: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(templates)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| backing_file(p).is_none_or(|b| !b.exists()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copied template is what qemu-img would have made for the run, byte for byte.
    #[tokio::test]
    async fn a_copied_template_is_the_overlay_qemu_img_makes() {
        let Ok(qemu_img) = programs::path_of(programs::QEMU_IMG) else {
            panic!("qemu-img is needed (scripts/setup installs it)");
        };
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        run_tool(
            "qemu-img create",
            &qemu_img,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                &base.to_string_lossy(),
                "64M",
            ],
        )
        .await
        .unwrap();
        let templates = dir.path().join("templates");
        let (a, b, direct) = (
            dir.path().join("a.qcow2"),
            dir.path().join("b.qcow2"),
            dir.path().join("direct.qcow2"),
        );
        create_from_template(&base, &a, &templates).await.unwrap();
        create_from_template(&base, &b, &templates).await.unwrap();
        create(&base, &direct).await.unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(read(&a), read(&direct));
        assert_eq!(read(&b), read(&direct));
        assert_eq!(std::fs::read_dir(&templates).unwrap().count(), 1);
        assert_eq!(backing_file(&a).as_deref(), Some(base.as_path()));
        assert_eq!(backing_file(&base), None);
    }
}
