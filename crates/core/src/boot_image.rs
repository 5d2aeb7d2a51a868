//! Booting one image on a throwaway overlay: the health check behind `guestbox boot` and
//! the image tests. The image itself is never written.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::boot::Vm;
use crate::images::rootfs::GUEST_READY_MARKER;
use crate::images::Images;
use crate::paths::Dirs;
use crate::short_dir::ShortDir;
use crate::vm::{
    Boot, DiskFormat, Drive, DriveInterface, Link, Memory, Nic, NicModel, Rtc, SerialPort, VmSpec,
};
use crate::{hostcheck, process::run_tool, qemu_info, Error, IoContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Guest,
    Controller,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Guest => "guest",
            Which::Controller => "controller",
        }
    }
}

#[derive(Debug)]
pub struct BootReport {
    pub ready_after: Duration,
    pub console_log: PathBuf,
}

/// Makes `overlay` a qcow2 that reads through to `base` and takes every write itself.
pub async fn create_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let qemu_img = hostcheck::path_of(hostcheck::QEMU_IMG)?;
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

/// Kernel command line shared by both VMs: serial console, quiet, power off on panic.
pub fn kernel_append(init: &str) -> String {
    format!("console=ttyS0 quiet loglevel=3 panic=-1 guestbox.init={init}")
}

/// Boots `which` to its ready marker, then shuts it down cleanly (the controller through
/// its agent, the guest through QEMU). The console log is kept in the runs directory.
pub async fn boot_to_ready(
    qemu: &Path,
    images: &Images,
    which: Which,
    accel: Accel,
    memory_mib: u64,
    timeout: Duration,
    dirs: &Dirs,
) -> Result<BootReport> {
    let runs = dirs.data.join("runs");
    std::fs::create_dir_all(&runs).ctx(|| format!("creating {}", runs.display()))?;
    let scratch = crate::bootstrap::socket_dir(
        &crate::store::Store::new(dirs),
        &format!("boot-{}-", which.name()),
    )?;
    let dir = scratch.path();
    let (rootfs, initrd, marker) = match which {
        Which::Guest => (&images.guest, &images.guest_initrd, GUEST_READY_MARKER),
        Which::Controller => (
            &images.controller,
            &images.controller_initrd,
            agent::READY_MARKER,
        ),
    };
    let overlay = dir.join("disk.qcow2");
    create_overlay(&rootfs.disk, &overlay).await?;
    let machine = qemu_info::resolve_machine(qemu, "q35").await?;
    let short = ShortDir::open(dir)?;
    let control = short.join("control.sock");
    let spec = VmSpec {
        name: which.name().into(),
        accel,
        machine,
        cpu: accel.cpu_model().into(),
        cpus: 1,
        memory_mib,
        memory: Memory::Anonymous,
        boot: Boot::Kernel {
            kernel: images.kernel.vmlinuz.clone(),
            initrd: initrd.clone(),
            append: kernel_append(&rootfs.init),
        },
        drives: vec![Drive {
            path: overlay,
            format: DiskFormat::Qcow2,
            interface: DriveInterface::VirtioBlk,
            readonly: false,
        }],
        nics: vec![Nic {
            model: NicModel::VirtioNet,
            mac: "52:54:00:00:00:01".into(),
            link: Link::UnixDgram {
                local: short.join("link-local.sock"),
                remote: short.join("link-peer.sock"),
            },
        }],
        ports: match which {
            Which::Controller => vec![SerialPort {
                name: agent::CONTROL_PORT.into(),
                socket: control.clone(),
            }],
            Which::Guest => vec![],
        },
        shares: vec![],
        console_log: dir.join("console.log"),
        qmp_socket: short.join("qmp.sock"),
        rtc: Rtc::default(),
        incoming: false,
        inherit: Some(short.clone()),
    };
    let keep = runs.join(format!("last-boot-{}.log", which.name()));
    let result = boot_and_stop(qemu, spec, which, marker, timeout, &control).await;
    // Keep the console log for the user, whatever happened; drop disks and sockets.
    std::fs::rename(dir.join("console.log"), &keep).ctx(|| format!("saving {}", keep.display()))?;
    Ok(BootReport {
        ready_after: result?,
        console_log: keep,
    })
}

async fn boot_and_stop(
    qemu: &Path,
    spec: VmSpec,
    which: Which,
    marker: &str,
    timeout: Duration,
    control: &Path,
) -> Result<Duration> {
    let started = Instant::now();
    let mut vm = Vm::start(qemu, spec)?;
    vm.wait_for_console(marker, timeout).await?;
    let ready_after = started.elapsed();
    match which {
        Which::Controller => {
            let mut channel =
                crate::control::Control::connect(control, Duration::from_secs(10)).await?;
            let pong = channel.ping().await?;
            tracing::debug!(?pong, "agent answered");
            channel.poweroff().await?;
            let status = tokio::time::timeout(Duration::from_secs(30), vm.process.wait())
                .await
                .map_err(|_| {
                    Error::Other("the controller did not power off within 30 s".into())
                })??;
            if !status.success() {
                return Err(Error::Other(format!(
                    "QEMU exited with {status} after the controller powered off"
                )));
            }
        }
        Which::Guest => vm.shutdown(Duration::from_secs(10)).await?,
    }
    Ok(ready_after)
}
