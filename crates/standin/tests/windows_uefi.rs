//! The stand-in under the `windows` profile with UEFI: with Secure Boot (OVMF's Secure Boot
//! build, Microsoft's keys enrolled: Debian's shim, GRUB and kernel are signed under them)
//! and a TPM 2.0 from swtpm, no Windows 11 bypass keys; and plain OVMF with the bypass
//! keys. guestbox's exact install and first-boot command lines.
mod common;

use std::time::Duration;

use common::*;

#[test]
fn windows_uefi_secure_boot_tpm_installs_and_boots_with_the_tpm() {
    let iso = iso();
    let flavour = Flavour::UefiTpm;
    {
        let _vm = vm_lock();
        let guest = Guest::new(flavour, &iso.path);
        guest.create_disk();
        let mut run = guest.start(0);
        let (status, took) = run.wait_exit(Duration::from_secs(900));
        drop(run);
        let console = guest.console(0);
        assert_bootstrap_ok(&console);
        assert!(status.success(), "QEMU exited with {status}");
        eprintln!(
            "windows (UEFI, Secure Boot, TPM) install: {:.1} s",
            took.as_secs_f64()
        );
        save_installed(&guest, &installed_dir(flavour, &iso));
    }
    let _vm = vm_lock();
    let (_guest, _run, ctl, _) = boot(flavour, None);
    let (ctl_key, _) = key("controller");
    let user = settings(flavour).ssh_user().to_string();
    let (code, out, err) = ssh(
        ctl.ssh_port,
        &ctl_key,
        &user,
        &[],
        "cat /sys/class/tpm/tpm0/tpm_version_major; od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | awk '{print $NF}'",
        b"",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "2\n1\n"),
        "TPM 2.0 and Secure Boot on: {err}"
    );
}

#[test]
fn windows_uefi_tpm_refuses_to_boot_without_its_tpm() {
    let iso = iso();
    let flavour = Flavour::UefiTpm;
    let inst = installed(flavour);
    let _vm = vm_lock();
    let mut guest = Guest::from_installed(flavour, &inst, &iso.path);
    // The same machine with the TPM unplugged.
    guest.stages[1].spec.platform.tpm = None;
    let mut run = guest.start(1);
    run.wait_console(standin::BOOT_FAILED, Duration::from_secs(300));
    let (status, _) = run.wait_exit(Duration::from_secs(60));
    let console = run.console_text();
    assert!(
        console.contains("needed a TPM 2.0"),
        "{}",
        tail(&console, 20)
    );
    assert!(!console.contains(standin::SSHD_READY));
    eprintln!("powered off: {status}");
}

#[test]
fn windows_uefi_without_secure_boot_installs_and_boots() {
    let iso = iso();
    let flavour = Flavour::Uefi;
    let _ = installed(flavour);
    let _vm = vm_lock();
    let (_guest, _run, ctl, _) = boot(flavour, None);
    let (ctl_key, _) = key("controller");
    let user = settings(flavour).ssh_user().to_string();
    let (code, out, err) = ssh(
        ctl.ssh_port,
        &ctl_key,
        &user,
        &[],
        "test -d /sys/firmware/efi && echo uefi; od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | awk '{print $NF}'; test -e /sys/class/tpm/tpm0 || echo no-tpm",
        b"",
    );
    assert_eq!((code, out.as_str()), (0, "uefi\n0\nno-tpm\n"), "{err}");
    drop(iso);
}
