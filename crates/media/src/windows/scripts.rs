//! The guest's bootstrap scripts, run once at the first logon after Setup.
//!
//! `bootstrap.cmd` (cmd.exe, CRLF) does the Windows side and installs
//! Cygwin offline; `bootstrap.sh` (Cygwin bash) installs the controller's
//! key and the sshd service. Neither holds a password.

use super::{
    quoted, Error, MediaFile, Profile, WindowsGeneration, WindowsSettings, BOOTSTRAP_FAILED,
    BOOTSTRAP_OK,
};
use crate::cygwin::CD_MARKER;
use crate::quote;

pub const BOOTSTRAP_CMD: &str = "bootstrap.cmd";
pub const BOOTSTRAP_SH: &str = "bootstrap.sh";
pub const AUTHORIZED_KEYS: &str = "authorized_keys";
/// The bootstrap's log on the guest's system drive.
pub const BOOTSTRAP_LOG: &str = "C:\\guestbox-bootstrap.log";
/// Created when the bootstrap starts, so a second copy (the CD has one
/// too) or a second logon does not run it again.
const STARTED_FLAG: &str = "C:\\guestbox-bootstrap.started";

/// `bootstrap.cmd`, `bootstrap.sh` and `authorized_keys`.
pub fn bootstrap_files(s: &WindowsSettings) -> Result<Vec<MediaFile>, Error> {
    Ok(vec![
        MediaFile {
            name: BOOTSTRAP_CMD.to_owned(),
            data: bootstrap_cmd(s)?.into_bytes(),
        },
        MediaFile {
            name: BOOTSTRAP_SH.to_owned(),
            data: bootstrap_sh(s)?.into_bytes(),
        },
        MediaFile {
            name: AUTHORIZED_KEYS.to_owned(),
            data: format!("{}\n", s.authorized_key.trim()).into_bytes(),
        },
    ])
}

/// The command Windows runs at first logon: the bootstrap from whichever
/// drive has it, floppy first (a USB stick or the CD also work).
pub fn first_logon_command() -> String {
    format!(
        "cmd.exe /c for %D in (A B D E F G H I J K L M N O P Q R S T U V W X Y Z) do @if exist %D:\\{BOOTSTRAP_CMD} call %D:\\{BOOTSTRAP_CMD}"
    )
}

/// Stage 1, cmd.exe. Lines are joined with CRLF: cmd mis-parses labels
/// and `goto` in LF-only files.
pub fn bootstrap_cmd(s: &WindowsSettings) -> Result<String, Error> {
    s.validate()?;
    let xp = s.profile == Profile::WindowsXp;
    let controller = s.network.controller_ip.to_string();
    let root = &s.cygwin.root;
    let setup = s.cygwin.arch.setup_exe();
    let packages = quoted("cygwin.packages", quote::cmd(&s.cygwin.packages.join(",")))?;
    let log = format!(">>\"{BOOTSTRAP_LOG}\" 2>&1");

    let mut l: Vec<String> = vec![
        "@echo off".into(),
        "rem guestbox bootstrap, stage 1 (generated): runs once at the first logon.".into(),
        "rem Opens the firewall to the controller, quiets Windows, installs Cygwin".into(),
        "rem offline from the package CD, runs bootstrap.sh, reports on COM1, powers off.".into(),
        "setlocal EnableExtensions DisableDelayedExpansion".into(),
        format!("if exist \"{STARTED_FLAG}\" exit /b 0"),
        format!("echo started>\"{STARTED_FLAG}\""),
        "set \"GB_HERE=%~dp0\"".into(),
        "set \"GB_STEP=start\"".into(),
        "call :log bootstrap from %GB_HERE%".into(),
        String::new(),
        "rem The CD's drive letter depends on the machine: find it by its marker.".into(),
        "set \"GB_CD=\"".into(),
        format!(
            "for %%D in (D E F G H I J K L M N O P Q R S T U V W X Y Z) do if not defined GB_CD if exist \"%%D:\\{CD_MARKER}\" set \"GB_CD=%%D:\\\""
        ),
        "set \"GB_STEP=finding the Cygwin package CD\"".into(),
        "if not defined GB_CD goto fail".into(),
        "call :log package CD at %GB_CD%".into(),
        String::new(),
        "rem Only the controller may connect: SSH and SMB, on the private link.".into(),
    ];
    if xp {
        // XP has no advfirewall; its firewall takes address/mask scopes.
        for (name, port) in [
            ("guestbox-ssh", 22),
            ("guestbox-smb", 445),
            ("guestbox-netbios", 139),
        ] {
            l.push(format!(
                "netsh firewall add portopening protocol=TCP port={port} name={name} mode=ENABLE scope=CUSTOM addresses={controller}/255.255.255.255 profile=ALL {log}"
            ));
        }
    } else {
        for (name, proto) in [
            ("guestbox ssh", "protocol=TCP localport=22"),
            ("guestbox smb", "protocol=TCP localport=445"),
            ("guestbox ping", "protocol=icmpv4:8,any"),
        ] {
            l.push(format!(
                "netsh advfirewall firewall add rule name=\"{name}\" dir=in action=allow {proto} remoteip={controller} profile=any {log}"
            ));
        }
    }
    l.extend([
        String::new(),
        "rem A frozen guest must not update itself, set its clock or fall asleep.".into(),
        format!("reg add \"HKLM\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU\" /v NoAutoUpdate /t REG_DWORD /d 1 /f {log}"),
        format!("sc config wuauserv start= disabled {log}"),
        format!("net stop wuauserv {log}"),
        format!("reg add \"HKLM\\SYSTEM\\CurrentControlSet\\Services\\W32Time\\Parameters\" /v Type /t REG_SZ /d NoSync /f {log}"),
        format!("sc config w32time start= disabled {log}"),
        format!("net stop w32time {log}"),
        format!("net accounts /maxpwage:unlimited {log}"),
    ]);
    if !xp {
        l.extend([
            format!("powercfg -hibernate off {log}"),
            format!("powercfg -change -standby-timeout-ac 0 {log}"),
            format!("powercfg -change -hibernate-timeout-ac 0 {log}"),
            format!("powercfg -change -monitor-timeout-ac 0 {log}"),
        ]);
    }
    if s.generation == WindowsGeneration::Modern && !xp {
        // Defender scanning every file Cygwin touches makes builds crawl.
        l.push(format!(
            "if exist \"%SystemRoot%\\System32\\WindowsPowerShell\\v1.0\\powershell.exe\" powershell.exe -NoProfile -NonInteractive -Command \"Add-MpPreference -ExclusionPath '{root}'\" {log}"
        ));
    }
    let shutdown = if xp {
        "shutdown -s -t 0"
    } else {
        "shutdown /s /t 0"
    };
    l.extend([
        String::new(),
        "rem Cygwin, offline: -L installs from the local directory -l, which holds".into(),
        "rem the mirror directory with <arch>/setup.ini and the packages. In a batch".into(),
        "rem file cmd waits for GUI programs like setup to exit.".into(),
        "set \"GB_STEP=installing Cygwin\"".into(),
        format!("call :log installing Cygwin into {root}"),
        format!(
            "\"%GB_CD%{setup}\" -q -n -N -d -L -l %GB_CD% -R {root} -P {packages} {log}"
        ),
        "call :log setup exited with %ERRORLEVEL%".into(),
        format!("if not exist \"{root}\\bin\\bash.exe\" goto fail"),
        String::new(),
        "set \"GB_STEP=setting up sshd in bootstrap.sh\"".into(),
        format!("\"{root}\\bin\\bash.exe\" --login \"%GB_HERE%{BOOTSTRAP_SH}\" {log}"),
        "if errorlevel 1 goto fail".into(),
        String::new(),
        "call :log done".into(),
        format!("call :serial {BOOTSTRAP_OK}"),
        shutdown.into(),
        "exit /b 0".into(),
        String::new(),
        ":fail".into(),
        "call :log FAILED: %GB_STEP%".into(),
        format!("call :serial {BOOTSTRAP_FAILED}: %GB_STEP%"),
        "rem Power off anyway: the host reads the verdict from COM1 and the log.".into(),
        shutdown.into(),
        "exit /b 1".into(),
        String::new(),
        ":log".into(),
        "rem Redirection first: a message ending in a digit would name a handle.".into(),
        format!(">>\"{BOOTSTRAP_LOG}\" echo [%DATE% %TIME%] %*"),
        "exit /b 0".into(),
        String::new(),
        "rem No handshake and a finite timeout, so a missing listener cannot hang us.".into(),
        ":serial".into(),
        "mode COM1: baud=115200 parity=n data=8 stop=1 to=off xon=off odsr=off octs=off dtr=off rts=off idsr=off >nul 2>&1".into(),
        ">COM1 echo %*".into(),
        "exit /b 0".into(),
    ]);
    let mut out = l.join("\r\n");
    out.push_str("\r\n");
    Ok(out)
}

/// Stage 2, Cygwin bash as the administrator: key and sshd.
pub fn bootstrap_sh(s: &WindowsSettings) -> Result<String, Error> {
    s.validate()?;
    let port = 22;
    Ok(format!(
        r#"#!/bin/bash
# guestbox bootstrap, stage 2 (generated): runs once, in Cygwin bash as the
# administrator, from bootstrap.cmd. Installs the controller's SSH key and
# sshd as a Windows service that starts at boot.
set -eu
export PATH=/usr/local/bin:/usr/bin:/bin:$PATH
here=$(dirname -- "$(cygpath -u -- "$0")")

mkdir -p -- "$HOME/.ssh"
cp -- "$here/{AUTHORIZED_KEYS}" "$HOME/.ssh/authorized_keys"
chmod 700 -- "$HOME/.ssh"
chmod 600 -- "$HOME/.ssh/authorized_keys"

# Older Cygwin runs sshd under a privileged account (cyg_server) that needs
# a password: a random one that never leaves the guest. Newer Cygwin runs
# sshd as SYSTEM and ignores it.
pw="$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')Aa1-"
ssh-host-config --yes --port {port} --pwd "$pw"

# No DNS on the private link: never wait for reverse lookups.
for conf in /etc/sshd_config /etc/ssh/sshd_config; do
  [ -f "$conf" ] || continue
  if grep -q '^#\?UseDNS' "$conf"; then
    sed -i 's/^#\?UseDNS.*/UseDNS no/' "$conf"
  else
    echo 'UseDNS no' >>"$conf"
  fi
done

# Start it once to prove it works; Windows starts it at every boot.
for svc in cygsshd sshd; do
  if cygrunsrv --query "$svc" >/dev/null 2>&1; then
    cygrunsrv --start "$svc"
    exit 0
  fi
done
echo "guestbox: ssh-host-config installed no sshd service" >&2
exit 1
"#
    ))
}
