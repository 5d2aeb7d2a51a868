//! `Autounattend.xml` for Windows Vista and later.
//!
//! Passes: windowsPE (language, disk layout, image, product key, Windows 11
//! bypass keys), offlineServicing (UAC off, so first-logon commands and SSH
//! sessions get a full administrator token), specialize (computer name,
//! time zone, static IP on the NIC named by its MAC), oobeSystem (accounts,
//! auto-logon once, no OOBE pages, the bootstrap as first-logon command).

use super::{
    quoted, scripts, Error, Firmware, ImageSelection, Win11Requirements, WindowsGeneration,
    WindowsSettings,
};
use crate::quote;

/// A tiny indenting XML writer; every text and attribute goes through
/// [`quote::xml`].
struct Xml {
    out: String,
    stack: Vec<&'static str>,
}

impl Xml {
    fn new() -> Self {
        Xml {
            out: String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"),
            stack: Vec::new(),
        }
    }

    fn indent(&mut self) {
        for _ in 0..self.stack.len() {
            self.out.push_str("  ");
        }
    }

    fn open(&mut self, tag: &'static str, attrs: &[(&str, &str)]) -> Result<(), Error> {
        self.indent();
        self.out.push('<');
        self.out.push_str(tag);
        for (k, v) in attrs {
            let v = quoted("answer file attribute", quote::xml(v))?;
            self.out.push_str(&format!(" {k}=\"{v}\""));
        }
        self.out.push_str(">\n");
        self.stack.push(tag);
        Ok(())
    }

    fn close(&mut self) {
        if let Some(tag) = self.stack.pop() {
            self.indent();
            self.out.push_str(&format!("</{tag}>\n"));
        }
    }

    /// `<tag>text</tag>`; `field` names the setting in errors.
    fn leaf(&mut self, tag: &'static str, field: &'static str, text: &str) -> Result<(), Error> {
        self.leaf_attrs(tag, &[], field, text)
    }

    fn leaf_attrs(
        &mut self,
        tag: &'static str,
        attrs: &[(&str, &str)],
        field: &'static str,
        text: &str,
    ) -> Result<(), Error> {
        let text = quoted(field, quote::xml(text))?;
        self.indent();
        self.out.push('<');
        self.out.push_str(tag);
        for (k, v) in attrs {
            let v = quoted(field, quote::xml(v))?;
            self.out.push_str(&format!(" {k}=\"{v}\""));
        }
        self.out.push_str(&format!(">{text}</{tag}>\n"));
        Ok(())
    }

    fn component(&mut self, name: &str, arch: &str) -> Result<(), Error> {
        self.open(
            "component",
            &[
                ("name", name),
                ("processorArchitecture", arch),
                ("publicKeyToken", "31bf3856ad364e35"),
                ("language", "neutral"),
                ("versionScope", "nonSxS"),
            ],
        )
    }

    /// A password element (`Password`, `AdministratorPassword`).
    fn password(&mut self, tag: &'static str, value: &str) -> Result<(), Error> {
        self.open(tag, &[])?;
        self.leaf("Value", "password", value)?;
        self.leaf("PlainText", "password", "true")?;
        self.close();
        Ok(())
    }
}

const ADD: (&str, &str) = ("wcm:action", "add");

/// Commands run from `RunSynchronous` (windowsPE and specialize passes).
fn run_synchronous(x: &mut Xml, commands: &[(&str, String)]) -> Result<(), Error> {
    if commands.is_empty() {
        return Ok(());
    }
    x.open("RunSynchronous", &[])?;
    for (i, (what, cmd)) in commands.iter().enumerate() {
        x.open("RunSynchronousCommand", &[ADD])?;
        x.leaf("Order", "command", &(i + 1).to_string())?;
        x.leaf("Description", "command", what)?;
        x.leaf("Path", "command", cmd)?;
        x.close();
    }
    x.close();
    Ok(())
}

fn international(x: &mut Xml, s: &WindowsSettings, winpe: bool) -> Result<(), Error> {
    let arch = s.arch.unattend_name();
    if winpe {
        x.component("Microsoft-Windows-International-Core-WinPE", arch)?;
        x.open("SetupUILanguage", &[])?;
        x.leaf("UILanguage", "locale", &s.locale)?;
        x.close();
    } else {
        x.component("Microsoft-Windows-International-Core", arch)?;
    }
    x.leaf("InputLocale", "keyboard", &s.keyboard)?;
    x.leaf("SystemLocale", "locale", &s.locale)?;
    x.leaf("UILanguage", "locale", &s.locale)?;
    x.leaf("UserLocale", "locale", &s.locale)?;
    x.close();
    Ok(())
}

fn disk(x: &mut Xml, s: &WindowsSettings) -> Result<u32, Error> {
    x.open("DiskConfiguration", &[])?;
    x.leaf("WillShowUI", "firmware", "OnError")?;
    x.open("Disk", &[ADD])?;
    x.leaf("DiskID", "firmware", "0")?;
    x.leaf("WillWipeDisk", "firmware", "true")?;
    // (type, size in MB or None for "the rest")
    let layout: &[(&str, Option<u32>)] = match s.firmware {
        Firmware::Bios => &[("Primary", None)],
        // 260 MB keeps the ESP valid FAT32 on 4K-sector disks too.
        Firmware::Uefi => &[("EFI", Some(260)), ("MSR", Some(16)), ("Primary", None)],
    };
    x.open("CreatePartitions", &[])?;
    for (i, (kind, size)) in layout.iter().enumerate() {
        x.open("CreatePartition", &[ADD])?;
        x.leaf("Order", "firmware", &(i + 1).to_string())?;
        x.leaf("Type", "firmware", kind)?;
        match size {
            Some(mb) => x.leaf("Size", "firmware", &mb.to_string())?,
            None => x.leaf("Extend", "firmware", "true")?,
        }
        x.close();
    }
    x.close();
    x.open("ModifyPartitions", &[])?;
    let windows_partition = layout.len() as u32;
    for (i, (kind, _)) in layout.iter().enumerate() {
        let id = (i + 1).to_string();
        match *kind {
            "EFI" => {
                x.open("ModifyPartition", &[ADD])?;
                x.leaf("Order", "firmware", &id)?;
                x.leaf("PartitionID", "firmware", &id)?;
                x.leaf("Format", "firmware", "FAT32")?;
                x.leaf("Label", "firmware", "System")?;
                x.close();
            }
            "Primary" => {
                x.open("ModifyPartition", &[ADD])?;
                x.leaf("Order", "firmware", &id)?;
                x.leaf("PartitionID", "firmware", &id)?;
                if s.firmware == Firmware::Bios {
                    x.leaf("Active", "firmware", "true")?;
                }
                x.leaf("Format", "firmware", "NTFS")?;
                x.leaf("Label", "firmware", "Windows")?;
                x.leaf("Letter", "firmware", "C")?;
                x.close();
            }
            _ => {} // the MSR needs no formatting
        }
    }
    x.close();
    x.close(); // Disk
    x.close(); // DiskConfiguration
    Ok(windows_partition)
}

fn setup_component(x: &mut Xml, s: &WindowsSettings) -> Result<(), Error> {
    x.component("Microsoft-Windows-Setup", s.arch.unattend_name())?;
    let partition = disk(x, s)?;
    x.open("ImageInstall", &[])?;
    x.open("OSImage", &[])?;
    x.open("InstallFrom", &[])?;
    x.open("MetaData", &[ADD])?;
    match &s.image {
        ImageSelection::Index(i) => {
            x.leaf("Key", "image", "/IMAGE/INDEX")?;
            x.leaf("Value", "image", &i.to_string())?;
        }
        ImageSelection::Name(n) => {
            x.leaf("Key", "image", "/IMAGE/NAME")?;
            x.leaf("Value", "image", n)?;
        }
    }
    x.close();
    x.close();
    x.open("InstallTo", &[])?;
    x.leaf("DiskID", "firmware", "0")?;
    x.leaf("PartitionID", "firmware", &partition.to_string())?;
    x.close();
    x.leaf("WillShowUI", "image", "OnError")?;
    x.close();
    x.close();
    let mut commands = Vec::new();
    if s.generation == WindowsGeneration::Modern && s.win11 == Win11Requirements::Bypass {
        // Windows 11 Setup reads these before its hardware checks; older
        // Setup ignores them.
        for check in [
            "BypassTPMCheck",
            "BypassSecureBootCheck",
            "BypassRAMCheck",
            "BypassCPUCheck",
        ] {
            commands.push((
                "guestbox: skip a Windows 11 hardware check",
                format!(
                    "reg.exe add HKLM\\SYSTEM\\Setup\\LabConfig /v {check} /t REG_DWORD /d 1 /f"
                ),
            ));
        }
    }
    run_synchronous(x, &commands)?;
    x.open("UserData", &[])?;
    x.leaf("AcceptEula", "image", "true")?;
    x.leaf("FullName", "full_name", &s.full_name)?;
    // Setup rejects some empty strings; leave the element out instead.
    if !s.organization.is_empty() {
        x.leaf("Organization", "organization", &s.organization)?;
    }
    if let Some(key) = &s.product_key {
        x.open("ProductKey", &[])?;
        x.leaf("Key", "product_key", key)?;
        x.leaf("WillShowUI", "product_key", "OnError")?;
        x.close();
    }
    x.close();
    x.close(); // component
    Ok(())
}

fn tcpip(x: &mut Xml, s: &WindowsSettings) -> Result<(), Error> {
    let n = &s.network;
    x.component("Microsoft-Windows-TCPIP", s.arch.unattend_name())?;
    x.open("Interfaces", &[])?;
    x.open("Interface", &[ADD])?;
    // Order matters here: Ipv4Settings, Identifier, UnicastIpAddresses.
    x.open("Ipv4Settings", &[])?;
    x.leaf("DhcpEnabled", "network", "false")?;
    x.leaf("RouterDiscoveryEnabled", "network", "false")?;
    x.close();
    x.leaf("Identifier", "network.nic_mac", &n.mac_dashes())?;
    x.open("UnicastIpAddresses", &[])?;
    x.leaf_attrs(
        "IpAddress",
        &[ADD, ("wcm:keyValue", "1")],
        "network.guest_ip",
        &format!("{}/{}", n.guest_ip, n.prefix_len),
    )?;
    x.close();
    // No Routes: no gateway, the link is private.
    x.close();
    x.close();
    x.close();
    Ok(())
}

/// Children in Windows SIM's (alphabetical) order.
fn oobe_shell(x: &mut Xml, s: &WindowsSettings) -> Result<(), Error> {
    x.component("Microsoft-Windows-Shell-Setup", s.arch.unattend_name())?;
    x.open("AutoLogon", &[])?;
    x.password("Password", s.password.expose())?;
    x.leaf("Enabled", "user", "true")?;
    // Once is enough: the bootstrap runs at that logon and powers off.
    x.leaf("LogonCount", "user", "1")?;
    x.leaf("Username", "user", &s.user)?;
    x.close();
    x.open("FirstLogonCommands", &[])?;
    x.open("SynchronousCommand", &[ADD])?;
    x.leaf("Order", "command", "1")?;
    x.leaf("CommandLine", "command", &scripts::first_logon_command())?;
    x.leaf(
        "Description",
        "command",
        "guestbox bootstrap: Cygwin and sshd from the package CD, then power off",
    )?;
    x.leaf("RequiresUserInput", "command", "false")?;
    x.close();
    x.close();
    x.open("OOBE", &[])?;
    x.leaf("HideEULAPage", "generation", "true")?;
    if s.generation == WindowsGeneration::Modern {
        x.leaf("HideLocalAccountScreen", "generation", "true")?;
        x.leaf("HideOEMRegistrationScreen", "generation", "true")?;
        x.leaf("HideOnlineAccountScreens", "generation", "true")?;
        x.leaf("HideWirelessSetupInOOBE", "generation", "true")?;
    }
    x.leaf("NetworkLocation", "generation", "Work")?;
    x.leaf("ProtectYourPC", "generation", "3")?;
    x.leaf("SkipMachineOOBE", "generation", "true")?;
    x.leaf("SkipUserOOBE", "generation", "true")?;
    x.close();
    if !s.organization.is_empty() {
        x.leaf("RegisteredOrganization", "organization", &s.organization)?;
    }
    x.leaf("RegisteredOwner", "full_name", &s.full_name)?;
    x.leaf("TimeZone", "timezone", &s.timezone)?;
    x.open("UserAccounts", &[])?;
    x.password("AdministratorPassword", s.password.expose())?;
    x.open("LocalAccounts", &[])?;
    x.open("LocalAccount", &[ADD])?;
    x.password("Password", s.password.expose())?;
    x.leaf("Description", "user", "guestbox administrator (SSH)")?;
    x.leaf("DisplayName", "user", &s.user)?;
    x.leaf("Group", "user", "Administrators")?;
    x.leaf("Name", "user", &s.user)?;
    x.close();
    x.close();
    x.close();
    x.close();
    Ok(())
}

/// The whole `Autounattend.xml`.
pub fn autounattend_xml(s: &WindowsSettings) -> Result<String, Error> {
    s.validate()?;
    let arch = s.arch.unattend_name();
    let mut x = Xml::new();
    x.open(
        "unattend",
        &[
            ("xmlns", "urn:schemas-microsoft-com:unattend"),
            (
                "xmlns:wcm",
                "http://schemas.microsoft.com/WMIConfig/2002/State",
            ),
            ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
        ],
    )?;

    x.open("settings", &[("pass", "windowsPE")])?;
    international(&mut x, s, true)?;
    setup_component(&mut x, s)?;
    x.close();

    x.open("settings", &[("pass", "offlineServicing")])?;
    x.component("Microsoft-Windows-LUA-Settings", arch)?;
    x.leaf("EnableLUA", "generation", "false")?;
    x.close();
    x.close();

    x.open("settings", &[("pass", "specialize")])?;
    x.component("Microsoft-Windows-Shell-Setup", arch)?;
    x.leaf("ComputerName", "computer_name", &s.computer_name)?;
    x.leaf("TimeZone", "timezone", &s.timezone)?;
    x.close();
    tcpip(&mut x, s)?;
    if s.generation == WindowsGeneration::Modern {
        // No network to activate over; don't try. (Vista names this
        // component differently, so Legacy leaves it out.)
        x.component("Microsoft-Windows-Security-SPP-UX", arch)?;
        x.leaf("SkipAutoActivation", "generation", "true")?;
        x.close();
    }
    x.component("Microsoft-Windows-Deployment", arch)?;
    let mut commands = vec![(
        "guestbox: full admin token for local accounts over the network",
        "reg.exe add HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Policies\\System /v LocalAccountTokenFilterPolicy /t REG_DWORD /d 1 /f".to_owned(),
    )];
    if s.generation == WindowsGeneration::Modern {
        commands.push((
            "guestbox: no network needed to finish OOBE",
            "reg.exe add HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\OOBE /v BypassNRO /t REG_DWORD /d 1 /f".to_owned(),
        ));
    }
    run_synchronous(&mut x, &commands)?;
    x.close();
    x.close();

    x.open("settings", &[("pass", "oobeSystem")])?;
    international(&mut x, s, false)?;
    oobe_shell(&mut x, s)?;
    x.close();

    x.close(); // unattend
    Ok(x.out)
}
