//! The guest's scripts over SSH, in Cygwin's bash: the bootstrap's mapping of the
//! controller's share ([`setup_script`]) and one run ([`run_script`]).
//!
//! `net use` is a Windows command and drive mappings belong to a logon session, so the
//! scripts write the mappings as a small batch file (cmd-quoted) and run it with `cmd /c`
//! in their own session; an SSH connection's sessions share one logon, so a mapping made at
//! bootstrap over the controller's lasting connection is there for every later run. Each
//! script is one `{ ...; }` group so that bash has read all of it before anything runs,
//! even when it arrives on stdin (`ssh guest bash -s < script`).
//!
//! A run runs the command as a child of the script, not with `exec`: a command killed by a
//! signal then ends the script with 128 + N, and the script names the signal on stderr, as
//! guestbox's Linux guests do. (bash's own report of the death, which would name the PID
//! and the command line, goes to a file instead; that it wrote one tells a signal from a
//! command that chose such a status itself.)

use std::net::Ipv4Addr;

use super::{quoted, setting, Error, Secret};
use crate::quote;

/// Exit status when the script fails before the command runs (mapping,
/// mounting, cd). Like `env`'s and Docker's 125.
pub const SETUP_FAILED_EXIT: i32 = 125;

/// One SMB share, mapped (persistently) to a drive letter and mounted in Cygwin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    /// Drive letter, D to Z.
    pub drive: char,
    /// Share name on the controller, e.g. "xchg".
    pub share: String,
    /// Absolute Cygwin path to bind it at, e.g. "/nix/store".
    pub mount_point: String,
}

/// A directory of a share mapped to a drive letter for one run (`net use S:
/// \\server\share\dir`), not persistently and without a word on the command's stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveMap {
    /// Drive letter, D to Z.
    pub drive: char,
    pub share: String,
    /// The directory in the share (one name, e.g. "vol0").
    pub dir: String,
}

/// A Cygwin bind mount for one run: `source` (a POSIX path, e.g. inside a share mounted
/// at bootstrap) at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: String,
    pub target: String,
}

/// What one run does in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The SMB server: the controller.
    pub server: Ipv4Addr,
    pub smb_user: String,
    pub smb_password: Secret,
    /// Mapped and mounted first, as [`setup_script`] does.
    pub shares: Vec<ShareMount>,
    /// Drive letters for this run.
    pub drives: Vec<DriveMap>,
    /// Cygwin bind mounts for this run, in order.
    pub binds: Vec<Bind>,
    /// Host time to set first (seconds since the epoch): the clock of a revived
    /// snapshot stood still while it was frozen.
    pub time: Option<i64>,
    /// Absolute Cygwin path to run in, made if missing (as Docker does); None: where the
    /// session starts (the user's home).
    pub workdir: Option<String>,
    /// Exported in this order.
    pub env: Vec<(String, String)>,
    /// The command and its arguments, run without a shell in between.
    pub argv: Vec<String>,
    /// If set, the exit status is also written here (a Cygwin path, e.g.
    /// in the exchange share), as the 2014 original's `in-vm-exit`.
    pub exit_code_file: Option<String>,
}

impl RunSpec {
    /// The controller as server, no shares, no working directory, no environment.
    pub fn new(argv: Vec<String>) -> Self {
        RunSpec {
            server: link::net::CONTROLLER_ADDRESS,
            smb_user: link::shares::SMB_USER.to_owned(),
            smb_password: Secret::default(),
            shares: Vec::new(),
            drives: Vec::new(),
            binds: Vec::new(),
            time: None,
            workdir: None,
            env: Vec::new(),
            argv,
            exit_code_file: None,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.argv.is_empty() {
            return Err(setting("argv", "there is no command"));
        }
        if let Some(w) = &self.workdir {
            if !absolute(w) {
                return Err(setting("workdir", "must be an absolute Cygwin path"));
            }
        }
        if let Some(p) = &self.exit_code_file {
            if !absolute(p) {
                return Err(setting("exit_code_file", "must be an absolute Cygwin path"));
            }
        }
        let mut letters = Vec::new();
        check_shares(self, &self.shares, &mut letters)?;
        for d in &self.drives {
            check_letter(d.drive, &mut letters)?;
            check_share_name(&d.share)?;
            check_share_name(&d.dir)?;
        }
        for b in &self.binds {
            for p in [&b.source, &b.target] {
                if !absolute(p) || p.trim_end_matches('/').is_empty() {
                    return Err(setting(
                        "binds",
                        format!("{p:?} must be an absolute path other than /"),
                    ));
                }
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

/// The bootstrap's side of the share: map each share to its drive letter (persistently)
/// and mount it at its Cygwin path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupSpec {
    pub server: Ipv4Addr,
    pub smb_user: String,
    pub smb_password: Secret,
    pub shares: Vec<ShareMount>,
}

fn absolute(p: &str) -> bool {
    p.starts_with('/') && !p.contains('\0')
}

fn check_letter(drive: char, seen: &mut Vec<char>) -> Result<(), Error> {
    let d = drive.to_ascii_uppercase();
    if !('D'..='Z').contains(&d) {
        return Err(setting(
            "shares",
            format!("drive {drive:?} is not a letter from D to Z"),
        ));
    }
    if seen.contains(&d) {
        return Err(setting("shares", format!("drive {d}: is used twice")));
    }
    seen.push(d);
    Ok(())
}

fn check_share_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 80
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
    {
        return Err(setting(
            "shares",
            format!("share name {name:?} is not usable"),
        ));
    }
    Ok(())
}

/// Credentials travel on net.exe's command line, which it parses itself.
fn check_credentials(user: &str, password: &Secret) -> Result<(), Error> {
    // net.exe parses its own command line; a quote inside a
    // credential has no reliable spelling there.
    for (field, v) in [("smb_user", user), ("smb_password", password.expose())] {
        if v.contains('"') || v.chars().any(char::is_control) {
            return Err(setting(
                field,
                "must not contain '\"' or control characters",
            ));
        }
    }
    if password.expose().starts_with('/') {
        return Err(setting(
            "smb_password",
            "must not start with '/': net.exe would take it for an option",
        ));
    }
    if user.is_empty() {
        return Err(setting("smb_user", "is empty"));
    }
    Ok(())
}

fn check_shares(
    creds: &RunSpec,
    shares: &[ShareMount],
    letters: &mut Vec<char>,
) -> Result<(), Error> {
    if !shares.is_empty() || !creds.drives.is_empty() {
        check_credentials(&creds.smb_user, &creds.smb_password)?;
    }
    for s in shares {
        check_letter(s.drive, letters)?;
        check_share_name(&s.share)?;
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
    Ok(())
}

/// The batch lines that map `(drive, UNC path, persistent)`.
fn map_batch(
    server: Ipv4Addr,
    user: &str,
    password: &Secret,
    maps: &[(char, String, bool)],
) -> Result<Vec<String>, Error> {
    let mut lines = vec![
        "@echo off".to_owned(),
        "setlocal DisableDelayedExpansion".to_owned(),
    ];
    let user = quoted("smb_user", quote::cmd(&format!("/user:{user}")))?;
    let password = quoted("smb_password", quote::cmd(password.expose()))?;
    for (drive, path, persistent) in maps {
        let d = drive.to_ascii_uppercase();
        let unc = quoted("shares", quote::cmd(&format!("\\\\{server}\\{path}")))?;
        // A revived snapshot may still hold the letter; drop it first.
        lines.push(format!("net use {d}: /delete /y >nul 2>&1"));
        let persistent = if *persistent { "yes" } else { "no" };
        lines.push(format!(
            "net use {d}: {unc} {password} {user} /persistent:{persistent} || exit /b 1"
        ));
    }
    lines.push("exit /b 0".to_owned());
    Ok(lines)
}

/// bash lines that write `batch` to a temporary .cmd file and run it with `cmd /c`;
/// `quiet`: net's words go to stderr only if it fails (not onto the command's stdout).
fn run_batch(s: &mut String, batch: &[String], what: &str, quiet: bool) -> Result<(), Error> {
    let b = |v: &str| quoted("shares", quote::bash(v));
    s.push_str("guestbox_map=$(mktemp --suffix=.cmd /tmp/guestbox-map.XXXXXX) || guestbox_fail 'cannot create a temporary file'\n");
    s.push_str("printf '%s\\r\\n' \\\n");
    for line in batch {
        s.push_str(&format!("  {} \\\n", b(line)?));
    }
    s.push_str("  >\"$guestbox_map\" || guestbox_fail 'cannot write the share mapping script'\n");
    let fail = b(&format!("{what} failed"))?;
    if quiet {
        s.push_str(&format!(
            "if ! guestbox_said=$(cmd /c \"$(cygpath -w \"$guestbox_map\")\" </dev/null 2>&1); then rm -f -- \"$guestbox_map\"; printf '%s\\n' \"$guestbox_said\" >&2; guestbox_fail {fail}; fi\n"
        ));
    } else {
        s.push_str(&format!(
            "cmd /c \"$(cygpath -w \"$guestbox_map\")\" </dev/null || {{ rm -f -- \"$guestbox_map\"; guestbox_fail {fail}; }}\n"
        ));
    }
    s.push_str("rm -f -- \"$guestbox_map\"\n");
    Ok(())
}

fn prelude(s: &mut String) {
    s.push_str("{\n");
    s.push_str("export PATH=\"/usr/local/bin:/usr/bin:/bin:$PATH\"\n");
    s.push_str(&format!(
        "guestbox_fail() {{ printf 'guestbox: %s\\n' \"$1\" >&2; exit {SETUP_FAILED_EXIT}; }}\n"
    ));
}

/// Maps and mounts `shares` (persistently): the lines of [`setup_script`] and of a run
/// with shares of its own.
fn map_and_mount(
    s: &mut String,
    server: Ipv4Addr,
    user: &str,
    password: &Secret,
    shares: &[ShareMount],
) -> Result<(), Error> {
    if shares.is_empty() {
        return Ok(());
    }
    let b = |v: &str| quoted("shares", quote::bash(v));
    let maps: Vec<(char, String, bool)> = shares
        .iter()
        .map(|m| (m.drive, m.share.clone(), true))
        .collect();
    run_batch(
        s,
        &map_batch(server, user, password, &maps)?,
        "mapping the SMB shares",
        false,
    )?;
    for m in shares {
        let d = m.drive.to_ascii_uppercase();
        let mp = b(&m.mount_point)?;
        s.push_str(&format!("umount {mp} 2>/dev/null\n"));
        s.push_str(&format!(
            "mount -f -o binary,noacl {d}:/ {mp} || guestbox_fail {}\n",
            b(&format!("cannot mount {d}: at {}", m.mount_point))?
        ));
    }
    Ok(())
}

/// The bootstrap's script: map the shares to their drive letters (persistently) and mount
/// them in Cygwin. Exits 0, or [`SETUP_FAILED_EXIT`] naming what failed.
pub fn setup_script(spec: &SetupSpec) -> Result<String, Error> {
    if spec.shares.is_empty() {
        return Err(setting("shares", "there is nothing to map"));
    }
    let mut r = RunSpec::new(vec!["true".into()]);
    r.server = spec.server;
    r.smb_user = spec.smb_user.clone();
    r.smb_password = spec.smb_password.clone();
    r.shares = spec.shares.clone();
    r.validate()?;
    let mut s = String::from(
        "#!/bin/bash\n# guestbox: the share's mapping, once at bootstrap (generated).\n",
    );
    prelude(&mut s);
    map_and_mount(
        &mut s,
        spec.server,
        &spec.smb_user,
        &spec.smb_password,
        &spec.shares,
    )?;
    s.push_str("exit 0\n}\n");
    Ok(s)
}

/// The bash script for one run.
pub fn run_script(spec: &RunSpec) -> Result<String, Error> {
    spec.validate()?;
    let b = |field: &'static str, v: &str| quoted(field, quote::bash(v));
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str("# guestbox: one run in the guest (generated).\n");
    prelude(&mut s);
    if let Some(t) = spec.time {
        // Setting the clock needs the right to; say so rather than run at a wrong time
        // silently.
        s.push_str(&format!(
            "date -s @{t} >/dev/null || printf 'guestbox: could not set the clock\\n' >&2\n"
        ));
    }
    map_and_mount(
        &mut s,
        spec.server,
        &spec.smb_user,
        &spec.smb_password,
        &spec.shares,
    )?;
    if !spec.drives.is_empty() {
        let maps: Vec<(char, String, bool)> = spec
            .drives
            .iter()
            .map(|d| (d.drive, format!("{}\\{}", d.share, d.dir), false))
            .collect();
        let letters: Vec<String> = spec
            .drives
            .iter()
            .map(|d| format!("{}:", d.drive.to_ascii_uppercase()))
            .collect();
        run_batch(
            &mut s,
            &map_batch(spec.server, &spec.smb_user, &spec.smb_password, &maps)?,
            &format!("mapping {}", letters.join(" ")),
            true,
        )?;
    }
    for m in &spec.binds {
        let target = b("binds", &m.target)?;
        s.push_str(&format!("umount {target} 2>/dev/null\n"));
        s.push_str(&format!(
            "mount -f -o bind {} {target} || guestbox_fail {}\n",
            b("binds", &m.source)?,
            b(
                "binds",
                &format!("cannot mount {} at {}", m.source, m.target)
            )?
        ));
    }
    if let Some(dir) = &spec.workdir {
        let workdir = b("workdir", dir)?;
        s.push_str(&format!(
            "{{ mkdir -p -- {workdir} && cd -- {workdir}; }} || guestbox_fail {}\n",
            b("workdir", &format!("cannot enter {dir}"))?
        ));
    }
    for (k, v) in &spec.env {
        s.push_str(&format!("export {k}={}\n", b("env", v)?));
    }
    let argv = spec
        .argv
        .iter()
        .map(|a| b("argv", a))
        .collect::<Result<Vec<_>, _>>()?;
    // The shell's own words on a death by signal go to a file (left in the guest's /tmp,
    // which the run discards): the command's stderr stays the command's.
    s.push_str("guestbox_report=/tmp/guestbox-status.$$\n");
    s.push_str("exec 3>&2 2>\"$guestbox_report\"\n");
    s.push_str(&argv.join(" "));
    s.push_str(" 2>&3 3>&-\n");
    s.push_str("guestbox_status=$?\n");
    s.push_str("exec 2>&3 3>&-\n");
    s.push_str(concat!(
        "if [ \"$guestbox_status\" -gt 128 ] && guestbox_signal=$(kill -l \"$((guestbox_status - 128))\" 2>/dev/null); then\n",
        "  guestbox_signal=${guestbox_signal#SIG}\n",
        "  # bash reports every death by a signal but SIGINT's and SIGPIPE's.\n",
        "  if [ -s \"$guestbox_report\" ] || [ \"$guestbox_signal\" = INT ] || [ \"$guestbox_signal\" = PIPE ]; then\n",
        "    printf 'guestbox: the command was killed by SIG%s\\n' \"$guestbox_signal\" >&2\n",
        "  fi\n",
        "fi\n",
    ));
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
