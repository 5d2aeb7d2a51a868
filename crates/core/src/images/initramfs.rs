//! The initramfs: busybox and a short init that loads exactly the modules a role needs,
//! mounts the root disk and switches to it. Written as a cpio archive in Rust.

use std::fs;
use std::path::PathBuf;

use media::cpio::Initramfs;
use serde::Serialize;

use super::cache::{ArtifactCache, Key};
use super::kernel::{Kernel, COMMON_MODULES, CONTROLLER_MODULES, GUEST_MODULES};
use super::{Provenance, RECIPE_VERSION};
use crate::{Error, IoContext, Result};
use link::markers;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Guest,
    Controller,
}

impl Role {
    pub fn modules(self) -> Vec<&'static str> {
        let extra = match self {
            Role::Guest => GUEST_MODULES,
            Role::Controller => CONTROLLER_MODULES,
        };
        COMMON_MODULES.iter().chain(extra).copied().collect()
    }

    fn name(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Controller => "controller",
        }
    }
}

/// Kernel parameters: `guestbox.init=PATH` is what to exec on the root disk;
/// `guestbox.probe` stops right after the modules load (used to test an accelerator).
fn init_script() -> String {
    format!(
        r#"#!/bin/sh
export PATH=/bin
fail() {{
    echo "{failed}: $*"
    sync
    poweroff -f
}}
mount -t devtmpfs devtmpfs /dev || fail "cannot mount /dev"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "guestbox-initramfs: cannot load module $m"
done < /etc/modules.load
init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        guestbox.init=*) init="${{arg#guestbox.init=}}" ;;
        guestbox.probe) echo "{probe}"; poweroff -f ;;
    esac
done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ "$i" -gt 500 ] && fail "no root disk (/dev/vda) appeared"
    sleep 0.02
done
mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount the root disk /dev/vda"
[ -x "/newroot$init" ] || fail "the root disk has no executable $init"
if [ -x /bin/guestbox-agent ]; then
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /newroot/run || fail "cannot mount /run"
    cp /bin/guestbox-agent /newroot/run/guestbox-agent || fail "cannot install the agent"
fi
if [ -x /bin/guestbox-exec ]; then
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /newroot/run || fail "cannot mount /run"
    mkdir -p /newroot{run_dir} && cp /bin/guestbox-exec /newroot{exec} || fail "cannot install the exec helper"
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot "$init"
"#,
        failed = markers::BOOT_FAILED,
        probe = markers::PROBE_OK,
        run_dir = link::job::GUEST_RUN_DIR,
        exec = link::job::EXEC_HELPER,
    )
}

const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "insmod",
    "switch_root",
    "poweroff",
    "sleep",
    "cat",
    "echo",
    "sync",
    "cp",
    "mkdir",
];

#[derive(Serialize)]
struct Inputs {
    #[serde(flatten)]
    provenance: Provenance,
    role: Role,
    init: String,
}

/// Builds the initramfs for `role` from the modules in `kernel`; returns the file's path.
pub async fn ensure(cache: &ArtifactCache, kernel: &Kernel, role: Role) -> Result<PathBuf> {
    let inputs = Inputs {
        provenance: Provenance {
            recipe: RECIPE_VERSION,
            index: None,
            // The kernel artifact's directory name is its content hash.
            kernel: Some(
                kernel
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| kernel.dir.display().to_string()),
            ),
            agent: Some(crate::store::agent_id()),
        },
        role,
        init: init_script(),
    };
    let key = Key::new(&format!("initrd-{}", role.name()), &inputs)?;
    let dir = cache
        .get_or_build(&key, &inputs, |out| async move {
            let bytes = build(kernel, role)?;
            let path = out.join("initrd.cpio");
            fs::write(&path, bytes).ctx(|| format!("writing {}", path.display()))
        })
        .await?;
    Ok(dir.join("initrd.cpio"))
}

/// The archive's bytes.
pub fn build(kernel: &Kernel, role: Role) -> Result<Vec<u8>> {
    let mut fs_ = Initramfs::new();
    for dir in ["dev", "proc", "sys", "newroot", "etc"] {
        fs_.dir(dir, 0o755)?;
    }
    fs_.char_device("dev/console", 0o600, 5, 1)?;
    fs_.file("init", 0o755, init_script().into_bytes())?;
    let busybox =
        fs::read(&kernel.busybox).ctx(|| format!("reading {}", kernel.busybox.display()))?;
    fs_.file("bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        fs_.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    // guestbox's own programs ride in the initramfs so that the disks do not change (and
    // need not be rebuilt) whenever guestbox does.
    let (program, bytes) = match role {
        Role::Controller => ("bin/guestbox-agent", crate::AGENT),
        Role::Guest => ("bin/guestbox-exec", crate::EXEC_HELPER),
    };
    fs_.file(program, 0o755, bytes.to_vec())?;
    let order = kernel.load_order(&role.modules());
    for name in &order {
        let path = kernel
            .module_path(name)
            .ok_or_else(|| Error::DamagedArtifact {
                path: kernel.dir.clone(),
                problem: format!("the kernel artifact has no module {name}"),
            })?;
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        fs_.file(&format!("lib/modules/{name}.ko"), 0o644, bytes)?;
    }
    let mut list = order.join("\n");
    list.push('\n');
    fs_.file("etc/modules.load", 0o644, list.into_bytes())?;
    fs_.to_bytes().map_err(Error::from)
}
