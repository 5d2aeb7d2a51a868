//! The stand-in under the `windows-xp` profile (pc/i440FX, IDE, rtl8139, winnt.sif, 32-bit
//! Cygwin, SMB1): guestbox's exact install and first-boot command lines.
mod common;

use std::time::Duration;

use common::*;

#[test]
fn windows_xp_installs_boots_and_maps_the_share_over_smb1() {
    let iso = iso();
    let flavour = Flavour::Xp;
    {
        let _vm = vm_lock();
        let guest = Guest::new(flavour, &iso.path);
        guest.create_disk();
        let mut run = guest.start(0);
        let (status, took) = run.wait_exit(Duration::from_secs(900));
        drop(run);
        assert_bootstrap_ok(&guest.console(0));
        assert!(status.success(), "QEMU exited with {status}");
        eprintln!("windows-xp install: {:.1} s", took.as_secs_f64());
        save_installed(&guest, &installed_dir(flavour, &iso));
    }
    let password = "Smb-pa55word";
    let (_share, smb, _) = hello_share(password);
    let _vm = vm_lock();
    let (_guest, _run, ctl, _) = boot(flavour, Some(smb.addr));
    let (ctl_key, _) = key("controller");
    let user = settings(flavour).ssh_user().to_string();
    assert_eq!(user, "Administrator");
    // The bootstrap's mapping (SMB1 for XP), then a run binding its slot.
    let (code, out, err) = ssh(
        ctl.ssh_port,
        &ctl_key,
        &user,
        &[],
        "bash -s",
        setup_script(password).as_bytes(),
    );
    assert_eq!((code, out.as_str()), (0, NET_USE_OK), "{err}");
    let script = run_script(
        &[
            "sh",
            "-c",
            "cat hello.txt; grep -o 'vers=[0-9.]*' /proc/mounts | sort -u",
        ],
        password,
    );
    let (code, out, err) = ssh(
        ctl.ssh_port,
        &ctl_key,
        &user,
        &[],
        "bash -s",
        script.as_bytes(),
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "from the share\nvers=1.0\n"),
        "{err}"
    );
    // W. Europe Standard Time: QEMU starts the RTC at the host's local time (UTC here) and
    // the guest reads it as Berlin's local time, as Windows does: its clock runs behind by
    // Berlin's offset. (guestbox's runs set the time from the host.)
    let (code, zone, err) = ssh(ctl.ssh_port, &ctl_key, &user, &[], "date +%z", b"");
    assert_eq!(code, 0, "{err}");
    let z = zone.trim();
    assert!(z == "+0100" || z == "+0200", "the guest's zone is {z}");
    let offset = z[1..3].parse::<i64>().unwrap() * 3600;
    let (guest_now, host_now) = clocks(ctl.ssh_port, &ctl_key, &user);
    assert!(
        (guest_now + offset - host_now).abs() < 120,
        "guest {guest_now} (+{offset} s) vs host {host_now}"
    );
    let (intruder, _) = key("intruder");
    let (code, _, err) = ssh(ctl.ssh_port, &intruder, &user, &[], "true", b"");
    assert_eq!(code, 255, "another key was let in: {err}");
}
