//! The one writer of QEMU command lines: [`VmSpec`] → argv. Nothing else in guestbox
//! writes QEMU arguments.

use std::path::Path;

use super::spec::*;
use crate::{Error, Result};

/// QEMU option values separate fields with commas; a literal comma is written twice.
pub fn value(path: &Path) -> Result<String> {
    let text = path.to_str().ok_or_else(|| {
        Error::Usage(format!(
            "path {} is not valid UTF-8; QEMU options need UTF-8 paths",
            path.display()
        ))
    })?;
    Ok(text.replace(',', ",,"))
}

impl VmSpec {
    /// The QEMU command line, without the program name, every drive by its path.
    pub fn argv(&self) -> Result<Vec<String>> {
        self.argv_opened(&[])
    }

    /// The QEMU command line, the drives in `opened` by the descriptors given (which QEMU
    /// must inherit), the others by path.
    pub fn argv_opened(&self, opened: &[OpenedDrive]) -> Result<Vec<String>> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |flag: &str, val: String| {
            a.push(flag.to_string());
            a.push(val);
        };
        push(
            "-name",
            format!("guestbox-{},process=guestbox-{}", self.name, self.name),
        );
        a.extend(
            [
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ]
            .map(String::from),
        );
        let mut push = |flag: &str, val: String| {
            a.push(flag.to_string());
            a.push(val);
        };
        push("-accel", self.accel.qemu_name().to_string());
        let mut machine = self.machine.clone();
        if let Memory::File {
            path,
            shared,
            readonly,
        } = &self.memory
        {
            let mut obj = format!(
                "memory-backend-file,id=ram,size={}M,mem-path={},share={}",
                self.memory_mib,
                value(path)?,
                if *shared { "on" } else { "off" }
            );
            if *readonly {
                obj.push_str(",readonly=on,rom=off");
            }
            push("-object", obj);
            machine.push_str(",memory-backend=ram");
        }
        push("-machine", machine);
        push("-cpu", self.cpu.clone());
        push("-smp", self.cpus.to_string());
        push("-m", format!("{}M", self.memory_mib));
        let mut rtc = format!("base={}", self.rtc.base);
        if self.rtc.vm_clock {
            rtc.push_str(",clock=vm");
        }
        push("-rtc", rtc);
        match &self.boot {
            Boot::Kernel {
                kernel,
                initrd,
                append,
            } => {
                push("-kernel", value(kernel)?);
                push("-initrd", value(initrd)?);
                push("-append", append.clone());
            }
            Boot::Firmware { order } => push("-boot", format!("order={order}")),
        }
        // Each IDE-family drive gets an explicit bus: without one, QEMU puts every device
        // on the controller's last bus and refuses the second ("supports only 1 units").
        // q35's built-in AHCI has one unit on each of ide.0..ide.5, taken in order by disks
        // and CD-ROMs; i440FX's IDE has two buses of two units: disks on the primary,
        // CD-ROMs on the secondary. An AHCI disk on i440FX needs its own controller.
        // Floppies: i440FX has a controller (`if=floppy`); q35 gets an ISA one.
        let q35 = self.machine.contains("q35");
        let (mut ide_n, mut ahci_n, mut cd_n, mut fd_n) = (0u32, 0u32, 0u32, 0u32);
        let mut ide_bus = |q35: bool| {
            let bus = if q35 {
                format!("bus=ide.{ide_n}")
            } else {
                format!("bus=ide.{},unit={}", ide_n / 2, ide_n % 2)
            };
            ide_n += 1;
            bus
        };
        for (i, d) in self.drives.iter().enumerate() {
            let id = format!("drive{i}");
            let file = match opened.iter().find(|o| o.drive == DriveSlot::Drive(i)) {
                Some(o) => {
                    // Set numbers start at 1 (0 is allowed, but reads like "none").
                    let set = i + 1;
                    for fd in [&o.read_write, &o.read_only] {
                        push("-add-fd", format!("fd={},set={set}", fd.fd()));
                    }
                    format!("/dev/fdset/{set}")
                }
                None => value(&d.path)?,
            };
            let fmt = match d.format {
                DiskFormat::Qcow2 => "qcow2",
                DiskFormat::Raw => "raw",
            };
            let ro = if d.readonly { ",read-only=on" } else { "" };
            match d.interface {
                DriveInterface::Floppy if q35 => {
                    let id = format!("fdd{fd_n}");
                    push(
                        "-drive",
                        format!("file={},if=none,id={id},format={fmt}{ro}", value(&d.path)?),
                    );
                    if fd_n == 0 {
                        push("-device", "isa-fdc,id=fdc0".to_string());
                    }
                    push(
                        "-device",
                        format!("floppy,bus=fdc0.0,unit={fd_n},drive={id}"),
                    );
                    fd_n += 1;
                    continue;
                }
                DriveInterface::Floppy => {
                    push("-drive", format!("file={file},if=floppy,format={fmt}{ro}"));
                    continue;
                }
                DriveInterface::CdRom => {
                    let id = format!("cd{cd_n}");
                    push(
                        "-drive",
                        format!(
                            "file={file},if=none,id={id},format={fmt},media=cdrom,read-only=on"
                        ),
                    );
                    let bus = if q35 {
                        ide_bus(true)
                    } else {
                        format!("bus=ide.1,unit={cd_n}")
                    };
                    push("-device", format!("ide-cd,drive={id},{bus}"));
                    cd_n += 1;
                    continue;
                }
                // A full host disk is reported to the guest as an I/O error (and to
                // guestbox as a BLOCK_IO_ERROR event) instead of QEMU's default of pausing
                // the VM, which would leave the job hanging.
                _ => push(
                    "-drive",
                    format!(
                        "file={file},if=none,id={id},format={fmt}{ro},werror=report,rerror=report"
                    ),
                ),
            }
            let device = match d.interface {
                DriveInterface::VirtioBlk => format!("virtio-blk-pci,drive={id}"),
                DriveInterface::Ahci if q35 => format!("ide-hd,drive={id},{}", ide_bus(q35)),
                DriveInterface::Ahci => {
                    if ahci_n == 0 {
                        push("-device", "ahci,id=ahci".to_string());
                    }
                    ahci_n += 1;
                    format!("ide-hd,drive={id},bus=ahci.{}", ahci_n - 1)
                }
                DriveInterface::Ide => format!("ide-hd,drive={id},{}", ide_bus(q35)),
                DriveInterface::CdRom | DriveInterface::Floppy => {
                    unreachable!("CD-ROMs and floppies are attached above")
                }
            };
            push("-device", device);
        }
        for (i, n) in self.nics.iter().enumerate() {
            let id = format!("net{i}");
            match &n.link {
                Link::UnixDgram { local, remote } => push(
                    "-netdev",
                    format!(
                        "dgram,id={id},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                        value(local)?,
                        value(remote)?
                    ),
                ),
                // A connected socket: QEMU send()s to its peer (no remote address).
                Link::Socket { socket } => push(
                    "-netdev",
                    format!("dgram,id={id},local.type=fd,local.str={}", socket.fd()),
                ),
            }
            let model = match n.model {
                NicModel::VirtioNet => "virtio-net-pci",
                NicModel::E1000 => "e1000",
                NicModel::E1000e => "e1000e",
                NicModel::Rtl8139 => "rtl8139",
            };
            // No option ROM: PXE is never wanted and the ROM slows firmware start.
            let rom = if matches!(self.boot, Boot::Kernel { .. }) {
                ",romfile="
            } else {
                ""
            };
            push("-device", format!("{model},netdev={id},mac={}{rom}", n.mac));
        }
        if !self.ports.is_empty() {
            push("-device", "virtio-serial-pci,id=vser".to_string());
            for (i, p) in self.ports.iter().enumerate() {
                push(
                    "-chardev",
                    format!(
                        "socket,id=port{i},path={},server=on,wait=off",
                        value(&p.socket)?
                    ),
                );
                push(
                    "-device",
                    format!("virtserialport,bus=vser.0,chardev=port{i},name={}", p.name),
                );
            }
        }
        // security_model=none: QEMU creates files as its own user with the guest's mode
        // bits and ignores failed chowns; which user that is, is decided in one place,
        // `confine::Policy::serving`. (passthrough would need root to chown; mapped-xattr
        // keeps every file 0600 on the host.)
        for (i, s) in self.shares.iter().enumerate() {
            let ro = if s.readonly { ",readonly=on" } else { "" };
            push(
                "-fsdev",
                format!(
                    "local,id=fs{i},path={},security_model=none{ro}",
                    value(&s.path)?
                ),
            );
            push(
                "-device",
                format!("virtio-9p-pci,fsdev=fs{i},mount_tag={}", s.tag),
            );
        }
        push(
            "-chardev",
            format!("file,id=console,path={}", value(&self.console_log)?),
        );
        push("-serial", "chardev:console".to_string());
        push(
            "-qmp",
            format!("unix:{},server=on,wait=off", value(&self.qmp_socket)?),
        );
        match &self.generation_id {
            Some(GenerationId::Fixed { guid }) => {
                push("-device", format!("vmgenid,guid={guid}"));
            }
            Some(GenerationId::Fresh) => push("-device", "vmgenid,guid=auto".to_string()),
            None => {}
        }
        if self.incoming {
            push("-incoming", "defer".to_string());
        }
        let p = &self.platform;
        if p.allow_reboot {
            push("-action", "reboot=reset".into());
        }
        if let Some(fw) = &p.firmware {
            push(
                "-drive",
                format!(
                    "file={},if=pflash,unit=0,format=raw,readonly=on",
                    value(&fw.code)?
                ),
            );
            let vars = match opened.iter().find(|o| o.drive == DriveSlot::UefiVars) {
                Some(o) => {
                    // After the drives' sets (numbered from 1 by drive).
                    let set = self.drives.len() + 1;
                    for fd in [&o.read_write, &o.read_only] {
                        push("-add-fd", format!("fd={},set={set}", fd.fd()));
                    }
                    format!("/dev/fdset/{set}")
                }
                None => value(&fw.vars)?,
            };
            push("-drive", format!("file={vars},if=pflash,unit=1,format=raw"));
            if fw.secure_boot {
                push(
                    "-global",
                    "driver=cfi.pflash01,property=secure,value=on".into(),
                );
            }
        }
        for g in &p.globals {
            push(
                "-global",
                format!(
                    "driver={},property={},value={}",
                    g.driver,
                    g.property,
                    g.value.replace(',', ",,")
                ),
            );
        }
        if p.vga {
            push("-device", "VGA".into());
        }
        if let Some(t) = &p.tpm {
            push(
                "-chardev",
                format!("socket,id=chrtpm,path={}", value(&t.socket)?),
            );
            push("-tpmdev", "emulator,id=tpm0,chardev=chrtpm".into());
            push("-device", "tpm-tis,tpmdev=tpm0".into());
        }
        a.extend(self.confinement.argv());
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "guest".into(),
            accel: Accel::Tcg,
            machine: "pc-q35-7.2".into(),
            cpu: "qemu64".into(),
            cpus: 2,
            memory_mib: 512,
            memory: Memory::Anonymous,
            boot: Boot::Kernel {
                kernel: "/k/vmlinuz".into(),
                initrd: "/k/initrd".into(),
                append: "console=ttyS0".into(),
            },
            drives: vec![Drive {
                path: "/d/a,b.qcow2".into(),
                format: DiskFormat::Qcow2,
                interface: DriveInterface::VirtioBlk,
                readonly: false,
            }],
            nics: vec![Nic {
                model: NicModel::VirtioNet,
                mac: "52:54:00:00:00:01".into(),
                link: Link::UnixDgram {
                    local: "/r/g.sock".into(),
                    remote: "/r/c.sock".into(),
                },
            }],
            ports: vec![],
            shares: vec![],
            console_log: "/r/console.log".into(),
            qmp_socket: "/r/qmp.sock".into(),
            rtc: Rtc::default(),
            generation_id: None,
            incoming: false,
            platform: Platform::default(),
            inherit: None,
            cwd: None,
            confinement: Confinement::default(),
        }
    }

    fn after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn kernel_boot_command_line() {
        let argv = spec().argv().unwrap();
        assert_eq!(after(&argv, "-accel"), ["tcg"]);
        assert_eq!(after(&argv, "-machine"), ["pc-q35-7.2"]);
        assert_eq!(after(&argv, "-m"), ["512M"]);
        assert_eq!(after(&argv, "-kernel"), ["/k/vmlinuz"]);
        // The comma in the disk path is doubled, or QEMU would split the option there.
        assert_eq!(
            after(&argv, "-drive"),
            ["file=/d/a,,b.qcow2,if=none,id=drive0,format=qcow2,werror=report,rerror=report"]
        );
        assert!(after(&argv, "-device").contains(&"virtio-blk-pci,drive=drive0"));
        assert_eq!(
            after(&argv, "-netdev"),
            ["dgram,id=net0,local.type=unix,local.path=/r/g.sock,remote.type=unix,remote.path=/r/c.sock"]
        );
        assert!(argv.contains(&"-nodefaults".to_string()));
        assert!(!argv.contains(&"-incoming".to_string()));
        // Every QEMU is sandboxed, and nothing asks for a process to be started.
        assert_eq!(
            after(&argv, "-sandbox"),
            ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        );
        assert!(!argv.iter().any(|a| a.contains("exec:")));
        // Never a user-mode or tap network.
        assert!(!argv
            .iter()
            .any(|a| a.contains("user") && a.starts_with("user")));
    }

    #[test]
    fn a_link_by_descriptor_and_a_qemu_that_changes_user() {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd = std::os::fd::OwnedFd::from(a);
        let mut s = spec();
        s.nics[0].link = Link::Socket {
            socket: Descriptor::new(fd),
        };
        let n = s.inherited_fds();
        assert_eq!(n.len(), 1);
        s.confinement = Confinement {
            run_as: Some(super::super::confine::RunAs {
                ids: crate::host::users::Ids { uid: 990, gid: 991 },
                option: super::super::confine::DropOption::Runas,
                chroot: None,
            }),
            namespace: None,
            off: false,
        };
        let argv = s.argv().unwrap();
        assert_eq!(
            after(&argv, "-netdev"),
            [format!("dgram,id=net0,local.type=fd,local.str={}", n[0])]
        );
        assert_eq!(after(&argv, "-runas"), ["990:991"]);
        // A disk by its descriptors: QEMU reopens it without a path.
        let (rw, ro) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let opened = OpenedDrive {
            drive: DriveSlot::Drive(0),
            read_write: Descriptor::new(rw.into()),
            read_only: Descriptor::new(ro.into()),
        };
        let (a, b) = (opened.read_write.fd(), opened.read_only.fd());
        let argv = s.argv_opened(&[opened]).unwrap();
        assert_eq!(
            after(&argv, "-add-fd"),
            [format!("fd={a},set=1"), format!("fd={b},set=1")]
        );
        assert_eq!(
            after(&argv, "-drive"),
            ["file=/dev/fdset/1,if=none,id=drive0,format=qcow2,werror=report,rerror=report"]
        );
        assert_eq!(
            after(&argv, "-sandbox"),
            ["on,obsolete=deny,spawn=deny,resourcecontrol=deny"]
        );
    }

    #[test]
    fn file_backed_memory_for_snapshot_and_private_revive() {
        let mut s = spec();
        s.memory = Memory::File {
            path: "/b/ram".into(),
            shared: true,
            readonly: false,
        };
        let argv = s.argv().unwrap();
        assert_eq!(
            after(&argv, "-object"),
            ["memory-backend-file,id=ram,size=512M,mem-path=/b/ram,share=on"]
        );
        assert_eq!(after(&argv, "-machine"), ["pc-q35-7.2,memory-backend=ram"]);
        s.memory = Memory::File {
            path: "/b/ram".into(),
            shared: false,
            readonly: true,
        };
        s.incoming = true;
        let argv = s.argv().unwrap();
        assert_eq!(
            after(&argv, "-object"),
            ["memory-backend-file,id=ram,size=512M,mem-path=/b/ram,share=off,readonly=on,rom=off"]
        );
        assert_eq!(after(&argv, "-incoming"), ["defer"]);
    }

    #[test]
    fn ports_shares_and_windows_devices() {
        let mut s = spec();
        s.ports.push(SerialPort {
            name: "guestbox.ctl".into(),
            socket: "/r/ctl.sock".into(),
        });
        s.shares.push(Share9p {
            tag: "vol0".into(),
            path: "/host/src".into(),
            readonly: true,
        });
        s.drives = vec![
            Drive {
                path: "/w/disk.qcow2".into(),
                format: DiskFormat::Qcow2,
                interface: DriveInterface::Ahci,
                readonly: false,
            },
            Drive {
                path: "/w/floppy.img".into(),
                format: DiskFormat::Raw,
                interface: DriveInterface::Floppy,
                readonly: true,
            },
            Drive {
                path: "/w/win.iso".into(),
                format: DiskFormat::Raw,
                interface: DriveInterface::CdRom,
                readonly: true,
            },
        ];
        s.nics[0].model = NicModel::E1000e;
        s.boot = Boot::Firmware { order: "dc".into() };
        let argv = s.argv().unwrap();
        let devices = after(&argv, "-device");
        assert!(devices.contains(&"virtserialport,bus=vser.0,chardev=port0,name=guestbox.ctl"));
        assert!(devices.contains(&"virtio-9p-pci,fsdev=fs0,mount_tag=vol0"));
        assert!(devices.contains(&"ide-hd,drive=drive0,bus=ide.0"));
        assert!(devices.contains(&"ide-cd,drive=cd0,bus=ide.1"));
        // q35 has no floppy controller: an ISA one, with the floppy on its bus.
        assert!(devices.contains(&"isa-fdc,id=fdc0"));
        assert!(devices.contains(&"floppy,bus=fdc0.0,unit=0,drive=fdd0"));
        assert!(devices.contains(&"e1000e,netdev=net0,mac=52:54:00:00:00:01"));
        assert_eq!(
            after(&argv, "-fsdev"),
            ["local,id=fs0,path=/host/src,security_model=none,readonly=on"]
        );
        assert!(after(&argv, "-drive")
            .contains(&"file=/w/floppy.img,if=none,id=fdd0,format=raw,read-only=on"));
        assert_eq!(after(&argv, "-boot"), ["order=dc"]);
        assert!(after(&argv, "-action").is_empty());

        // i440FX: its own floppy controller, the CD-ROMs on the secondary channel.
        s.machine = "pc-i440fx-7.2".into();
        s.drives[0].interface = DriveInterface::Ide;
        s.drives.push(s.drives[2].clone());
        let argv = s.argv().unwrap();
        let devices = after(&argv, "-device");
        assert!(devices.contains(&"ide-hd,drive=drive0,bus=ide.0,unit=0"));
        assert!(devices.contains(&"ide-cd,drive=cd0,bus=ide.1,unit=0"));
        assert!(devices.contains(&"ide-cd,drive=cd1,bus=ide.1,unit=1"));
        assert!(!devices.iter().any(|d| d.contains("fdc")));
        assert!(after(&argv, "-drive")
            .contains(&"file=/w/floppy.img,if=floppy,format=raw,read-only=on"));
    }

    #[test]
    fn the_platform_of_a_firmware_guest() {
        let mut s = spec();
        s.platform = Platform {
            firmware: Some(Pflash {
                code: "/fw/code.fd".into(),
                vars: "/b/vars,1.fd".into(),
                secure_boot: true,
            }),
            globals: vec![Global::new("ICH9-LPC", "disable_s3", "1")],
            vga: true,
            tpm: Some(Tpm {
                state_dir: "/b/tpm".into(),
                socket: "/r/swtpm.sock".into(),
                log: "/r/swtpm.log".into(),
            }),
            allow_reboot: true,
        };
        let argv = s.argv().unwrap();
        assert_eq!(after(&argv, "-action"), ["reboot=reset"]);
        let drives = after(&argv, "-drive");
        assert!(drives.contains(&"file=/fw/code.fd,if=pflash,unit=0,format=raw,readonly=on"));
        assert!(drives.contains(&"file=/b/vars,,1.fd,if=pflash,unit=1,format=raw"));
        assert_eq!(
            after(&argv, "-global"),
            [
                "driver=cfi.pflash01,property=secure,value=on",
                "driver=ICH9-LPC,property=disable_s3,value=1"
            ]
        );
        let devices = after(&argv, "-device");
        assert!(devices.contains(&"VGA"));
        assert!(devices.contains(&"tpm-tis,tpmdev=tpm0"));
        assert!(after(&argv, "-chardev").contains(&"socket,id=chrtpm,path=/r/swtpm.sock"));
        assert_eq!(after(&argv, "-tpmdev"), ["emulator,id=tpm0,chardev=chrtpm"]);
        // The variable store by its descriptors, in the set after the drives': QEMU
        // reopens it on an incoming resume, when it may no longer be root.
        let (rw, ro) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let vars = OpenedDrive {
            drive: DriveSlot::UefiVars,
            read_write: Descriptor::new(rw.into()),
            read_only: Descriptor::new(ro.into()),
        };
        let (a, b) = (vars.read_write.fd(), vars.read_only.fd());
        let set = s.drives.len() + 1;
        let argv = s.argv_opened(&[vars]).unwrap();
        assert_eq!(
            after(&argv, "-add-fd"),
            [format!("fd={a},set={set}"), format!("fd={b},set={set}")]
        );
        let drives = after(&argv, "-drive");
        assert!(
            drives.contains(&format!("file=/dev/fdset/{set},if=pflash,unit=1,format=raw").as_str())
        );
        assert!(!drives.iter().any(|d| d.contains("vars")));
        // A kernel-booted VM has none of it.
        let plain = spec().argv().unwrap();
        assert!(!plain
            .iter()
            .any(|a| a == "-global" || a == "-action" || a == "VGA"));
    }
}
