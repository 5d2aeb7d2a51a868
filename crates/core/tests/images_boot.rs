//! The default images really boot under TCG, and failures say why.

mod common;

use std::time::Duration;

use guestbox::health::{self, Which};
use guestbox::images::kernel_append;
use guestbox::machine::overlay::create as create_overlay;
use guestbox::machine::spec::{Boot, DiskFormat, Drive, DriveInterface, Memory, Rtc, VmSpec};
use guestbox::machine::Accel;
use guestbox::machine::Vm;
use guestbox::Error;
use link::markers::BOOT_FAILED;

#[tokio::test]
async fn guest_image_boots_to_sshd_ready() {
    let images = common::images();
    let report = health::boot_to_ready(
        &common::qemu(),
        images,
        Which::Guest,
        Accel::Tcg,
        512,
        Duration::from_secs(240),
        &common::dirs(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let console = std::fs::read_to_string(&report.console_log).unwrap();
    assert!(console.contains("GUESTBOX-READY guest"), "{console}");
}

#[tokio::test]
async fn controller_image_boots_and_its_agent_answers_then_powers_off() {
    let images = common::images();
    // boot_to_ready pings the agent and requires QEMU to exit 0 after the agent's poweroff.
    let report = health::boot_to_ready(
        &common::qemu(),
        images,
        Which::Controller,
        Accel::Tcg,
        512,
        Duration::from_secs(240),
        &common::dirs(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let console = std::fs::read_to_string(&report.console_log).unwrap();
    assert!(
        console.contains(link::markers::CONTROLLER_READY),
        "{console}"
    );
    assert!(console.contains("Power down"), "{console}");
}

fn guest_spec(dir: &std::path::Path, init: &str, disk: std::path::PathBuf) -> VmSpec {
    let images = common::images();
    VmSpec {
        name: "guest".into(),
        accel: Accel::Tcg,
        machine: "q35".into(),
        cpu: "qemu64".into(),
        cpus: 1,
        memory_mib: 512,
        memory: Memory::Anonymous,
        boot: Boot::Kernel {
            kernel: images.kernel.vmlinuz.clone(),
            initrd: images.guest_initrd.clone(),
            append: kernel_append(init),
        },
        drives: vec![Drive {
            path: disk,
            format: DiskFormat::Qcow2,
            interface: DriveInterface::VirtioBlk,
            readonly: false,
        }],
        nics: vec![],
        ports: vec![],
        shares: vec![],
        console_log: dir.join("console.log"),
        qmp_socket: dir.join("qmp.sock"),
        rtc: Rtc::default(),
        generation_id: None,
        incoming: false,
        platform: Default::default(),
        inherit: None,
        cwd: None,
        // The full sandbox, QEMU staying who the test is.
        confinement: Default::default(),
    }
}

#[tokio::test]
async fn broken_root_disk_init_fails_fast_with_the_console_tail() {
    let images = common::images();
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("disk.qcow2");
    create_overlay(&images.guest.disk, &overlay).await.unwrap();
    let mut vm = Vm::start(
        &common::qemu(),
        guest_spec(dir.path(), "/no/such/init", overlay),
    )
    .await
    .unwrap();
    let err = vm
        .wait_for_console("GUESTBOX-READY guest", Duration::from_secs(240))
        .await
        .unwrap_err();
    match &err {
        Error::VmExited { tail, .. } => {
            assert!(tail.contains(BOOT_FAILED), "{tail}");
            assert!(tail.contains("/no/such/init"), "{tail}");
        }
        other => panic!("expected VmExited, got {other}"),
    }
    assert_eq!(err.exit_code(), 125);
}

#[tokio::test]
async fn boot_that_never_gets_ready_times_out_with_the_console_tail() {
    let images = common::images();
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("disk.qcow2");
    create_overlay(&images.guest.disk, &overlay).await.unwrap();
    let mut vm = Vm::start(
        &common::qemu(),
        guest_spec(dir.path(), &images.guest.init, overlay),
    )
    .await
    .unwrap();
    // The guest boots fine but never prints this marker.
    let err = vm
        .wait_for_console("A MARKER NOBODY PRINTS", Duration::from_secs(40))
        .await
        .unwrap_err();
    let pid = vm.process.pid().expect("still running");
    match &err {
        Error::BootTimeout { seconds, tail, .. } => {
            assert_eq!(*seconds, 40);
            assert!(
                tail.contains("GUESTBOX-READY guest"),
                "console tail missing: {tail}"
            );
        }
        other => panic!("expected BootTimeout, got {other}"),
    }
    assert!(err.to_string().contains("did not become ready within 40 s"));
    drop(vm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    assert!(!alive, "QEMU {pid} outlived its Vm");
}

#[tokio::test]
async fn the_image_is_never_written_by_a_boot() {
    let images = common::images();
    let before = std::fs::read(&images.guest.disk).unwrap();
    let before = blake3::hash(&before);
    health::boot_to_ready(
        &common::qemu(),
        images,
        Which::Guest,
        Accel::Tcg,
        512,
        Duration::from_secs(240),
        &common::dirs(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let after = blake3::hash(&std::fs::read(&images.guest.disk).unwrap());
    assert_eq!(before, after, "booting changed the guest image");
}
