//! The per-run guest script: map the controller's SMB shares, bind them
//! into Cygwin's tree, enter the working directory, set the environment,
//! run the command and exit with its status.
//!
//! The script is bash, for Cygwin. `net use` is a Windows command and drive
//! mappings belong to a logon session, so the script writes the mappings
//! as a small batch file (cmd-quoted) and runs it with `cmd /c` in its own
//! session. The whole body is one `{ ...; }` group so that bash has read
//! all of it before the command starts, even when the script arrives on
//! stdin (`ssh guest bash -s < script`): the command then sees EOF on
//! stdin. To give the command a real stdin, copy the script to the guest
//! and run it as a file.

use std::net::Ipv4Addr;

use super::{quoted, setting, Error, Secret};
use crate::quote;

/// Exit status when the script fails before the command runs (mapping,
/// mounting, cd). Like `env`'s and Docker's 125.
pub const SETUP_FAILED_EXIT: i32 = 125;

/// One SMB share, mapped to a drive letter and mounted in Cygwin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    /// Drive letter, D to Z.
    pub drive: char,
    /// Share name on the controller, e.g. "xchg".
    pub share: String,
    /// Absolute Cygwin path to bind it at, e.g. "/nix/store".
    pub mount_point: String,
}

/// What one run does in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The SMB server: the controller.
    pub server: Ipv4Addr,
    pub smb_user: String,
    pub smb_password: Secret,
    pub shares: Vec<ShareMount>,
    /// Absolute Cygwin path to run in.
    pub workdir: String,
    /// Exported in this order.
    pub env: Vec<(String, String)>,
    /// The command and its arguments, run without a shell in between.
    pub argv: Vec<String>,
    /// If set, the exit status is also written here (a Cygwin path, e.g.
    /// in the exchange share), as the 2014 original's `in-vm-exit`.
    pub exit_code_file: Option<String>,
}

impl RunSpec {
    /// The controller as server, no shares, workdir `/`, no environment.
    pub fn new(argv: Vec<String>) -> Self {
        RunSpec {
            server: link::net::CONTROLLER_ADDRESS,
            smb_user: link::shares::SMB_USER.to_owned(),
            smb_password: Secret::default(),
            shares: Vec::new(),
            workdir: "/".to_owned(),
            env: Vec::new(),
            argv,
            exit_code_file: None,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.argv.is_empty() {
            return Err(setting("argv", "there is no command"));
        }
        let absolute = |p: &str| p.starts_with('/') && !p.contains('\0');
        if !absolute(&self.workdir) {
            return Err(setting("workdir", "must be an absolute Cygwin path"));
        }
        if let Some(p) = &self.exit_code_file {
            if !absolute(p) {
                return Err(setting("exit_code_file", "must be an absolute Cygwin path"));
            }
        }
        if !self.shares.is_empty() {
            // net.exe parses its own command line; a quote inside a
            // credential has no reliable spelling there.
            for (field, v) in [
                ("smb_user", self.smb_user.as_str()),
                ("smb_password", self.smb_password.expose()),
            ] {
                if v.contains('"') || v.chars().any(char::is_control) {
                    return Err(setting(
                        field,
                        "must not contain '\"' or control characters",
                    ));
                }
            }
            if self.smb_password.expose().starts_with('/') {
                return Err(setting(
                    "smb_password",
                    "must not start with '/': net.exe would take it for an option",
                ));
            }
            if self.smb_user.is_empty() {
                return Err(setting("smb_user", "is empty"));
            }
        }
        let mut drives = Vec::new();
        for s in &self.shares {
            let d = s.drive.to_ascii_uppercase();
            if !('D'..='Z').contains(&d) {
                return Err(setting(
                    "shares",
                    format!("drive {:?} is not a letter from D to Z", s.drive),
                ));
            }
            if drives.contains(&d) {
                return Err(setting("shares", format!("drive {d}: is used twice")));
            }
            drives.push(d);
            if s.share.is_empty()
                || s.share.len() > 80
                || !s
                    .share
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
            {
                return Err(setting(
                    "shares",
                    format!("share name {:?} is not usable", s.share),
                ));
            }
            if !absolute(&s.mount_point) || s.mount_point == "/" {
                return Err(setting(
                    "shares",
                    format!(
                        "mount point {:?} must be an absolute path other than /",
                        s.mount_point
                    ),
                ));
            }
        }
        for (k, _) in &self.env {
            let mut chars = k.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(setting("env", format!("{k:?} is not a variable name")));
            }
        }
        Ok(())
    }
}

/// The batch lines that map the shares.
fn map_batch(spec: &RunSpec) -> Result<Vec<String>, Error> {
    let mut lines = vec![
        "@echo off".to_owned(),
        "setlocal DisableDelayedExpansion".to_owned(),
    ];
    let user = quoted("smb_user", quote::cmd(&format!("/user:{}", spec.smb_user)))?;
    let password = quoted("smb_password", quote::cmd(spec.smb_password.expose()))?;
    for s in &spec.shares {
        let d = s.drive.to_ascii_uppercase();
        let unc = quoted(
            "shares",
            quote::cmd(&format!("\\\\{}\\{}", spec.server, s.share)),
        )?;
        // A revived snapshot may still hold the letter; drop it first.
        lines.push(format!("net use {d}: /delete /y >nul 2>&1"));
        lines.push(format!(
            "net use {d}: {unc} {password} {user} /persistent:yes || exit /b 1"
        ));
    }
    lines.push("exit /b 0".to_owned());
    Ok(lines)
}

/// The bash script for one run.
pub fn run_script(spec: &RunSpec) -> Result<String, Error> {
    spec.validate()?;
    let b = |field: &'static str, v: &str| quoted(field, quote::bash(v));
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str("# guestbox: one run in the guest (generated).\n");
    s.push_str("{\n");
    s.push_str("export PATH=\"/usr/local/bin:/usr/bin:/bin:$PATH\"\n");
    s.push_str(&format!(
        "guestbox_fail() {{ printf 'guestbox: %s\\n' \"$1\" >&2; exit {SETUP_FAILED_EXIT}; }}\n"
    ));
    if !spec.shares.is_empty() {
        s.push_str("guestbox_map=$(mktemp --suffix=.cmd /tmp/guestbox-map.XXXXXX) || guestbox_fail 'cannot create a temporary file'\n");
        s.push_str("trap 'rm -f -- \"$guestbox_map\"' EXIT\n");
        s.push_str("printf '%s\\r\\n' \\\n");
        for line in map_batch(spec)? {
            s.push_str(&format!("  {} \\\n", b("shares", &line)?));
        }
        s.push_str(
            "  >\"$guestbox_map\" || guestbox_fail 'cannot write the share mapping script'\n",
        );
        s.push_str("cmd /c \"$(cygpath -w \"$guestbox_map\")\" || guestbox_fail 'mapping the SMB shares failed'\n");
        s.push_str("rm -f -- \"$guestbox_map\"\n");
        for m in &spec.shares {
            let d = m.drive.to_ascii_uppercase();
            let mp = b("shares", &m.mount_point)?;
            s.push_str(&format!("umount {mp} 2>/dev/null\n"));
            s.push_str(&format!(
                "mount -f -o binary,noacl {d}:/ {mp} || guestbox_fail {}\n",
                b("shares", &format!("cannot mount {d}: at {}", m.mount_point))?
            ));
        }
    }
    s.push_str(&format!(
        "cd -- {} || guestbox_fail {}\n",
        b("workdir", &spec.workdir)?,
        b("workdir", &format!("cannot enter {}", spec.workdir))?
    ));
    for (k, v) in &spec.env {
        s.push_str(&format!("export {k}={}\n", b("env", v)?));
    }
    let argv = spec
        .argv
        .iter()
        .map(|a| b("argv", a))
        .collect::<Result<Vec<_>, _>>()?;
    s.push_str(&argv.join(" "));
    s.push('\n');
    s.push_str("guestbox_status=$?\n");
    if let Some(p) = &spec.exit_code_file {
        s.push_str(&format!(
            "printf '%d\\n' \"$guestbox_status\" >{}\n",
            b("exit_code_file", p)?
        ));
    }
    s.push_str("exit \"$guestbox_status\"\n");
    s.push_str("}\n");
    Ok(s)
}
