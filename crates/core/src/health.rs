//! Booting one image on a throwaway overlay: the health check behind `guestbox boot` and
//! the image tests. The image itself is never written.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use link::{markers, net, proto};

use crate::host::Dirs;
use crate::images::{kernel_append, Images};
use crate::machine::confine::{self, Policy};
use crate::machine::qemu::QemuFacts;
use crate::machine::spec::{
    Accel, Boot, DiskFormat, Drive, DriveInterface, Memory, Nic, NicModel, Rtc, SerialPort, VmSpec,
};
use crate::machine::{overlay, Vm};
use crate::pair::control::Control;
use crate::pair::{End, PairSockets, RunDir, CONTROL_SOCKET};
use crate::store::Store;
use crate::{Error, IoContext, Result};

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
    let runs = Store::new(dirs).runs;
    let scratch = RunDir::create(&runs, &format!("boot-{}-", which.name()))?;
    let dir = scratch.path();
    let (rootfs, initrd, marker) = match which {
        Which::Guest => (&images.guest, &images.guest_initrd, markers::GUEST_READY),
        Which::Controller => (
            &images.controller,
            &images.controller_initrd,
            markers::CONTROLLER_READY,
        ),
    };
    let disk = dir.join("disk.qcow2");
    overlay::create(&rootfs.disk, &disk).await?;
    let machine = QemuFacts::of(&dirs.cache, qemu)
        .await?
        .machine(qemu, "q35")?;
    let sockets = PairSockets::new(dir)?;
    // No 9p device: as root, QEMU also sees an empty root.
    let confinement = Policy::for_host(&dirs.cache, qemu)
        .await?
        .plain()
        .in_empty_root(&confine::empty_root(dir)?);
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
            path: disk,
            format: DiskFormat::Qcow2,
            interface: DriveInterface::VirtioBlk,
            readonly: false,
        }],
        nics: vec![Nic {
            model: NicModel::VirtioNet,
            mac: net::mac_string(
                match which {
                    Which::Guest => net::GUEST_MAC,
                    Which::Controller => net::CONTROLLER_MAC,
                },
                ':',
            ),
            // The peer's end stays with guestbox, unread: one VM alone has nobody to talk to.
            link: sockets.link(End::Guest),
        }],
        ports: match which {
            Which::Controller => vec![SerialPort {
                name: proto::CONTROL_PORT.into(),
                socket: sockets.control(),
            }],
            Which::Guest => vec![],
        },
        shares: vec![],
        console_log: dir.join("console.log"),
        qmp_socket: sockets.socket("qmp.sock"),
        rtc: Rtc::default(),
        generation_id: None,
        incoming: false,
        platform: Default::default(),
        inherit: sockets.inherit(),
        cwd: None,
        confinement,
    };
    let keep = runs.join(format!("last-boot-{}.log", which.name()));
    let result = boot_and_stop(qemu, spec, which, marker, timeout, &sockets).await;
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
    sockets: &PairSockets,
) -> Result<Duration> {
    let started = Instant::now();
    let mut vm = Vm::start(qemu, spec).await?;
    vm.wait_for_console(marker, timeout).await?;
    let ready_after = started.elapsed();
    match which {
        Which::Controller => {
            let mut channel = Control::connect(
                &sockets.control(),
                &sockets.real(CONTROL_SOCKET),
                Duration::from_secs(10),
            )
            .await?;
            let pong = channel.ping().await?;
            tracing::debug!(?pong, "agent answered");
            channel.poweroff().await?;
            let console = vm.spec.console_log.clone();
            let status = tokio::time::timeout(Duration::from_secs(30), vm.process.wait())
                .await
                .map_err(|_| Error::ControllerTimeout {
                    what: "powering off",
                    seconds: 30,
                    console: console.clone(),
                    tail: crate::host::process::tail_of_file(&console, 15),
                })??;
            if !status.success() {
                return Err(Error::Command {
                    what: "QEMU (controller)".into(),
                    status: status.to_string(),
                    detail: vm.process.stderr_tail(5),
                });
            }
        }
        Which::Guest => vm.shutdown(Duration::from_secs(10)).await?,
    }
    Ok(ready_after)
}
