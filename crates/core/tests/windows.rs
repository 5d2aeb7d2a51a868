//! Windows guests: the device model per stage as data, the emitted directory, the stage
//! scripts run for real (QEMU paused with -S, driven over QMP, swtpm for the TPM), and the
//! run script executed against stand-ins for the Windows commands.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guestbox::machine::spec::{Boot, DriveInterface, Memory, NicModel};
use guestbox::machine::Accel;
use guestbox::pair::GuestFiles;
use guestbox::profile::windows::{
    self, command_lines, emit, run_script, run_spec, stage_specs, Hardware, StageEnd, WindowsPaths,
    HYPERV_FLAGS, STAGE_FIRST_BOOT, STAGE_INSTALL,
};
use guestbox::profile::{GuestJob, GuestMount};
use guestbox::Error;
use media::cygwin::{CygwinArch, CygwinMirror};
use media::windows::{
    Firmware, Profile, Secret, Win11Requirements, WindowsGeneration, WindowsSettings,
};
use serde_json::{json, Value};

const TEST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGd1ZXN0Ym94dGVzdGtleWd1ZXN0Ym94dGVzdA guestbox@test";

// ---------------------------------------------------------------------------------------
// Fixtures

fn settings(profile: Profile) -> WindowsSettings {
    let mut s = WindowsSettings::new(profile, Secret::new("pw-0xC0FFEE"), TEST_KEY);
    if profile == Profile::WindowsXp {
        s.product_key = Some("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE".to_owned());
    }
    // Not QEMU's default MAC, so a device that ignored the settings would show.
    s.network.nic_mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
    s
}

fn uefi_tpm() -> WindowsSettings {
    let mut s = settings(Profile::Windows);
    s.firmware = Firmware::Uefi;
    s.win11 = Win11Requirements::RealTpmUefi;
    s
}

/// The path of `name`, or a failing test naming the package to install.
fn tool(name: &str, package: &str) -> PathBuf {
    guestbox::host::programs::find(name).unwrap_or_else(|| {
        panic!("the test needs `{name}`, which is not installed: apt-get install {package}")
    })
}

fn require_ovmf() {
    for f in [
        windows::OVMF_CODE,
        windows::OVMF_VARS,
        windows::OVMF_CODE_SECURE_BOOT,
        windows::OVMF_VARS_MS_KEYS,
    ] {
        assert!(
            Path::new(f).is_file(),
            "the test needs {f}, which is not installed: apt-get install ovmf"
        );
    }
}

fn sha512_hex(path: &Path) -> String {
    let out = Command::new(tool("sha512sum", "coreutils"))
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..128].to_owned()
}

/// A hand-made Cygwin mirror in `root`: Base (base-cygwin), openssh, cygrunsrv and the
/// library openssh needs, with their real sizes and SHA-512 sums in setup.ini.
fn fake_mirror(root: &Path, arch: CygwinArch) -> CygwinMirror {
    let dir = root.join("https%3a%2f%2fmirror.example%2fcygwin%2f");
    let a = arch.dir();
    let mut ini = format!(
        "# hand-made for guestbox tests\nrelease: cygwin\narch: {a}\nsetup-timestamp: 1717243200\nsetup-version: 2.932\n\n"
    );
    for (name, category, requires) in [
        ("base-cygwin", "Base", ""),
        ("openssh", "Net", "libcrypto3"),
        ("libcrypto3", "Libs", ""),
        ("cygrunsrv", "Admin", ""),
    ] {
        let rel = format!("{a}/release/{name}/{name}-1.0-1.tar.xz");
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut data = b"\xFD7zXZ\0fake ".to_vec();
        data.extend(name.as_bytes().repeat(40));
        std::fs::write(&path, &data).unwrap();
        ini.push_str(&format!(
            "@ {name}\nsdesc: \"{name}\"\ncategory: {category}\n{}version: 1.0-1\ninstall: {rel} {} {}\n\n",
            if requires.is_empty() {
                String::new()
            } else {
                format!("requires: {requires}\n")
            },
            data.len(),
            sha512_hex(&path)
        ));
    }
    std::fs::create_dir_all(dir.join(a)).unwrap();
    std::fs::write(dir.join(a).join("setup.ini"), ini).unwrap();
    let setup_exe = root.join(arch.setup_exe());
    std::fs::write(&setup_exe, b"MZ fake cygwin setup\0").unwrap();
    CygwinMirror {
        dir,
        setup_exe,
        arch,
    }
}

/// A stand-in for the Windows ISO, at a path that needs quoting for the shell and for QEMU.
fn fake_iso(root: &Path) -> PathBuf {
    let dir = root.join("my isos");
    std::fs::create_dir_all(&dir).unwrap();
    let iso = dir.join("Win,11 eval.iso");
    std::fs::write(&iso, vec![0u8; 8192]).unwrap();
    iso
}

fn paths(dir: &Path) -> WindowsPaths {
    WindowsPaths::new(dir, &dir.join("run"), &dir.join("win.iso")).unwrap()
}

fn after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
    argv.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

fn stage_argv(settings: &WindowsSettings, hw: &Hardware, dir: &Path) -> Vec<Vec<String>> {
    let lines = command_lines(settings, &paths(dir), hw).unwrap();
    assert_eq!(
        lines.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [STAGE_INSTALL, STAGE_FIRST_BOOT]
    );
    lines.into_iter().map(|(_, a)| a).collect()
}

fn assert_no_invtsc(argv: &[String]) {
    assert!(
        !argv.iter().any(|a| a.contains("invtsc")),
        "invtsc blocks migration: {argv:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The device model as data

#[test]
fn windows_bios_install_then_first_boot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = settings(Profile::Windows);
    let hw = Hardware::new(&s, Accel::Tcg);
    let argv = stage_argv(&s, &hw, d);
    let (install, first) = (&argv[0], &argv[1]);

    let mac = s.network.mac_colons();
    assert_eq!(mac, "52:54:00:AB:CD:EF");
    // The answer file names the NIC by the same MAC.
    let answer = media::windows::answer_file(&s).unwrap();
    assert!(String::from_utf8(answer.data)
        .unwrap()
        .contains("<Identifier>52-54-00-AB-CD-EF</Identifier>"));

    for a in [install, first] {
        assert_eq!(after(a, "-machine"), ["q35,hpet=off"]);
        assert_eq!(after(a, "-cpu"), [windows::TCG_CPU]);
        assert_eq!(after(a, "-accel"), ["tcg"]);
        assert_eq!(after(a, "-m"), ["4096M"]);
        assert_eq!(after(a, "-smp"), ["2"]);
        assert_eq!(after(a, "-rtc"), ["base=utc,clock=vm"]);
        let devices = after(a, "-device");
        assert!(devices.contains(&format!("e1000e,netdev=net0,mac={mac}").as_str()));
        assert!(
            devices.contains(&"ide-hd,drive=drive0,bus=ide.0"),
            "{devices:?}"
        );
        assert!(devices.contains(&"VGA"));
        assert!(!devices.iter().any(|d| d.starts_with("tpm")));
        assert!(!a.iter().any(|x| x.contains("if=pflash")));
        // No virtio anything: Windows has no inbox drivers for it.
        assert!(!a.iter().any(|x| x.contains("virtio")), "{a:?}");
        let globals = after(a, "-global");
        for g in [
            "driver=ICH9-LPC,property=disable_s3,value=1",
            "driver=ICH9-LPC,property=disable_s4,value=1",
            "driver=mc146818rtc,property=lost_tick_policy,value=slew",
            "driver=e1000e,property=romfile,value=",
        ] {
            assert!(globals.contains(&g), "{g} missing from {globals:?}");
        }
        assert!(!globals.iter().any(|g| g.contains("kvm-pit")));
        assert_no_invtsc(a);
    }

    // Install: CD first, the Windows ISO and the Cygwin CD, the floppy on an explicit
    // ISA controller (q35 has none), and reboots allowed.
    assert_eq!(after(install, "-boot"), ["order=dc"]);
    let drives = after(install, "-drive");
    let win = d.join("win.iso");
    let cyg = d.join("cygwin.iso");
    assert!(drives.contains(
        &format!(
            "file={},if=none,id=cd0,format=raw,media=cdrom,read-only=on",
            win.display()
        )
        .as_str()
    ));
    assert!(drives.contains(
        &format!(
            "file={},if=none,id=cd1,format=raw,media=cdrom,read-only=on",
            cyg.display()
        )
        .as_str()
    ));
    let devices = after(install, "-device");
    // Each on its own AHCI port, after the disk's.
    let cds: Vec<&&str> = devices.iter().filter(|d| d.starts_with("ide-cd")).collect();
    assert_eq!(
        cds,
        [&"ide-cd,drive=cd0,bus=ide.1", &"ide-cd,drive=cd1,bus=ide.2"]
    );
    assert!(drives.contains(
        &format!(
            "file={},if=none,id=fdd0,format=raw,read-only=on",
            d.join("floppy.img").display()
        )
        .as_str()
    ));
    assert!(devices.contains(&"isa-fdc,id=fdc0"));
    assert!(devices.contains(&"floppy,bus=fdc0.0,unit=0,drive=fdd0"));
    assert!(!drives.iter().any(|d| d.contains("if=floppy")));
    assert_eq!(after(install, "-action"), ["reboot=reset"]);
    assert!(install.contains(&"-no-reboot".to_string()));
    assert_eq!(
        after(install, "-chardev")[0],
        format!(
            "file,id=console,path={}",
            d.join("run/install.console.log").display()
        )
    );

    // First boot: the disk alone, no reboot, no floppy controller, no CD.
    assert_eq!(after(first, "-boot"), ["order=c"]);
    assert_eq!(after(first, "-drive").len(), 1);
    assert!(!after(first, "-device")
        .iter()
        .any(|d| d.starts_with("ide-cd") || d.contains("fdc") || d.starts_with("floppy")));
    assert!(after(first, "-action").is_empty());
    assert_eq!(
        after(first, "-netdev"),
        [format!(
            "dgram,id=net0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            d.join("run/link-guest.sock").display(),
            d.join("run/link-ctl.sock").display()
        )]
    );

    // The stages as data.
    let stages = stage_specs(&s, &paths(d), &hw).unwrap();
    assert_eq!(
        stages[0].end,
        StageEnd::PowerOff {
            ok: media::windows::BOOTSTRAP_OK,
            failed: media::windows::BOOTSTRAP_FAILED
        }
    );
    assert_eq!(
        stages[1].end,
        StageEnd::SshReady {
            address: "192.168.0.1".parse().unwrap(),
            port: 22
        }
    );
    assert!(stages
        .iter()
        .all(|st| st.spec.platform.tpm.is_none() && st.boot_keys.is_none()));
    assert_eq!(stages[0].spec.drives[0].interface, DriveInterface::Ahci);
    assert_eq!(stages[1].spec.memory, Memory::Anonymous);
}

#[test]
fn first_boot_ram_is_written_through_for_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(Profile::Windows);
    let hw = Hardware::new(&s, Accel::Tcg);
    let mut p = paths(dir.path());
    p.first_boot_ram = Some(dir.path().join("guest.ram"));
    let stages = stage_specs(&s, &p, &hw).unwrap();
    assert_eq!(stages[0].spec.memory, Memory::Anonymous);
    assert_eq!(
        stages[1].spec.memory,
        Memory::File {
            path: dir.path().join("guest.ram"),
            shared: true,
            readonly: false
        }
    );
    let argv = stages[1].argv().unwrap();
    assert_eq!(
        after(&argv, "-machine"),
        ["q35,hpet=off,memory-backend=ram"]
    );
}

#[test]
fn revive_is_the_first_boot_machine_waiting_for_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = uefi_tpm();
    let hw = Hardware::new(&s, Accel::Tcg);
    let p = paths(dir.path());
    let first = stage_specs(&s, &p, &hw)
        .unwrap()
        .pop()
        .unwrap()
        .argv()
        .unwrap();
    let ram = dir.path().join("guest.ram");
    // A revive is the recorded guest's machine with the base's RAM mapped private.
    let revive = windows::firmware_guest(&s, &hw).spec(
        hw.accel,
        hw.memory_mib,
        hw.cpus,
        &GuestFiles {
            disk: p.disk.clone(),
            vars: p.ovmf_vars.clone(),
            tpm_state: p.tpm_state.clone(),
        },
        Memory::File {
            path: ram.clone(),
            shared: false,
            readonly: false,
        },
        true,
        &p.sockets,
        "guest",
    );
    assert!(revive.platform.tpm.is_some());
    let argv = revive.argv().unwrap();
    assert_eq!(
        after(&argv, "-object"),
        [format!(
            "memory-backend-file,id=ram,size=4096M,mem-path={},share=off",
            ram.display()
        )]
    );
    assert_eq!(after(&argv, "-incoming"), ["defer"]);
    // Everything else is the snapshot's machine, argument for argument.
    let strip = |a: &[String]| -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < a.len() {
            match a[i].as_str() {
                "-object" | "-incoming" => i += 2,
                "-machine" => {
                    out.push(a[i].clone());
                    out.push(a[i + 1].replace(",memory-backend=ram", ""));
                    i += 2;
                }
                _ => {
                    out.push(a[i].clone());
                    i += 1;
                }
            }
        }
        out
    };
    assert_eq!(strip(&argv), strip(&first));
}

#[test]
fn the_host_has_the_firmware_and_swtpm() {
    require_ovmf();
    tool("swtpm", "swtpm");
    windows::check_host(&uefi_tpm()).unwrap();
    windows::check_host(&settings(Profile::WindowsXp)).unwrap();
}

#[test]
fn kvm_gets_the_host_cpu_with_migratable_hyperv_enlightenments() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(Profile::Windows);
    let hw = Hardware::new(&s, Accel::Kvm);
    for argv in stage_argv(&s, &hw, dir.path()) {
        assert_eq!(after(&argv, "-accel"), ["kvm"]);
        let cpu = after(&argv, "-cpu")[0];
        let flags: Vec<&str> = cpu.split(',').collect();
        assert_eq!(&flags[..2], ["host", "migratable=on"]);
        for f in [
            "hv-relaxed",
            "hv-vapic",
            "hv-spinlocks=0x1fff",
            "hv-time",
            "hv-vpindex",
            "hv-synic",
            "hv-stimer",
        ] {
            assert!(flags.contains(&f), "{f} missing from {cpu}");
        }
        // Enlightenments that tie the guest to one host or block migration.
        for f in flags {
            assert!(
                ![
                    "hv-reenlightenment",
                    "hv-frequencies",
                    "hv-passthrough",
                    "hv-tlbflush-ext",
                    "hv-tlbflush-direct",
                    "hv-evmcs",
                    "hv-emsr-bitmap",
                    "hv-no-nonarch-coresharing",
                    "hv-syndbg",
                    "hv-crash",
                ]
                .iter()
                .any(|bad| f.starts_with(bad)),
                "{f} in {cpu}"
            );
        }
        assert!(after(&argv, "-global")
            .contains(&"driver=kvm-pit,property=lost_tick_policy,value=delay"));
        assert_no_invtsc(&argv);
    }
    // XP gets no enlightenments.
    let xp = settings(Profile::WindowsXp);
    assert_eq!(
        windows::cpu_model(&xp, Accel::Kvm),
        windows::KVM_CPU.to_string()
    );
}

#[test]
fn windows_uefi_with_tpm_and_secure_boot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = uefi_tpm();
    let hw = Hardware::new(&s, Accel::Tcg);
    let p = paths(d);
    let stages = stage_specs(&s, &p, &hw).unwrap();
    for st in &stages {
        let argv = st.argv().unwrap();
        assert_eq!(after(&argv, "-machine"), ["q35,hpet=off,smm=on"]);
        let drives = after(&argv, "-drive");
        assert!(drives.contains(
            &"file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd,if=pflash,unit=0,format=raw,readonly=on"
        ));
        assert!(drives.contains(
            &format!(
                "file={},if=pflash,unit=1,format=raw",
                d.join("OVMF_VARS.fd").display()
            )
            .as_str()
        ));
        assert!(after(&argv, "-global").contains(&"driver=cfi.pflash01,property=secure,value=on"));
        let sock = d.join("run/swtpm.sock");
        assert_eq!(
            after(&argv, "-chardev")
                .into_iter()
                .filter(|c| c.starts_with("socket,id=chrtpm"))
                .collect::<Vec<_>>(),
            [format!("socket,id=chrtpm,path={}", sock.display())]
        );
        assert_eq!(after(&argv, "-tpmdev"), ["emulator,id=tpm0,chardev=chrtpm"]);
        assert!(after(&argv, "-device").contains(&"tpm-tis,tpmdev=tpm0"));
        assert_no_invtsc(&argv);

        // swtpm serves the same socket, TPM 2.0, state in the base.
        let tpm = st
            .spec
            .platform
            .tpm
            .as_ref()
            .expect("a TPM stage starts swtpm");
        let args = guestbox::machine::tpm::argv(tpm, None).unwrap();
        assert_eq!(&args[..2], ["socket", "--tpm2"]);
        assert_eq!(
            after(&args, "--tpmstate"),
            [format!("dir={}", d.join("tpm").display())]
        );
        assert_eq!(
            after(&args, "--ctrl"),
            [format!("type=unixio,path={}", sock.display())]
        );
        assert!(args.contains(&"--terminate".to_string()));
    }
    // Only the install presses the key Windows' UEFI CD loader waits for.
    let keys = stages[0]
        .boot_keys
        .as_ref()
        .expect("keys for the CD prompt");
    assert_eq!(keys.qcode, "spc");
    assert!(keys.during >= Duration::from_secs(60));
    assert!(stages[1].boot_keys.is_none());
}

#[test]
fn windows_uefi_with_bypass_keys_uses_plain_ovmf_and_no_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(Profile::Windows);
    s.firmware = Firmware::Uefi;
    let hw = Hardware::new(&s, Accel::Tcg);
    for argv in stage_argv(&s, &hw, dir.path()) {
        assert_eq!(after(&argv, "-machine"), ["q35,hpet=off"]);
        assert!(after(&argv, "-drive").contains(
            &"file=/usr/share/OVMF/OVMF_CODE_4M.fd,if=pflash,unit=0,format=raw,readonly=on"
        ));
        assert!(!argv
            .iter()
            .any(|a| a.contains("secure") || a.contains("tpm")));
    }
}

#[test]
fn windows_xp_on_i440fx_with_ide_rtl8139_and_the_default_floppy_controller() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = settings(Profile::WindowsXp);
    let hw = Hardware::new(&s, Accel::Tcg);
    let argv = stage_argv(&s, &hw, d);
    let (install, first) = (&argv[0], &argv[1]);
    for a in [install, first] {
        assert_eq!(after(a, "-machine"), ["pc,hpet=off"]);
        assert_eq!(after(a, "-m"), ["512M"]);
        // GMT without daylight saving (index 90) is UTC.
        assert_eq!(after(a, "-rtc"), ["base=utc,clock=vm"]);
        let devices = after(a, "-device");
        assert!(devices.contains(&"rtl8139,netdev=net0,mac=52:54:00:AB:CD:EF"));
        assert!(!devices.iter().any(|d| d.starts_with("e1000")));
        assert!(
            devices.contains(&"ide-hd,drive=drive0,bus=ide.0,unit=0"),
            "{devices:?}"
        );
        assert!(!devices
            .iter()
            .any(|d| d.starts_with("ahci") || d.contains("fdc")));
        let globals = after(a, "-global");
        assert!(globals.contains(&"driver=PIIX4_PM,property=disable_s3,value=1"));
        assert!(globals.contains(&"driver=rtl8139,property=romfile,value="));
        assert!(!a.iter().any(|x| x.contains("hv-") || x.contains("pflash")));
        assert_no_invtsc(a);
    }
    assert_eq!(after(install, "-boot"), ["order=dc"]);
    assert!(after(install, "-drive").contains(
        &format!(
            "file={},if=floppy,format=raw,read-only=on",
            d.join("floppy.img").display()
        )
        .as_str()
    ));
    // The primary channel, master and slave (QEMU puts the disk on the secondary).
    assert_eq!(
        after(install, "-device")
            .into_iter()
            .filter(|d| d.starts_with("ide-cd"))
            .collect::<Vec<_>>(),
        [
            "ide-cd,drive=cd0,bus=ide.1,unit=0",
            "ide-cd,drive=cd1,bus=ide.1,unit=1"
        ]
    );
    assert_eq!(after(first, "-boot"), ["order=c"]);
    assert!(!after(first, "-drive").iter().any(|d| d.contains("floppy")));
}

#[test]
fn nic_and_clock_follow_the_windows_generation_and_zone() {
    let mut s = settings(Profile::Windows);
    assert_eq!(windows::nic_model(&s), NicModel::E1000e);
    s.generation = WindowsGeneration::Legacy;
    assert_eq!(windows::nic_model(&s), NicModel::E1000);
    assert_eq!(windows::rtc(&s).base, "utc");
    s.timezone = "W. Europe Standard Time".into();
    let rtc = windows::rtc(&s);
    assert_eq!(rtc.base, "localtime");
    assert!(rtc.vm_clock);
    let mut xp = settings(Profile::WindowsXp);
    assert_eq!(windows::rtc(&xp).base, "utc");
    xp.timezone = "Greenwich Standard Time".into(); // XP's 90, like UTC
    assert_eq!(windows::rtc(&xp).base, "utc");
    xp.timezone = "W. Europe Standard Time".into();
    assert_eq!(windows::rtc(&xp).base, "localtime");
    xp.timezone = "GMT Standard Time".into(); // London: daylight saving
    assert_eq!(windows::rtc(&xp).base, "localtime");
}

#[test]
fn hardware_and_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let usage = |r: guestbox::Result<Vec<windows::Stage>>| match r {
        Err(Error::Usage(m)) => m,
        other => panic!("expected a usage error, got {other:?}"),
    };

    let s = uefi_tpm();
    let mut hw = Hardware::new(&s, Accel::Tcg);
    hw.memory_mib = 2048;
    let m = usage(stage_specs(&s, &p, &hw));
    assert!(m.contains("4096 MiB") && m.contains("2048 MiB"), "{m}");

    let s = settings(Profile::Windows);
    let mut hw = Hardware::new(&s, Accel::Tcg);
    hw.cpu = "Skylake-Client-v4,+invtsc".into();
    assert!(usage(stage_specs(&s, &p, &hw)).contains("invtsc"));
    hw.cpu = "Nehalem-v1,-invtsc".into();
    assert!(stage_specs(&s, &p, &hw).is_ok());

    let mut hw = Hardware::new(&s, Accel::Tcg);
    hw.machine = "pc".into();
    assert!(usage(stage_specs(&s, &p, &hw)).contains("q35"));
    let mut hw = Hardware::new(&s, Accel::Tcg);
    hw.memory_mib = 1024;
    assert!(usage(stage_specs(&s, &p, &hw)).contains("2048 MiB"));

    let mut arm = settings(Profile::Windows);
    arm.arch = media::windows::WindowsArch::Arm64;
    let hw = Hardware::new(&arm, Accel::Tcg);
    assert!(usage(stage_specs(&arm, &p, &hw)).contains("ARM64"));

    // XP cannot boot from UEFI: the media's own check, as a usage error.
    let mut xp = settings(Profile::WindowsXp);
    xp.firmware = Firmware::Uefi;
    let hw = Hardware::new(&xp, Accel::Tcg);
    assert!(usage(stage_specs(&xp, &p, &hw)).contains("BIOS"));
}

// ---------------------------------------------------------------------------------------
// --emit

#[test]
fn emit_rejects_missing_inputs_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let s = settings(Profile::Windows);
    let hw = Hardware::new(&s, Accel::Tcg);
    let mirror = fake_mirror(r, CygwinArch::X86_64);
    let iso = fake_iso(r);
    let out = r.join("emit");
    let usage = |res: guestbox::Result<windows::EmitReport>| match res {
        Err(Error::Usage(m)) => m,
        other => panic!("expected a usage error, got {other:?}"),
    };

    let m = usage(emit(&out, &s, &r.join("nope.iso"), &mirror, &hw));
    assert!(m.contains("--iso") && m.contains("nope.iso"), "{m}");
    let m = usage(emit(&out, &s, r, &mirror, &hw));
    assert!(m.contains("--iso") && m.contains("not a file"), "{m}");
    let mut bad = mirror.clone();
    bad.dir = r.join("no-mirror");
    let m = usage(emit(&out, &s, &iso, &bad, &hw));
    assert!(
        m.contains("--cygwin-mirror") && m.contains("setup-x86_64.exe --download"),
        "{m}"
    );
    let mut bad = mirror.clone();
    bad.setup_exe = r.join("missing-setup.exe");
    assert!(usage(emit(&out, &s, &iso, &bad, &hw)).contains("missing-setup.exe"));
    // A package the mirror lacks: the media's error, naming it.
    let mut s2 = s.clone();
    s2.cygwin.packages.push("not-in-mirror".into());
    assert!(usage(emit(&out, &s2, &iso, &mirror, &hw)).contains("not-in-mirror"));
    assert!(!out.exists(), "a rejected emit wrote {}", out.display());
}

/// Emits, checks the files, then runs each stage script with stand-ins that record QEMU's
/// arguments and start the real QEMU paused; returns the emit directory's stage scripts.
fn emit_for(settings: &WindowsSettings, root: &Path) -> (windows::EmitReport, PathBuf) {
    let mirror = fake_mirror(root, settings.cygwin.arch);
    let iso = fake_iso(root);
    let hw = Hardware::new(settings, Accel::Tcg);
    let out = root.join("emit");
    let report = emit(&out, settings, &iso, &mirror, &hw).unwrap();

    let answer = settings.profile.answer_file_name();
    for name in [
        "floppy.img",
        "cygwin.iso",
        answer,
        "bootstrap.cmd",
        "bootstrap.sh",
        "authorized_keys",
        "1-install.sh",
        "2-first-boot.sh",
    ] {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    assert_eq!(
        std::fs::metadata(out.join("floppy.img")).unwrap().len(),
        1_474_560
    );
    assert_eq!(report.media.answer_file, out.join(answer));
    assert_eq!(
        report
            .stage_scripts
            .iter()
            .map(|(n, p)| (n.as_str(), p.clone()))
            .collect::<Vec<_>>(),
        [
            (STAGE_INSTALL, out.join("1-install.sh")),
            (STAGE_FIRST_BOOT, out.join("2-first-boot.sh"))
        ]
    );
    // The Cygwin CD holds the mirror (xorriso reads it).
    let xorriso = tool("xorriso", "xorriso");
    let listing = Command::new(xorriso)
        .args(["-indev"])
        .arg(out.join("cygwin.iso"))
        .args(["-find", "/", "-type", "f"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("openssh-1.0-1.tar.xz"), "{listing}");
    assert!(
        listing.contains(settings.cygwin.arch.setup_exe()),
        "{listing}"
    );

    for (_, script) in &report.stage_scripts {
        for (sh, package) in [("bash", "bash"), ("dash", "dash")] {
            let out = Command::new(tool(sh, package))
                .arg("-n")
                .arg(script)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{sh} -n {}: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = std::fs::read_to_string(script).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"));
        assert!(
            text.contains("qemu-system-x86_64 \\\n  -name \\\n"),
            "{text}"
        );
        // The ISO by its absolute path, quoted for the shell, commas doubled for QEMU.
        let canon = std::fs::canonicalize(&iso).unwrap();
        let word = format!(
            "file={},if=none",
            canon.to_str().unwrap().replace(',', ",,")
        );
        assert_eq!(
            text.contains(&word),
            script.ends_with("1-install.sh"),
            "{text}"
        );
        assert!(
            !text.contains("pw-0xC0FFEE"),
            "the password leaked into {}",
            script.display()
        );
    }
    (report, std::fs::canonicalize(&iso).unwrap())
}

#[test]
fn emit_keeps_the_password_owner_only_and_it_reads_back() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let s = settings(Profile::WindowsXp);
    let mirror = fake_mirror(r, CygwinArch::X86);
    let iso = fake_iso(r);
    let hw = Hardware::new(&s, Accel::Tcg);
    let out = r.join("emit");
    assert_eq!(windows::stored_password(&out).unwrap(), None);
    emit(&out, &s, &iso, &mirror, &hw).unwrap();
    let file = out.join(windows::ADMIN_PASSWORD_FILE);
    assert_eq!(std::fs::read(&file).unwrap(), b"pw-0xC0FFEE");
    for f in [&file, &out.join("floppy.img"), &out.join("winnt.sif")] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    assert_eq!(
        windows::stored_password(&out).unwrap(),
        Some(Secret::new("pw-0xC0FFEE"))
    );
    let floppy = std::fs::read(out.join("floppy.img")).unwrap();

    // Emitting again with the stored password gives the same floppy; a file someone
    // opened up is made owner-only again.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut again = s.clone();
    again.password = windows::stored_password(&out).unwrap().unwrap();
    emit(&out, &again, &iso, &mirror, &hw).unwrap();
    assert!(std::fs::read(out.join("floppy.img")).unwrap() == floppy);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A new password replaces the stored one.
    let mut other = s.clone();
    other.password = Secret::new("another-pw");
    emit(&out, &other, &iso, &mirror, &hw).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"another-pw");
    assert!(std::fs::read(out.join("floppy.img")).unwrap() != floppy);

    // An emptied file is a clear error, not an empty password.
    std::fs::write(&file, b"").unwrap();
    match windows::stored_password(&out) {
        Err(Error::Usage(m)) => assert!(m.contains("admin-password"), "{m}"),
        other => panic!("expected a usage error, got {other:?}"),
    }
}

#[test]
fn emit_windows_bios_writes_every_file() {
    let root = tempfile::tempdir().unwrap();
    let s = settings(Profile::Windows);
    let (report, _) = emit_for(&s, root.path());
    assert!(report.ovmf_vars.is_none());
    let install = std::fs::read_to_string(&report.stage_scripts[0].1).unwrap();
    assert!(install.contains("qemu-img create -f qcow2 disk.qcow2 64G"));
    assert!(install.contains("\nexec qemu-system-x86_64 \\\n"));
    assert!(!install.contains("swtpm"));
}

#[test]
fn emit_windows_uefi_tpm_copies_the_variable_store_and_starts_swtpm() {
    require_ovmf();
    let root = tempfile::tempdir().unwrap();
    let s = uefi_tpm();
    let (report, _) = emit_for(&s, root.path());
    let vars = report.ovmf_vars.clone().expect("a variable store");
    assert_eq!(
        std::fs::read(&vars).unwrap(),
        std::fs::read(windows::OVMF_VARS_MS_KEYS).unwrap()
    );
    for (_, script) in &report.stage_scripts {
        let text = std::fs::read_to_string(script).unwrap();
        assert!(
            text.contains("\nswtpm \\\n  socket \\\n  --tpm2 \\\n"),
            "{text}"
        );
        assert!(text.contains("  --terminate &\n"), "{text}");
        assert!(text.contains("while [ ! -S run/swtpm.sock ]; do"), "{text}");
    }
    let install = std::fs::read_to_string(&report.stage_scripts[0].1).unwrap();
    assert!(install.contains("send-key"));
    assert!(install.contains("wait \"$qemu_pid\""));
}

// ---------------------------------------------------------------------------------------
// The stage scripts under the real QEMU (paused) and swtpm

/// A minimal QMP client.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
    /// QEMU's stderr, shown when the connection breaks (a QEMU that died says why there).
    stderr: PathBuf,
}

impl Qmp {
    fn connect(socket: &Path, child: &mut Child, stderr: &Path) -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(socket) {
                break s;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the stage exited ({status}) before QMP came up");
            }
            assert!(
                Instant::now() < deadline,
                "no QMP socket at {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            events: Vec::new(),
            stderr: stderr.to_path_buf(),
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        q.execute("qmp_capabilities", json!({}));
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading QMP: {e}; {}", self.qemu_said()));
        assert!(n > 0, "QMP closed; {}", self.qemu_said());
        serde_json::from_str(&line).unwrap()
    }

    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let msg = json!({"execute": command, "arguments": arguments});
        if let Err(e) = writeln!(self.writer, "{msg}") {
            panic!("sending {command} to QMP: {e}; {}", self.qemu_said());
        }
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            panic!("{command}: {v}");
        }
    }

    fn hmp(&mut self, line: &str) -> String {
        self.execute("human-monitor-command", json!({"command-line": line}))
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn qemu_said(&self) -> String {
        format!(
            "QEMU's stderr: {:?}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn wait_event(&mut self, name: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i);
        }
        loop {
            let v = self.read();
            if v["event"] == name {
                return v;
            }
        }
    }
}

/// Kills what a test started if it is still running when the test ends.
struct Reaper {
    children: Vec<Child>,
    pid_files: Vec<PathBuf>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.pid_files {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stand-ins on PATH: `qemu-system-x86_64` records its arguments and starts the real QEMU
/// paused; `socat` does nothing (the key presses would compete with the test for QMP).
fn stub_dir(root: &Path) -> PathBuf {
    let qemu = tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = root.join("stubs");
    std::fs::create_dir_all(&dir).unwrap();
    let q = dir.join("qemu-system-x86_64");
    std::fs::write(
        &q,
        format!(
            "#!/bin/sh\nprintf '%s\\0' \"$@\" >\"$STUB_ARGS\"\nexec '{}' \"$@\" -S\n",
            qemu.display()
        ),
    )
    .unwrap();
    let socat = dir.join("socat");
    std::fs::write(&socat, "#!/bin/sh\ncat >/dev/null\nexit 0\n").unwrap();
    for f in [q, socat] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// One PCI device as (bus, slot, function, class).
fn pci(q: &mut Qmp) -> Vec<(u64, u64, u64, String)> {
    let r = q.execute("query-pci", json!({}));
    let mut out = Vec::new();
    for bus in r.as_array().unwrap() {
        for d in bus["devices"].as_array().unwrap() {
            out.push((
                d["bus"].as_u64().unwrap(),
                d["slot"].as_u64().unwrap(),
                d["function"].as_u64().unwrap(),
                d["class_info"]["desc"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    out
}

/// Inserted block devices: (device or qdev, file).
fn blocks(q: &mut Qmp) -> Vec<(String, String)> {
    let r = q.execute("query-block", json!({}));
    r.as_array()
        .unwrap()
        .iter()
        .filter_map(|b| {
            let file = b["inserted"]["file"].as_str()?.to_owned();
            Some((b["device"].as_str().unwrap_or("").to_owned(), file))
        })
        .collect()
}

/// Runs every emitted stage script, checks the machine QEMU built over QMP, and that the
/// script handed QEMU exactly [`command_lines`]' arguments. Returns each stage's PCI map.
fn run_emitted_stages(settings: &WindowsSettings) {
    let root = tempfile::tempdir().unwrap();
    let root = if std::env::var_os("GUESTBOX_TEST_KEEP").is_some() {
        let kept = root.keep();
        eprintln!("keeping {}", kept.display());
        kept
    } else {
        root.path().to_path_buf()
    };
    let r = root.as_path();
    let (report, iso) = emit_for(settings, r);
    let out = report.dir.clone();
    let stubs = stub_dir(r);
    let hw = Hardware::new(settings, Accel::Tcg);
    let expected = command_lines(
        settings,
        &WindowsPaths::new(Path::new(""), Path::new("run"), &iso).unwrap(),
        &hw,
    )
    .unwrap();
    let q35 = settings.profile == Profile::Windows;
    let tpm = windows::wants_tpm(settings);
    let uefi = settings.firmware == Firmware::Uefi;
    if tpm {
        tool("swtpm", "swtpm");
    }
    let mut pci_maps = Vec::new();
    for ((name, script), (expected_name, expected_argv)) in
        report.stage_scripts.iter().zip(&expected)
    {
        assert_eq!(name, expected_name);
        let args_file = r.join(format!("{name}.args"));
        let path = format!(
            "{}:{}",
            stubs.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // Run from elsewhere: the script must find its files itself.
        let stderr_file = r.join(format!("{name}.stderr"));
        let child = Command::new("sh")
            .arg(script)
            .current_dir(r)
            .env("PATH", path)
            .env("STUB_ARGS", &args_file)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .spawn()
            .unwrap();
        if std::env::var_os("GUESTBOX_TEST_KEEP").is_some() {
            eprintln!("stage {name}: stderr in {}", stderr_file.display());
        }
        let mut reaper = Reaper {
            children: vec![child],
            pid_files: vec![out.join("run/swtpm.pid")],
        };
        let child = &mut reaper.children[0];
        let mut q = Qmp::connect(&out.join("run/qmp-guest.sock"), child, &stderr_file);

        assert_eq!(
            q.execute("query-status", json!({}))["status"],
            "prelaunch",
            "{name}"
        );
        // The script passed QEMU exactly the arguments of command_lines.
        let recorded = std::fs::read(&args_file).unwrap();
        let recorded: Vec<String> = recorded
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8(w.to_vec()).unwrap())
            .collect();
        assert_eq!(&recorded, expected_argv, "{name}");

        let network = q.hmp("info network");
        let model = match settings.profile {
            Profile::Windows => "e1000e",
            Profile::WindowsXp => "rtl8139",
        };
        assert!(
            network.contains(&format!(
                "model={model},macaddr={}",
                settings.network.mac_colons().to_lowercase()
            )),
            "{network}"
        );
        let qtree = q.hmp("info qtree");
        let install = name == STAGE_INSTALL;
        assert_eq!(qtree.contains("dev: isa-fdc"), install || !q35, "{name}");
        assert_eq!(qtree.contains("dev: tpm-tis"), tpm, "{name}");
        assert!(qtree.contains("dev: VGA"), "{name}");
        assert_eq!(
            qtree.matches("dev: ide-cd").count(),
            if install { 2 } else { 0 }
        );
        assert_eq!(qtree.matches("dev: ide-hd").count(), 1);
        let blocks = blocks(&mut q);
        let files: Vec<&str> = blocks.iter().map(|(_, f)| f.as_str()).collect();
        assert!(files.contains(&"disk.qcow2"), "{blocks:?}");
        assert_eq!(files.contains(&"floppy.img"), install, "{blocks:?}");
        assert_eq!(files.contains(&"cygwin.iso"), install, "{blocks:?}");
        assert_eq!(
            files.contains(&iso.to_str().unwrap()),
            install,
            "{blocks:?}"
        );
        if uefi {
            assert!(blocks
                .iter()
                .any(|(d, f)| d == "pflash1" && f == "OVMF_VARS.fd"));
        }
        if tpm {
            let t = q.execute("query-tpm", json!({}));
            assert_eq!(t[0]["model"], "tpm-tis", "{t}");
        }
        pci_maps.push(pci(&mut q));

        // Install survives the reboots of Setup; the first boot stops on one.
        q.execute("system_reset", json!({}));
        if install {
            q.wait_event("RESET");
            assert_eq!(q.execute("query-status", json!({}))["status"], "prelaunch");
            q.execute("quit", json!({}));
        } else {
            let e = q.wait_event("SHUTDOWN");
            assert_eq!(e["data"]["reason"], "host-qmp-system-reset", "{e}");
        }
        let status = wait_exit(child, Duration::from_secs(10));
        let stderr = std::fs::read_to_string(&stderr_file).unwrap();
        assert!(status.success(), "{name}: {status}\n{stderr}");
        assert!(!stderr.contains("warning"), "{name}: {stderr}");
        if tpm {
            // swtpm left with its QEMU.
            let deadline = Instant::now() + Duration::from_secs(5);
            while out.join("run/swtpm.pid").exists() {
                assert!(Instant::now() < deadline, "swtpm is still running");
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(out.join("tpm").read_dir().unwrap().next().is_some());
        }
    }
    // Same PCI devices at the same addresses in both stages: Windows keeps the NIC's
    // static address only for the adapter it was installed with.
    assert_eq!(pci_maps[0], pci_maps[1]);
    assert!(pci_maps[0]
        .iter()
        .any(|(_, _, _, class)| class == "Ethernet controller"));
}

#[test]
fn qemu_runs_the_windows_bios_stages() {
    run_emitted_stages(&settings(Profile::Windows));
}

#[test]
fn qemu_runs_the_windows_uefi_tpm_stages() {
    require_ovmf();
    run_emitted_stages(&uefi_tpm());
}

#[test]
fn qemu_runs_the_windows_xp_stages() {
    run_emitted_stages(&settings(Profile::WindowsXp));
}

#[test]
fn qemu_knows_the_hyperv_enlightenments() {
    // They work under KVM only (under TCG QEMU even refuses hv-vpindex), so check their
    // names against the CPU model's properties: a misspelt flag fails here.
    let qemu = tool("qemu-system-x86_64", "qemu-system-x86");
    let mut child = Command::new(qemu)
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-S",
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let typename = format!("{}-x86_64-cpu", windows::TCG_CPU);
    let request = format!(
        "{{\"execute\":\"qmp_capabilities\"}}\n\
         {{\"execute\":\"qom-list-properties\",\"arguments\":{{\"typename\":\"{typename}\"}}}}\n\
         {{\"execute\":\"quit\"}}\n"
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let props: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["return"].as_array().cloned())
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    assert!(props.len() > 50, "{props:?}");
    for flag in HYPERV_FLAGS {
        let name = flag.split('=').next().unwrap();
        assert!(
            props.iter().any(|p| p == name),
            "QEMU has no CPU property {name}"
        );
    }
    assert!(!props.iter().any(|p| p == "hv-no-such-flag"));
}

// ---------------------------------------------------------------------------------------
// The run script

fn job(work: &Path) -> GuestJob {
    GuestJob {
        seed: None,
        stdin: false,
        time: Some(1_700_000_000),
        mounts: vec![
            GuestMount {
                tag: "vol0".into(),
                guest_path: "/src dir".into(),
                readonly: true,
            },
            GuestMount {
                tag: "vol1".into(),
                guest_path: "/out".into(),
                readonly: false,
            },
        ],
        env: vec![("FOO".into(), "a b $c 'd'".into())],
        workdir: Some(work.to_str().unwrap().to_owned()),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "printf '%s|%s|%s\\n' \"$(pwd)\" \"$FOO\" \"$1\"; exit 7".into(),
            "argv0".into(),
            "it's $HOME & 100% \"q\"".into(),
        ],
    }
}

/// Runs a run script with bash functions standing in for Windows and Cygwin commands.
fn run_with_stubs(script: &str, dir: &Path, mount_status: i32) -> (i32, String, String) {
    let path = dir.join("run.sh");
    std::fs::write(&path, script).unwrap();
    let harness = r#"
cmd() { cp -- "$2" "$STUB_DIR/map.cmd"; return 0; }
cygpath() { printf '%s\n' "$2"; }
mount() { printf '%s\n' "$*" >>"$STUB_DIR/mounts"; return "$STUB_MOUNT_STATUS"; }
umount() { return 1; }
date() { printf '%s\n' "$*" >>"$STUB_DIR/date"; }
export -f cmd cygpath mount umount date
exec bash "$1"
"#;
    let out = Command::new(tool("bash", "bash"))
        .arg("-c")
        .arg(harness)
        .arg("harness")
        .arg(&path)
        .env("STUB_DIR", dir)
        .env("STUB_MOUNT_STATUS", mount_status.to_string())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_script_maps_the_share_root_mounts_the_volumes_and_returns_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("build dir");
    std::fs::create_dir_all(&work).unwrap();
    let j = job(&work);

    let spec = run_spec(&j, "smb-pass").unwrap();
    assert_eq!(spec.server.to_string(), "192.168.0.2");
    assert_eq!(spec.smb_user, "guestbox");
    assert_eq!(spec.smb_password.expose(), "smb-pass");
    // The share root was mapped at bootstrap: a run only binds its slots.
    assert!(spec.shares.is_empty() && spec.drives.is_empty());
    assert_eq!(spec.env, j.env);

    let script = run_script(&j, "smb-pass").unwrap();
    let (status, stdout, stderr) = run_with_stubs(&script, dir.path(), 0);
    assert_eq!(status, 7, "stderr: {stderr}");
    assert_eq!(
        stdout,
        format!("{}|a b $c 'd'|it's $HOME & 100% \"q\"\n", work.display())
    );
    let mounts = std::fs::read_to_string(dir.path().join("mounts")).unwrap();
    assert_eq!(
        mounts,
        "-f -o bind /run/guestbox/share/vol0 /src dir\n\
         -f -o bind /run/guestbox/share/vol1 /out\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("date")).unwrap(),
        "-s @1700000000\n"
    );
    assert!(!dir.path().join("map.cmd").exists(), "a run mapped a drive");

    // A drive-letter volume is its slot mapped for the run, not persistently.
    let mut j = job(&work);
    j.mounts[1].guest_path = "s:".into();
    let spec = run_spec(&j, "smb-pass").unwrap();
    assert_eq!(spec.drives.len(), 1);
    assert_eq!(spec.drives[0].drive, 'S');
    let (status, _, stderr) = run_with_stubs(&run_script(&j, "smb-pass").unwrap(), dir.path(), 0);
    assert_eq!(status, 7, "stderr: {stderr}");
    let batch = std::fs::read_to_string(dir.path().join("map.cmd")).unwrap();
    assert!(
        batch.contains(
            "net use S: \\\\192.168.0.2\\guestbox\\vol1 smb-pass /user:guestbox /persistent:no"
        ),
        "{batch}"
    );

    // The bootstrap maps the share root to G: (persistently) and mounts it in Cygwin.
    let setup = windows::run::setup_script("smb-pass").unwrap();
    let setup_dir = tempfile::tempdir().unwrap();
    let (status, _, stderr) = run_with_stubs(&setup, setup_dir.path(), 0);
    assert_eq!(status, 0, "stderr: {stderr}");
    assert_eq!(
        std::fs::read_to_string(setup_dir.path().join("mounts")).unwrap(),
        "-f -o binary,noacl G:/ /run/guestbox/share\n"
    );
    let batch = std::fs::read_to_string(setup_dir.path().join("map.cmd")).unwrap();
    assert!(
        batch.contains(
            "net use G: \\\\192.168.0.2\\guestbox smb-pass /user:guestbox /persistent:yes"
        ),
        "{batch}"
    );
}

#[test]
fn run_script_fails_with_125_when_a_volume_cannot_be_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = job(dir.path());
    let marker = dir.path().join("ran");
    j.argv = vec!["touch".into(), marker.to_str().unwrap().into()];
    let (status, _, stderr) = run_with_stubs(&run_script(&j, "pw").unwrap(), dir.path(), 1);
    assert_eq!(status, windows::SETUP_FAILED_EXIT);
    assert!(stderr.contains("cannot mount"), "{stderr}");
    assert!(!marker.exists(), "the command ran without its volumes");
}

#[test]
fn run_script_without_volumes_needs_no_share() {
    let j = GuestJob {
        seed: None,
        stdin: false,
        time: None,
        mounts: vec![],
        env: vec![],
        workdir: None,
        argv: vec!["uname".into(), "-a".into()],
    };
    let spec = run_spec(&j, "pw").unwrap();
    assert!(spec.shares.is_empty());
    let script = run_script(&j, "pw").unwrap();
    assert!(!script.contains("net use"));
    let dir = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_with_stubs(&script, dir.path(), 0);
    assert_eq!(status, 0, "{stderr}");
    assert!(!stdout.is_empty());
}

#[test]
fn run_script_rejects_what_windows_cannot_mount() {
    let dir = tempfile::tempdir().unwrap();
    let usage = |j: &GuestJob| match run_script(j, "pw") {
        Err(Error::Usage(m)) => m,
        other => panic!("expected a usage error, got {other:?}"),
    };
    let mut j = job(dir.path());
    j.mounts[0].tag = "vol9".into();
    assert!(usage(&j).contains("vol9"));
    let mut j = job(dir.path());
    j.mounts[0].guest_path = "D:\\src".into();
    assert!(usage(&j).contains("whole drive"));
    let mut j = job(dir.path());
    j.mounts[0].guest_path = "C:".into();
    assert!(usage(&j).contains("Windows' own"));
    let mut j = job(dir.path());
    j.mounts[0].guest_path = "G:".into();
    assert!(usage(&j).contains("controller's share"));
    let mut j = job(dir.path());
    j.mounts[0].guest_path = "src".into();
    assert!(usage(&j).contains("absolute Cygwin path"));
    let mut j = job(dir.path());
    j.mounts[0].guest_path = "/".into();
    assert!(usage(&j).contains("cannot be mounted at /"));
    let mut j = job(dir.path());
    j.mounts[1].guest_path = "/src dir".into();
    assert!(usage(&j).contains("used twice"));
    let mut j = job(dir.path());
    j.env.push(("BAD-NAME".into(), "x".into()));
    assert!(usage(&j).contains("BAD-NAME"));
    let mut j = job(dir.path());
    j.argv.clear();
    assert!(usage(&j).contains("no command"));
    let mut j = job(dir.path());
    j.workdir = Some("relative".into());
    assert!(usage(&j).contains("not absolute"));
}

#[test]
fn boot_spec_uses_firmware_not_a_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(Profile::Windows);
    let stages = stage_specs(&s, &paths(dir.path()), &Hardware::new(&s, Accel::Tcg)).unwrap();
    for st in stages {
        assert!(matches!(st.spec.boot, Boot::Firmware { .. }));
        assert_eq!(st.spec.nics.len(), 1);
        assert!(st.spec.ports.is_empty() && st.spec.shares.is_empty());
    }
}
