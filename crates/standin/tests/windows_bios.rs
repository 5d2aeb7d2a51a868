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
