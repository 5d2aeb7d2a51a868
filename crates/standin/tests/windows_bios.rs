//! The stand-in under the `windows` profile on BIOS (q35, SeaBIOS, AHCI, e1000e): the
//! install stage with guestbox's exact command line, then the first boot, SSH through a
//! test double of the controller.
mod common;

use std::time::Duration;

use common::*;

#[test]
fn windows_bios_installs_and_powers_off_with_the_bootstrap_ok_marker() {
    let iso = iso();
    let _vm = vm_lock();
    let guest = Guest::new(Flavour::WindowsBios, &iso.path);
    guest.create_disk();
    let mut run = guest.start(0);
    let (status, took) = run.wait_exit(Duration::from_secs(900));
    drop(run);
    let console = guest.console(0);
    assert_bootstrap_ok(&console);
    assert!(status.success(), "QEMU exited with {status}");
    eprintln!("windows (BIOS) install: {:.1} s", took.as_secs_f64());
    save_installed(
        &guest,
        &cache_dir().join(format!(
            "installed-{}-{}",
            Flavour::WindowsBios.name(),
            iso.key
        )),
    );
}

#[test]
fn windows_bios_first_boot_serves_ssh_to_the_controller_key_only() {
    let _ = installed(Flavour::WindowsBios);
    let _vm = vm_lock();
    let (_guest, _run, ctl, _) = boot(Flavour::WindowsBios, None);
    let (ctl_key, _) = key("controller");
    let user = settings(Flavour::WindowsBios).ssh_user().to_string();
    let (code, out, err) = ssh(
        ctl.ssh_port,
        &ctl_key,
        &user,
        &[],
        "echo hello; id -un; cygpath -w /usr/bin; cygpath -u 'C:\\Windows\\System32'; cygpath -m /cygdrive/c/x; echo $HOME",
        b"",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "hello\n{user}\nC:\\cygwin\\bin\n/cygdrive/c/Windows/System32\nC:/x\n/home/{user}\n"
        ),
        "{err}"
    );
    let (intruder, _) = key("intruder");
    let (code, _, err) = ssh(ctl.ssh_port, &intruder, &user, &[], "true", b"");
    assert_eq!(code, 255, "another key was let in: {err}");
    assert!(err.contains("Permission denied (publickey)"), "{err}");
    let (code, _, err) = ssh(ctl.ssh_port, &ctl_key, "root", &[], "true", b"");
    assert_eq!(code, 255, "root logged in: {err}");
    let (code, _, err) = ssh(
        ctl.ssh_port,
        &ctl_key,
        &user,
        &[
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
        "true",
        b"",
    );
    assert_eq!(code, 255, "a password login was offered: {err}");
    assert!(err.contains("Permission denied (publickey)"), "{err}");
}
