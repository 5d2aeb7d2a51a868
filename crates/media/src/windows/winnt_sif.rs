//! `winnt.sif` for Windows XP and Server 2003, keeping the 2014 original's
//! keys: text-mode setup from CD with the answer file on the floppy, a
//! static address on the first adapter, one auto-logon as Administrator
//! that runs the bootstrap from A:.

use super::{quoted, scripts, Error, WindowsSettings};
use crate::quote;

struct Sif {
    out: String,
}

impl Sif {
    fn section(&mut self, name: &str) {
        if !self.out.is_empty() {
            self.out.push_str("\r\n");
        }
        self.out.push_str(&format!("[{name}]\r\n"));
    }

    /// A fixed value, written as it is.
    fn raw(&mut self, key: &str, value: impl std::fmt::Display) {
        self.out.push_str(&format!("{key}={value}\r\n"));
    }

    /// A caller's value, quoted.
    fn text(&mut self, key: &str, field: &'static str, value: &str) -> Result<(), Error> {
        let v = quoted(field, quote::winnt_sif(value))?;
        self.out.push_str(&format!("{key}={v}\r\n"));
        Ok(())
    }
}

/// The whole `winnt.sif` (CRLF line ends, as Setup's INF parser expects).
pub fn winnt_sif(s: &WindowsSettings) -> Result<String, Error> {
    s.validate()?;
    let n = &s.network;
    let mut f = Sif {
        out: String::from("; guestbox: unattended Windows XP / Server 2003 setup (generated)\r\n"),
    };

    f.section("Data");
    f.raw("AutoPartition", 1);
    f.raw("MsDosInitiated", 0);
    f.raw("UnattendedInstall", "Yes");
    f.raw("AutomaticUpdates", "No");

    f.section("Unattended");
    f.raw("UnattendMode", "FullUnattended");
    f.raw("UnattendSwitch", "Yes");
    f.raw("OemSkipEula", "Yes");
    f.raw("OemPreinstall", "No");
    f.raw("TargetPath", "\\WINDOWS");
    f.raw("Repartition", "Yes");
    f.raw("WaitForReboot", "No");
    f.raw("DriverSigningPolicy", "Ignore");
    f.raw("NonDriverSigningPolicy", "Ignore");
    f.raw("Hibernation", "No");
    f.raw("DUDisable", "Yes");

    f.section("GuiUnattended");
    if s.password.expose().is_empty() {
        f.raw("AdminPassword", "*");
    } else {
        f.text("AdminPassword", "password", s.password.expose())?;
    }
    f.raw("EncryptedAdminPassword", "No");
    f.raw("AutoLogon", "Yes");
    f.raw("AutoLogonCount", 1);
    f.raw("OEMSkipRegional", 1);
    f.raw("OemSkipWelcome", 1);
    f.raw("TimeZone", s.xp_timezone);
    f.raw("ServerWelcome", "No");

    f.section("UserData");
    if let Some(key) = &s.product_key {
        f.text("ProductKey", "product_key", key)?;
    }
    f.text("FullName", "full_name", &s.full_name)?;
    f.text("OrgName", "organization", &s.organization)?;
    f.text("ComputerName", "computer_name", &s.computer_name)?;

    f.section("RegionalSettings");
    f.raw("LanguageGroup", 1);
    f.raw("Language", format!("{:08x}", s.xp_language));

    f.section("Identification");
    f.raw("JoinWorkgroup", "WORKGROUP");

    f.section("Networking");
    // No defaults: the sections below are the whole network setup.
    f.raw("InstallDefaultComponents", "No");

    f.section("NetAdapters");
    f.raw("Adapter01", "params.Adapter01");
    f.section("params.Adapter01");
    f.raw("INFID", "*");

    f.section("NetClients");
    f.raw("MS_MSClient", "params.MS_MSClient");
    f.section("params.MS_MSClient");

    f.section("NetServices");
    f.raw("MS_SERVER", "params.MS_SERVER");
    f.section("params.MS_SERVER");

    f.section("NetProtocols");
    f.raw("MS_TCPIP", "params.MS_TCPIP");
    f.section("params.MS_TCPIP");
    f.raw("DNS", "No");
    f.raw("UseDomainNameDevolution", "No");
    f.raw("EnableLMHosts", "Yes");
    f.raw("AdapterSections", "params.MS_TCPIP.Adapter01");

    f.section("params.MS_TCPIP.Adapter01");
    f.raw("SpecificTo", "Adapter01");
    f.raw("DHCP", "No");
    f.raw("IPAddress", n.guest_ip);
    f.raw("SubnetMask", n.netmask());
    // No DefaultGateway: the link is private.
    f.raw("WINS", "No");
    f.raw("NetBIOSOptions", 0);

    f.section("GuiRunOnce");
    f.text(
        "Command0",
        "command",
        &format!("cmd.exe /c A:\\{}", scripts::BOOTSTRAP_CMD),
    )?;
    Ok(f.out)
}
