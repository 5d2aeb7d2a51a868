//! Choosing the accelerator: KVM when it really runs a guest, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: on some hosts (nested, special VMs) KVM accepts a
//! guest and then hangs it. So `auto` boots guestbox's own kernel under KVM to a marker with
//! a short timeout, once per host boot, QEMU and kernel, and remembers the answer.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use link::markers;

use super::spec::{Accel, Boot, Memory, Rtc, VmSpec};
use super::Vm;
use crate::host::{Dirs, ShortDir};
use crate::progress::Progress;
use crate::{Error, IoContext, Result};

/// What the user asked for (`--accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Verdict {
    key: String,
    kvm_works: bool,
    reason: String,
}

fn host_key(qemu: &Path, kernel: &Path) -> String {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let qemu_meta = fs::metadata(qemu).and_then(|m| m.modified()).ok();
    format!(
        "{}|{}|{:?}|{}",
        boot_id.trim(),
        qemu.display(),
        qemu_meta,
        kernel.display()
    )
}

/// Resolves the choice to an accelerator. `kernel`/`initrd` are what the probe boots.
pub async fn resolve(
    choice: AccelChoice,
    dirs: &Dirs,
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    progress: &Progress,
) -> Result<Accel> {
    match choice {
        AccelChoice::Tcg => return Ok(Accel::Tcg),
        AccelChoice::Kvm => {
            if let Err(reason) = kvm_device_usable() {
                return Err(Error::Usage(format!(
                    "--accel kvm: {reason}; use --accel tcg or auto"
                )));
            }
            return Ok(Accel::Kvm);
        }
        AccelChoice::Auto => {}
    }
    if let Err(reason) = kvm_device_usable() {
        tracing::info!("KVM not used: {reason}");
        return Ok(Accel::Tcg);
    }
    let cache_file = dirs.cache.join("kvm-probe.json");
    let key = host_key(qemu, kernel);
    if let Ok(text) = fs::read(&cache_file) {
        if let Ok(v) = serde_json::from_slice::<Verdict>(&text) {
            if v.key == key {
                if !v.kvm_works {
                    tracing::info!("KVM not used (cached probe): {}", v.reason);
                }
                return Ok(if v.kvm_works { Accel::Kvm } else { Accel::Tcg });
            }
        }
    }
    let step = progress.step("checking whether KVM can run guests");
    let confinement = super::confine::Policy::for_host(&dirs.cache, qemu)
        .await?
        .plain();
    let verdict = match probe(qemu, kernel, initrd, &dirs.cache, &confinement).await {
        Ok(()) => Verdict {
            key,
            kvm_works: true,
            reason: String::new(),
        },
        Err(e) => Verdict {
            key,
            kvm_works: false,
            reason: e.to_string(),
        },
    };
    step.done();
    if !verdict.kvm_works {
        progress.note(&format!(
            "KVM is present but did not boot a test guest within {} s; using TCG (software emulation, much slower). Pass --accel tcg to skip this check.",
            PROBE_TIMEOUT.as_secs()
        ));
    }
    if let Ok(json) = serde_json::to_vec(&verdict) {
        let _ = fs::create_dir_all(&dirs.cache);
        let _ = fs::write(&cache_file, json);
    }
    Ok(if verdict.kvm_works {
        Accel::Kvm
    } else {
        Accel::Tcg
    })
}

/// What is known of KVM here without starting anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// `/dev/kvm` cannot be used (the reason).
    NoDevice(String),
    /// The cached probe booted a test guest under KVM.
    Works,
    /// The cached probe's guest did not run (the reason).
    Hangs(String),
    /// `/dev/kvm` opens, and no probe ran on this host boot yet.
    NotProbed,
}

/// The KVM verdict as far as it is known: the device, then the probe's cached answer.
pub fn known_verdict(dirs: &Dirs) -> Known {
    if let Err(reason) = kvm_device_usable() {
        return Known::NoDevice(reason);
    }
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    match fs::read(dirs.cache.join("kvm-probe.json"))
        .ok()
        .and_then(|t| serde_json::from_slice::<Verdict>(&t).ok())
    {
        Some(v) if v.key.starts_with(boot_id.trim()) => {
            if v.kvm_works {
                Known::Works
            } else {
                Known::Hangs(v.reason)
            }
        }
        _ => Known::NotProbed,
    }
}

fn kvm_device_usable() -> std::result::Result<(), String> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm cannot be opened ({e})"))
}

/// Boots the kernel under KVM with `guestbox.probe` and waits for its marker.
async fn probe(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    scratch: &Path,
    confinement: &super::confine::Confinement,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("kvm-probe-")
        .tempdir_in(scratch)
        .ctx(|| format!("creating a probe directory in {}", scratch.display()))?;
    let confinement = confinement
        .clone()
        .in_empty_root(&super::confine::empty_root(dir.path())?);
    let short = ShortDir::open(dir.path())?;
    let spec = VmSpec {
        name: "kvm-probe".into(),
        accel: Accel::Kvm,
        machine: "q35".into(),
        cpu: Accel::Kvm.cpu_model().into(),
        cpus: 1,
        memory_mib: 256,
        memory: Memory::Anonymous,
        boot: Boot::Kernel {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            append: "console=ttyS0 panic=-1 guestbox.probe".into(),
        },
        drives: vec![],
        nics: vec![],
        ports: vec![],
        shares: vec![],
        console_log: dir.path().join("console.log"),
        qmp_socket: short.join("qmp.sock"),
        rtc: Rtc::default(),
        generation_id: None,
        incoming: false,
        platform: Default::default(),
        inherit: Some(short.clone()),
        cwd: None,
        confinement,
    };
    let mut vm = Vm::start(qemu, spec).await?;
    let result = vm.wait_for_console(markers::PROBE_OK, PROBE_TIMEOUT).await;
    vm.process.kill().await;
    result
}
