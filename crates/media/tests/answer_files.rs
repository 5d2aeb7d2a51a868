//! Autounattend.xml and winnt.sif: well-formed, and with the values asked for.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{run, run_ok, tool, TEST_KEY};
use media::windows::{
    self, unattend, winnt_sif, Firmware, ImageSelection, Profile, Secret, Win11Requirements,
    WindowsGeneration, WindowsSettings,
};

const NASTY_PASSWORD: &str = "p<a>&\"ss' %x% ^&$HOME\\";

fn modern() -> WindowsSettings {
    WindowsSettings::new(Profile::Windows, Secret::new(NASTY_PASSWORD), TEST_KEY)
}

fn xp() -> WindowsSettings {
    let mut s = WindowsSettings::new(Profile::WindowsXp, Secret::new("xp pass;w%rd"), TEST_KEY);
    s.product_key = Some("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE".to_owned());
    s
}

/// Writes `xml` and checks it with `xmllint --noout`.
fn lint(dir: &Path, xml: &str) -> std::path::PathBuf {
    let xmllint = tool("xmllint", "libxml2-utils");
    let path = dir.join("Autounattend.xml");
    std::fs::write(&path, xml).unwrap();
    run_ok(Command::new(xmllint).arg("--noout").arg(&path));
    path
}

/// Every text value of elements named `name`, read back by xmllint.
fn values(file: &Path, xpath: &str) -> Vec<String> {
    let xmllint = tool("xmllint", "libxml2-utils");
    let out = run(Command::new(xmllint).arg("--xpath").arg(xpath).arg(file));
    // xmllint exits 10 when nothing matches.
    if out.status.code() == Some(10) {
        return Vec::new();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().map(unescape).collect()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Text of the element at a local-name path like "AutoLogon/Username".
fn value(file: &Path, path: &str) -> Vec<String> {
    let steps: Vec<String> = path
        .split('/')
        .map(|p| format!("*[local-name()='{p}']"))
        .collect();
    values(file, &format!("//{}/text()", steps.join("/")))
}

#[test]
fn autounattend_bios_is_well_formed_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = modern();
    let f = lint(dir.path(), &unattend::autounattend_xml(&s).unwrap());

    assert_eq!(value(&f, "ComputerName"), ["GUESTBOX"]);
    assert_eq!(value(&f, "component/TimeZone"), ["UTC", "UTC"]);
    assert_eq!(value(&f, "UILanguage").len(), 3); // SetupUILanguage, WinPE, oobe
    assert!(value(&f, "UserLocale").iter().all(|v| v == "en-US"));

    // Static address on the NIC named by its MAC; no DHCP, no gateway.
    assert_eq!(value(&f, "Interface/Ipv4Settings/DhcpEnabled"), ["false"]);
    // The guest VM's MAC on the private link (the one every profile's guest NIC has).
    assert_eq!(value(&f, "Interface/Identifier"), ["52-54-00-00-00-01"]);
    assert_eq!(
        value(&f, "UnicastIpAddresses/IpAddress"),
        ["192.168.0.1/24"]
    );
    assert_eq!(value(&f, "Routes"), Vec::<String>::new());
    assert_eq!(values(&f, "//*[local-name()='Route']").len(), 0);

    // BIOS: one active NTFS partition, installed to partition 1.
    assert_eq!(value(&f, "CreatePartition/Type"), ["Primary"]);
    assert_eq!(value(&f, "ModifyPartition/Active"), ["true"]);
    assert_eq!(value(&f, "ModifyPartition/Format"), ["NTFS"]);
    assert_eq!(value(&f, "InstallTo/PartitionID"), ["1"]);

    // Edition by index, no product key unless given.
    assert_eq!(value(&f, "MetaData/Key"), ["/IMAGE/INDEX"]);
    assert_eq!(value(&f, "MetaData/Value"), ["1"]);
    assert_eq!(value(&f, "ProductKey/Key"), Vec::<String>::new());
    assert_eq!(value(&f, "Organization"), Vec::<String>::new());

    // The account, auto-logon once, the password surviving XML escaping.
    assert_eq!(value(&f, "AutoLogon/Username"), ["guestbox"]);
    assert_eq!(value(&f, "AutoLogon/LogonCount"), ["1"]);
    assert_eq!(value(&f, "AutoLogon/Password/Value"), [NASTY_PASSWORD]);
    assert_eq!(value(&f, "AdministratorPassword/Value"), [NASTY_PASSWORD]);
    assert_eq!(value(&f, "LocalAccount/Password/Value"), [NASTY_PASSWORD]);
    assert_eq!(value(&f, "LocalAccount/Group"), ["Administrators"]);
    assert_eq!(value(&f, "LocalAccount/Name"), ["guestbox"]);

    // UAC off, the bootstrap as first-logon command.
    assert_eq!(value(&f, "EnableLUA"), ["false"]);
    let cmd = value(&f, "SynchronousCommand/CommandLine");
    assert_eq!(cmd.len(), 1);
    assert!(cmd[0].contains("%D:\\bootstrap.cmd"), "{cmd:?}");
    assert!(cmd[0].starts_with("cmd.exe /c for %D in (A B D"), "{cmd:?}");

    // Windows 11 bypass keys by default.
    let pe_cmds = value(&f, "RunSynchronousCommand/Path").join("\n");
    for key in ["BypassTPMCheck", "BypassSecureBootCheck", "BypassRAMCheck"] {
        assert!(
            pe_cmds.contains(&format!("LabConfig /v {key} /t REG_DWORD /d 1")),
            "{pe_cmds}"
        );
    }
    assert_eq!(value(&f, "HideOnlineAccountScreens"), ["true"]);
    assert_eq!(
        values(&f, "//*[local-name()='component']/@processorArchitecture")
            .iter()
            .filter(|v| !v.contains("amd64"))
            .count(),
        0
    );
}

#[test]
fn autounattend_uefi_gpt_layout_and_real_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = modern();
    s.firmware = Firmware::Uefi;
    s.win11 = Win11Requirements::RealTpmUefi;
    s.image = ImageSelection::Name("Windows 11 Pro & <N>".to_owned());
    s.product_key = Some("VK7JG-NPHTM-C97JM-9MPGT-3V66T".to_owned());
    s.organization = "R&D <lab>".to_owned();
    let f = lint(dir.path(), &unattend::autounattend_xml(&s).unwrap());
    assert_eq!(value(&f, "UserData/Organization"), ["R&D <lab>"]);
    assert_eq!(value(&f, "RegisteredOrganization"), ["R&D <lab>"]);
    assert_eq!(value(&f, "CreatePartition/Type"), ["EFI", "MSR", "Primary"]);
    assert_eq!(value(&f, "ModifyPartition/Format"), ["FAT32", "NTFS"]);
    assert_eq!(value(&f, "ModifyPartition/Active"), Vec::<String>::new());
    assert_eq!(value(&f, "InstallTo/PartitionID"), ["3"]);
    assert_eq!(value(&f, "MetaData/Key"), ["/IMAGE/NAME"]);
    assert_eq!(value(&f, "MetaData/Value"), ["Windows 11 Pro & <N>"]);
    assert_eq!(
        value(&f, "ProductKey/Key"),
        ["VK7JG-NPHTM-C97JM-9MPGT-3V66T"]
    );
    let cmds = value(&f, "RunSynchronousCommand/Path").join("\n");
    assert!(!cmds.contains("LabConfig"), "{cmds}");
}

#[test]
fn autounattend_legacy_generation_leaves_out_newer_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = modern();
    s.generation = WindowsGeneration::Legacy;
    s.arch = windows::WindowsArch::X86;
    let f = lint(dir.path(), &unattend::autounattend_xml(&s).unwrap());
    assert_eq!(value(&f, "HideOnlineAccountScreens"), Vec::<String>::new());
    assert_eq!(value(&f, "SkipAutoActivation"), Vec::<String>::new());
    let cmds = value(&f, "RunSynchronousCommand/Path").join("\n");
    assert!(!cmds.contains("LabConfig"), "{cmds}");
    let arches = values(&f, "//*[local-name()='component']/@processorArchitecture");
    assert!(
        !arches.is_empty() && arches.iter().all(|a| a.contains("\"x86\"")),
        "{arches:?}"
    );
}

#[test]
fn autounattend_settings_are_validated() {
    let mut s = modern();
    s.win11 = Win11Requirements::RealTpmUefi;
    let e = unattend::autounattend_xml(&s).unwrap_err().to_string();
    assert!(e.contains("win11") && e.contains("UEFI"), "{e}");

    let mut s = modern();
    s.computer_name = "THIS-NAME-IS-TOO-LONG".to_owned();
    assert!(unattend::autounattend_xml(&s)
        .unwrap_err()
        .to_string()
        .contains("computer_name"));

    let mut s = modern();
    s.product_key = Some("not a key".to_owned());
    assert!(unattend::autounattend_xml(&s)
        .unwrap_err()
        .to_string()
        .contains("product_key"));

    let mut s = modern();
    s.password = Secret::new("bell\u{7}");
    let e = unattend::autounattend_xml(&s).unwrap_err().to_string();
    assert!(e.contains("password") && !e.contains("bell"), "{e}");

    let mut s = modern();
    s.authorized_key = "not a key".to_owned();
    assert!(unattend::autounattend_xml(&s)
        .unwrap_err()
        .to_string()
        .contains("authorized_key"));

    let mut s = modern();
    s.network.controller_ip = "10.0.0.2".parse().unwrap();
    assert!(unattend::autounattend_xml(&s)
        .unwrap_err()
        .to_string()
        .contains("subnet"));

    let mut s = modern();
    s.cygwin.root = "C:\\Program Files\\cygwin".to_owned();
    assert!(unattend::autounattend_xml(&s)
        .unwrap_err()
        .to_string()
        .contains("cygwin.root"));
}

#[test]
fn secret_debug_is_redacted() {
    let s = modern();
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("p<a>"), "{dbg}");
    assert!(dbg.contains("redacted"));
}

/// A small parser for winnt.sif: section -> key -> raw value.
fn parse_sif(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.split("\r\n") {
        assert!(
            !line.contains('\n') && !line.contains('\r'),
            "bare line break in {line:?}"
        );
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            out.entry(section.clone()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line:?}"));
        out.entry(section.clone())
            .or_default()
            .insert(k.trim().to_owned(), v.trim().to_owned());
    }
    out
}

#[test]
fn winnt_sif_keeps_the_original_keys() {
    let text = winnt_sif::winnt_sif(&xp()).unwrap();
    assert!(text.ends_with("\r\n"));
    let sif = parse_sif(&text);
    let get = |sec: &str, key: &str| -> String {
        sif.get(sec)
            .and_then(|s| s.get(key))
            .unwrap_or_else(|| panic!("[{sec}] {key} missing"))
            .clone()
    };
    assert_eq!(get("Data", "UnattendedInstall"), "Yes");
    assert_eq!(get("Data", "MsDosInitiated"), "0");
    assert_eq!(get("Data", "AutoPartition"), "1");
    assert_eq!(get("Unattended", "UnattendMode"), "FullUnattended");
    assert_eq!(get("Unattended", "UnattendSwitch"), "Yes");
    assert_eq!(get("Unattended", "OemSkipEula"), "Yes");
    assert_eq!(get("Unattended", "Repartition"), "Yes");
    assert_eq!(get("Unattended", "WaitForReboot"), "No");
    assert_eq!(get("Unattended", "DUDisable"), "Yes");
    assert_eq!(get("Unattended", "Hibernation"), "No");
    assert_eq!(get("Unattended", "DriverSigningPolicy"), "Ignore");
    assert_eq!(get("Unattended", "OemPreinstall"), "No");
    assert_eq!(get("Unattended", "TargetPath"), "\\WINDOWS");
    assert_eq!(get("GuiUnattended", "OemSkipWelcome"), "1");
    assert_eq!(get("GuiUnattended", "ServerWelcome"), "No");
    assert_eq!(get("RegionalSettings", "LanguageGroup"), "1");
    assert_eq!(get("RegionalSettings", "Language"), "00000409");
    // Every optional component the original turned off is off, and only those.
    let components = &sif["Components"];
    assert_eq!(components.len(), winnt_sif::COMPONENTS_OFF.len());
    assert_eq!(components.len(), 85);
    for c in [
        "Solitaire",
        "Rootautoupdate",
        "Iis_www",
        "TerminalServer",
        "Zonegames",
    ] {
        assert_eq!(get("Components", c), "Off");
    }
    assert!(components.values().all(|v| v == "Off"), "{components:?}");
    // The firewall stays on (unlike the original's TurnOffFirewall): bootstrap.cmd opens
    // SSH and SMB to the controller only.
    assert_eq!(
        get("WindowsFirewall", "Profiles"),
        "WindowsFirewall.Guestbox"
    );
    assert_eq!(get("WindowsFirewall.Guestbox", "Mode"), "1");
    assert!(!sif.contains_key("WindowsFirewall.TurnOffFirewall"));
    // Cygwin is installed at first logon by bootstrap.cmd, not by UserExecute.
    assert!(!sif.contains_key("SetupParams"));
    assert_eq!(get("GuiUnattended", "AdminPassword"), "\"xp pass;w%rd\"");
    assert_eq!(get("GuiUnattended", "AutoLogon"), "Yes");
    assert_eq!(get("GuiUnattended", "AutoLogonCount"), "1");
    assert_eq!(get("GuiUnattended", "TimeZone"), "90");
    assert_eq!(get("GuiUnattended", "OEMSkipRegional"), "1");
    assert_eq!(
        get("UserData", "ProductKey"),
        "\"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\""
    );
    assert_eq!(get("UserData", "FullName"), "\"guestbox\"");
    assert_eq!(get("UserData", "ComputerName"), "\"GUESTBOX\"");
    assert_eq!(get("Networking", "InstallDefaultComponents"), "No");
    assert_eq!(get("NetProtocols", "MS_TCPIP"), "params.MS_TCPIP");
    assert_eq!(
        get("params.MS_TCPIP", "AdapterSections"),
        "params.MS_TCPIP.Adapter01"
    );
    let tcp = &sif["params.MS_TCPIP.Adapter01"];
    assert_eq!(tcp["IPAddress"], "192.168.0.1");
    assert_eq!(tcp["SubnetMask"], "255.255.255.0");
    assert_eq!(tcp["DHCP"], "No");
    assert!(!tcp.contains_key("DefaultGateway"));
    assert_eq!(
        get("GuiRunOnce", "Command0"),
        "\"cmd.exe /c A:\\bootstrap.cmd\""
    );
}

#[test]
fn winnt_sif_refuses_what_it_cannot_quote() {
    let mut s = xp();
    s.password = Secret::new("has\"quote");
    let e = winnt_sif::winnt_sif(&s).unwrap_err().to_string();
    assert!(
        e.contains("password") && e.contains("winnt.sif") && !e.contains("has"),
        "{e}"
    );

    let mut s = xp();
    s.product_key = None;
    assert!(winnt_sif::winnt_sif(&s)
        .unwrap_err()
        .to_string()
        .contains("product_key"));

    let mut s = xp();
    s.firmware = Firmware::Uefi;
    assert!(winnt_sif::winnt_sif(&s)
        .unwrap_err()
        .to_string()
        .contains("firmware"));

    let mut s = xp();
    s.password = Secret::new("");
    let sif = parse_sif(&winnt_sif::winnt_sif(&s).unwrap());
    assert_eq!(sif["GuiUnattended"]["AdminPassword"], "*");
}

#[test]
fn answer_file_names_follow_the_profile() {
    assert_eq!(
        windows::answer_file(&modern()).unwrap().name,
        "Autounattend.xml"
    );
    assert_eq!(windows::answer_file(&xp()).unwrap().name, "winnt.sif");
    assert_eq!(Profile::from_name("windows-xp"), Some(Profile::WindowsXp));
    assert_eq!(Profile::from_name("windows"), Some(Profile::Windows));
    assert_eq!(Profile::from_name("debian"), None);
    assert_eq!(xp().ssh_user(), "Administrator");
    assert_eq!(modern().ssh_user(), "guestbox");
}

#[test]
fn winnt_sif_maps_time_zones_and_locales() {
    let sif = |tz: &str, locale: &str| {
        let mut s = xp();
        s.timezone = tz.to_owned();
        s.locale = locale.to_owned();
        parse_sif(&winnt_sif::winnt_sif(&s).unwrap())
    };
    // Microsoft's time zone index values, by id (case does not matter).
    for (tz, index) in [
        ("UTC", "90"),
        ("Greenwich Standard Time", "90"),
        ("GMT Standard Time", "85"),
        ("W. Europe Standard Time", "110"),
        ("Eastern Standard Time", "35"),
        ("Central Standard Time", "20"),
        ("Mountain Standard Time", "10"),
        ("Pacific Standard Time", "4"),
        ("China Standard Time", "210"),
        ("tokyo standard time", "235"),
    ] {
        assert_eq!(sif(tz, "en-US")["GuiUnattended"]["TimeZone"], index, "{tz}");
    }
    for (locale, lcid, group) in [
        ("en-US", "00000409", "1"),
        ("en-GB", "00000809", "1"),
        ("de-DE", "00000407", "1"),
        ("fr-FR", "0000040c", "1"),
        ("es-ES", "00000c0a", "1"),
        ("it-IT", "00000410", "1"),
        ("nl-nl", "00000413", "1"),
        ("ja-JP", "00000411", "7"),
    ] {
        let r = &sif("UTC", locale)["RegionalSettings"];
        assert_eq!(r["Language"], lcid, "{locale}");
        assert_eq!(r["LanguageGroup"], group, "{locale}");
    }

    // Anything else is refused, naming what is supported.
    let mut s = xp();
    s.timezone = "Europe/Berlin".to_owned();
    let e = winnt_sif::winnt_sif(&s).unwrap_err().to_string();
    assert!(
        e.contains("timezone")
            && e.contains("Europe/Berlin")
            && e.contains("W. Europe Standard Time")
            && e.contains("Pacific Standard Time"),
        "{e}"
    );
    let mut s = xp();
    s.locale = "pt-BR".to_owned();
    let e = windows::answer_file(&s).unwrap_err().to_string();
    assert!(
        e.contains("locale") && e.contains("pt-BR") && e.contains("ja-JP"),
        "{e}"
    );
    // The modern profile takes Windows' own ids as they are.
    let mut m = modern();
    m.timezone = "Pacific SA Standard Time".to_owned();
    m.locale = "pt-BR".to_owned();
    assert!(unattend::autounattend_xml(&m).is_ok());
}
