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
    let guest = Guest::new(Flavour::Bios, &iso.path);
    guest.create_disk();
    let mut run = guest.start(0);
    let (status, took) = run.wait_exit(Duration::from_secs(900));
    drop(run);
    let console = guest.console(0);
    assert_bootstrap_ok(&console);
    assert!(status.success(), "QEMU exited with {status}");
    eprintln!("windows (BIOS) install: {:.1} s", took.as_secs_f64());
    save_installed(&guest, &installed_dir(Flavour::Bios, &iso));
}

#[test]
fn windows_bios_first_boot_serves_ssh_to_the_controller_key_only() {
    let _ = installed(Flavour::Bios);
    let _vm = vm_lock();
    let (_guest, _run, ctl, _) = boot(Flavour::Bios, None);
    let (ctl_key, _) = key("controller");
    let user = settings(Flavour::Bios).ssh_user().to_string();
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
    // The namesakes' errors: options cygpath does not have, programs Windows does not have
    // (cmd's 9009, which Cygwin truncates to 8 bits as it does for any Windows status),
    // a mapping that does not exist.
    let (code, _, err) = ssh(ctl.ssh_port, &ctl_key, &user, &[], "cygpath -x /", b"");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown option"), "{err}");
    let (code, _, err) = ssh(
        ctl.ssh_port,
        &ctl_key,
        &user,
        &[],
        "cmd /c nosuchprogram",
        b"",
    );
    assert_eq!(code, 9009 % 256, "{err}");
    assert!(
        err.contains("is not recognized as an internal or external command"),
        "{err}"
    );
    let (code, out, _) = ssh(
        ctl.ssh_port,
        &ctl_key,
        &user,
        &[],
        "cmd /c \"net use Q: /delete\"",
        b"",
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("The network connection could not be found."),
        "{out}"
    );
    // UTC: the RTC starts at UTC (`-rtc base=utc`) and is read as local time of UTC.
    let (guest_now, host_now) = clocks(ctl.ssh_port, &ctl_key, &user);
    assert!(
        (guest_now - host_now).abs() < 120,
        "guest {guest_now}, host {host_now}"
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

#[test]
fn windows_bios_runs_guestbox_run_scripts_over_smb3_and_rejects_broken_ones() {
    let _ = installed(Flavour::Bios);
    let password = "Smb-pa55word";
    let (share, smb, tag) = hello_share(password);
    let _vm = vm_lock();
    let (_guest, _run, ctl, _) = boot(Flavour::Bios, Some(smb.addr));
    let (ctl_key, _) = key("controller");
    let user = settings(Flavour::Bios).ssh_user().to_string();
    let bash_s = |script: &[u8]| ssh(ctl.ssh_port, &ctl_key, &user, &[], "bash -s", script);
    // As the bootstrap does once: the share root mapped to G: and mounted in Cygwin.
    let setup = setup_script(password);
    let (code, out, err) = bash_s(setup.as_bytes());
    assert_eq!((code, out.as_str()), (0, NET_USE_OK), "{err}");
    // The same again (a revived snapshot still holds the letter): `net use /delete` first.
    let (code, out, err) = bash_s(setup.as_bytes());
    assert_eq!((code, out.as_str()), (0, NET_USE_OK), "{err}");
    // A run binds its volume slot (a directory of the mapped share) at /src.
    let script = run_script(
        &[
            "sh",
            "-c",
            "cat hello.txt; echo \"$GREETING\"; pwd; echo made >made.txt; exit 7",
        ],
        password,
    );
    let expected = "from the share\nhello from the host\n/src\n";
    for _ in 0..2 {
        let (code, out, err) = bash_s(script.as_bytes());
        assert_eq!((code, out.as_str()), (7, expected), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(share.path().join(&tag).join("made.txt")).unwrap(),
        "made\n"
    );

    // A malformed `net use` line: net's syntax error, the script's setup failure (125).
    let broken = setup.replace("/persistent:yes", "/persistent:maybe");
    assert_ne!(broken, setup);
    let (code, out, err) = bash_s(broken.as_bytes());
    assert_eq!(code, 125, "{out}{err}");
    assert!(out.contains("The syntax of this command is"), "{out}{err}");
    assert!(err.contains("mapping the SMB shares failed"), "{err}");
    // A wrong password: System error 86, as Windows says it.
    let wrong = setup_script("not-the-password");
    let (code, out, err) = bash_s(wrong.as_bytes());
    assert_eq!(code, 125, "{out}{err}");
    assert!(out.contains("System error 86 has occurred"), "{out}{err}");
    // A mount option Cygwin's mount does not have.
    let bad_mount = setup.replace("-o binary,noacl G:/", "-o binary,noacl,nosuch G:/");
    assert_ne!(bad_mount, setup);
    let (code, out, err) = bash_s(bad_mount.as_bytes());
    assert_eq!(code, 125, "{out}{err}");
    assert!(err.contains("invalid option - 'nosuch'"), "{err}");
    // A Windows path where Cygwin's mount wants a POSIX mount point.
    let (code, _, err) = ssh(
        ctl.ssh_port,
        &ctl_key,
        &user,
        &[],
        "mount -f -o binary C:/ 'D:\\x'",
        b"",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid mount point"), "{err}");
}
