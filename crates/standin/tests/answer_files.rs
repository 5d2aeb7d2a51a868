//! The stand-in's answer-file checks, run on the host (no VM): the same Python the
//! stand-in ISO runs, fed guestbox's real answer files and broken variants of them.

use std::path::{Path, PathBuf};
use std::process::Command;

use media::cygwin::CygwinArch;
use media::windows::{
    build_install_media, Firmware, Profile, Secret, Win11Requirements, WindowsSettings,
};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHlV6C2n0V0wdqk0TWP7Vx0l1p1zYzXr1Y8l2q3w4e5r controller";

fn standin_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/standin.py")
}

fn settings(profile: Profile) -> WindowsSettings {
    let mut s = WindowsSettings::new(profile, Secret::new("Pa55word-x"), KEY);
    if profile == Profile::WindowsXp {
        s.product_key = Some("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE".into());
    }
    s
}

fn answer_file(s: &WindowsSettings) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let arch = match s.profile {
        Profile::Windows => CygwinArch::X86_64,
        Profile::WindowsXp => CygwinArch::X86,
    };
    let mirror = standin::mirror::cygwin_mirror(dir.path(), arch).unwrap();
    build_install_media(s, &mirror).unwrap().answer_file.data
}

/// Runs the stand-in's check on `data` (named like the answer file): Ok(JSON) or Err(line).
fn check(name: &str, data: &[u8]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, data).unwrap();
    let out = Command::new("python3")
        .arg(standin_py())
        .arg("check-answer-file")
        .arg(&file)
        .output()
        .expect("python3 runs (apt-get install python3)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.stderr.is_empty(),
        "the checker crashed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stdout)
    }
}

fn rejected(name: &str, data: &[u8], why: &str) {
    match check(name, data) {
        Ok(json) => panic!("accepted a broken {name} ({why} expected): {json}"),
        Err(line) => {
            assert!(line.starts_with(standin::SETUP_FAILED), "{line}");
            assert!(line.contains(why), "expected {why:?} in: {line}");
        }
    }
}

#[test]
fn guestbox_answer_files_pass_and_say_what_they_configure() {
    for (firmware, win11) in [
        (Firmware::Bios, Win11Requirements::Bypass),
        (Firmware::Uefi, Win11Requirements::RealTpmUefi),
    ] {
        let mut s = settings(Profile::Windows);
        s.firmware = firmware;
        s.win11 = win11;
        s.computer_name = "BUILDER-7".into();
        let json = check("Autounattend.xml", &answer_file(&s)).unwrap();
        // The answer file names the guest's interface by the link's one guest MAC.
        let mac = format!(
            "\"mac\": \"{}\"",
            link::net::mac_string(link::net::GUEST_MAC, ':')
        );
        for want in [
            "\"computer_name\": \"BUILDER-7\"",
            "\"ip\": \"192.168.0.1\"",
            "\"prefix\": 24",
            "\"user\": \"guestbox\"",
            mac.as_str(),
            "\"image\": \"/IMAGE/INDEX=1\"",
            "\"admin_password\": \"Pa55word-x\"",
        ] {
            assert!(json.contains(want), "{want} not in {json}");
        }
        let layout = if firmware == Firmware::Uefi {
            "uefi"
        } else {
            "bios"
        };
        assert!(
            json.contains(&format!("\"layout\": \"{layout}\"")),
            "{json}"
        );
    }
    let json = check("winnt.sif", &answer_file(&settings(Profile::WindowsXp))).unwrap();
    for want in [
        "\"ip\": \"192.168.0.1\"",
        "\"prefix\": 24",
        "\"user\": \"Administrator\"",
        "\"timezone_index\": 90",
        "\"product_key\": \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"",
    ] {
        assert!(json.contains(want), "{want} not in {json}");
    }
}

fn replace(data: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(data.to_vec()).unwrap();
    assert!(s.contains(from), "{from:?} is not in the answer file");
    s.replacen(from, to, 1).into_bytes()
}

#[test]
fn broken_autounattend_files_are_rejected_naming_the_problem() {
    let good = answer_file(&settings(Profile::Windows));
    let x = "Autounattend.xml";
    rejected(x, &good[..good.len() / 2], "not well-formed XML");
    rejected(
        x,
        &String::from_utf8(good.clone())
            .unwrap()
            .replace(
                "processorArchitecture=\"amd64\"",
                "processorArchitecture=\"x86\"",
            )
            .into_bytes(),
        "processorArchitecture=x86",
    );
    rejected(
        x,
        &replace(
            &replace(&good, "<AdministratorPassword>", "<AdministratorPasswordX>"),
            "</AdministratorPassword>",
            "</AdministratorPasswordX>",
        ),
        "the administrator password is missing",
    );
    rejected(
        x,
        &replace(&good, "192.168.0.1/24", "192.168.0.1"),
        "is not ADDRESS/PREFIX",
    );
    rejected(
        x,
        &replace(&good, "/IMAGE/INDEX", "/IMAGE/EDITION"),
        "MetaData Key",
    );
    rejected(
        x,
        &replace(&good, "<Value>1</Value>", "<Value>0</Value>"),
        "is not a positive number",
    );
    rejected(
        x,
        &String::from_utf8(good.clone())
            .unwrap()
            .replace("bootstrap.cmd", "other.cmd")
            .into_bytes(),
        "runs bootstrap.cmd",
    );
    rejected(
        x,
        &replace(&good, "<DhcpEnabled>false", "<DhcpEnabled>true"),
        "DHCP is on",
    );
    rejected(
        x,
        &replace(
            &good,
            "<ComputerName>GUESTBOX",
            "<ComputerName>GUESTBOX_WITH_A_LONG_NAME",
        ),
        "not a valid NetBIOS name",
    );
    rejected(
        x,
        &replace(&good, "urn:schemas-microsoft-com:unattend", "urn:example"),
        "not unattend in namespace",
    );
}

#[test]
fn broken_winnt_sif_files_are_rejected_naming_the_problem() {
    let good = answer_file(&settings(Profile::WindowsXp));
    let w = "winnt.sif";
    rejected(
        w,
        &String::from_utf8(good.clone())
            .unwrap()
            .replace("\r\n", "\n")
            .into_bytes(),
        "LF only",
    );
    rejected(
        w,
        &replace(&good, "ProductKey=", "ProductKeyX="),
        "ProductKey is missing",
    );
    rejected(w, &replace(&good, "DHCP=No", "DHCP=Yes"), "DHCP is on");
    rejected(
        w,
        &replace(&good, "[GuiRunOnce]", "[GuiRunTwice]"),
        "no [GuiRunOnce] section",
    );
    rejected(
        w,
        &replace(&good, "SubnetMask=255.255.255.0", "SubnetMask=255.0.255.0"),
        "not contiguous",
    );
    rejected(w, &replace(&good, "TimeZone=90", "TimeZone=91"), "TimeZone");
    rejected(
        w,
        &replace(&good, "AdminPassword=", "AdminPasswort="),
        "AdminPassword is missing",
    );
}
