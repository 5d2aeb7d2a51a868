//! `winnt.sif` for Windows XP and Server 2003, keeping the 2014 original's
//! keys (nixpkgs' `unattended-image.nix`): text-mode setup from CD with the
//! answer file on the floppy, a static address on the first adapter, every
//! optional component off, one auto-logon as Administrator that runs the
//! bootstrap from A:.
//!
//! Where we differ from the original, and why:
//! - `[WindowsFirewall]`: the original turned the firewall off. We keep it on
//!   (`Mode = 1`, exceptions allowed) and `bootstrap.cmd` opens SSH and SMB to
//!   the controller's address only, as the `windows` profile does.
//! - `[SetupParams] UserExecute`: the original installed Cygwin there, as
//!   SYSTEM at the end of GUI setup. We install it from `[GuiRunOnce]`
//!   instead, in `bootstrap.cmd`: the key must land in the Administrator's
//!   home, and one script reports success or the failed step on COM1.
//! - `[Networking] InstallDefaultComponents = No`: client, server and TCP/IP
//!   are listed explicitly instead of taking whatever the defaults are.
//! - `TimeZone` and `[RegionalSettings]` follow the settings (the original:
//!   `TimeZone = 85`, London, and Setup's default language).

use super::{quoted, scripts, setting, xp_language, xp_time_zone, Error, WindowsSettings};
use crate::quote;

/// Optional components, all off: the original's list. A build guest needs
/// none of them, and each one left out is install time and disk saved.
pub const COMPONENTS_OFF: &[&str] = &[
    "AccessOpt",
    "Appsrv_console",
    "Aspnet",
    "BitsServerExtensionsISAPI",
    "BitsServerExtensionsManager",
    "Calc",
    "Certsrv",
    "Certsrv_client",
    "Certsrv_server",
    "Charmap",
    "Chat",
    "Clipbook",
    "Cluster",
    "Complusnetwork",
    "Deskpaper",
    "Dialer",
    "Dtcnetwork",
    "Fax",
    "Fp_extensions",
    "Fp_vdir_deploy",
    "Freecell",
    "Hearts",
    "Hypertrm",
    "IEAccess",
    "IEHardenAdmin",
    "IEHardenUser",
    "Iis_asp",
    "Iis_common",
    "Iis_ftp",
    "Iis_inetmgr",
    "Iis_internetdataconnector",
    "Iis_nntp",
    "Iis_serversideincludes",
    "Iis_smtp",
    "Iis_webdav",
    "Iis_www",
    "Indexsrv_system",
    "Inetprint",
    "Licenseserver",
    "Media_clips",
    "Media_utopia",
    "Minesweeper",
    "Mousepoint",
    "Msmq_ADIntegrated",
    "Msmq_Core",
    "Msmq_HTTPSupport",
    "Msmq_LocalStorage",
    "Msmq_MQDSService",
    "Msmq_RoutingSupport",
    "Msmq_TriggersService",
    "Msnexplr",
    "Mswordpad",
    "Netcis",
    "Netoc",
    "OEAccess",
    "Objectpkg",
    "Paint",
    "Pinball",
    "Pop3Admin",
    "Pop3Service",
    "Pop3Srv",
    "Rec",
    "Reminst",
    "Rootautoupdate",
    "Rstorage",
    "SCW",
    "Sakit_web",
    "Solitaire",
    "Spider",
    "TSWebClient",
    "Templates",
    "TerminalServer",
    "UDDIAdmin",
    "UDDIDatabase",
    "UDDIWeb",
    "Vol",
    "WMAccess",
    "WMPOCM",
    "WbemMSI",
    "Wms",
    "Wms_admin_asp",
    "Wms_admin_mmc",
    "Wms_isapi",
    "Wms_server",
    "Zonegames",
];

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
    // validate() has checked both for this profile.
    let time_zone = xp_time_zone(&s.timezone)
        .ok_or_else(|| setting("timezone", "no Windows XP time zone index"))?;
    let (lcid, language_group) =
        xp_language(&s.locale).ok_or_else(|| setting("locale", "no Windows XP language id"))?;
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
    f.raw("TimeZone", time_zone);
    f.raw("ServerWelcome", "No");

    f.section("UserData");
    if let Some(key) = &s.product_key {
        f.text("ProductKey", "product_key", key)?;
    }
    f.text("FullName", "full_name", &s.full_name)?;
    f.text("OrgName", "organization", &s.organization)?;
    f.text("ComputerName", "computer_name", &s.computer_name)?;

    f.section("RegionalSettings");
    f.raw("LanguageGroup", language_group);
    // Sets the system, user and input locale together.
    f.raw("Language", format!("{lcid:08x}"));

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

    f.section("Components");
    for c in COMPONENTS_OFF {
        f.raw(c, "Off");
    }

    // XP SP2 and later; older Setup ignores the section (see the module doc).
    f.section("WindowsFirewall");
    f.raw("Profiles", "WindowsFirewall.Guestbox");
    f.section("WindowsFirewall.Guestbox");
    f.raw("Mode", 1);

    f.section("GuiRunOnce");
    f.text(
        "Command0",
        "command",
        &format!("cmd.exe /c A:\\{}", scripts::BOOTSTRAP_CMD),
    )?;
    Ok(f.out)
}
