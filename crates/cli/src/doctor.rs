//! `guestbox doctor`: can I trust this host, and this base? A table of checks, each with
//! what it found; the exit status is 1 when one failed, naming it.
//!
//! The host: the programs guestbox drives and their versions (qemu-img and
//! qemu-system-x86_64 of one release), the KVM verdict, free space under GUESTBOX_HOME.
//! A base (the default one unless `--base`): revives give distinct randomness, the guest
//! clock is the host's, a share behaves like a POSIX filesystem, the guest has no route out.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use guestbox::host::{programs, Dirs};
use guestbox::machine::accel;
use guestbox::progress::Progress;
use guestbox::run::{Command, Session, SessionOptions, Streams, Volume};
use guestbox::store::{Base, Store};
use guestbox::{IoContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// Worth knowing, not wrong.
    Note,
    Fail,
}

struct Check {
    name: &'static str,
    verdict: Verdict,
    found: String,
}

fn check(name: &'static str, verdict: Verdict, found: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        found: found.into(),
    }
}

/// `7.2` from `qemu-img version 7.2.22 (…)`.
fn release(version_line: &str) -> Option<String> {
    let v = version_line.split("version ").nth(1)?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some(format!("{}.{}", parts.next()?, parts.next()?))
}

/// The first line a program prints of its version (`-V` for e2fsprogs, on stderr).
fn version_of(program: &Path, flag: &str) -> Option<String> {
    let out = std::process::Command::new(program)
        .arg(flag)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    [&out.stdout, &out.stderr]
        .iter()
        .filter_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .next()
                .map(str::to_string)
        })
        .find(|l| !l.trim().is_empty())
}

fn host_checks(dirs: &Dirs) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut releases = Vec::new();
    for (p, flag) in [
        (programs::QEMU, Some("--version")),
        (programs::QEMU_IMG, Some("--version")),
        (programs::MMDEBSTRAP, Some("--version")),
        (programs::MKFS_EXT4, Some("-V")),
        // ssh-keygen has no version option; ssh has, but the key tool is what is used.
        (programs::SSH_KEYGEN, None),
    ] {
        match programs::find(p.name) {
            Some(path) => {
                let version = flag.and_then(|f| version_of(&path, f)).unwrap_or_default();
                if p.name.starts_with("qemu") {
                    releases.push((p.name, release(&version)));
                }
                checks.push(check(
                    p.name,
                    Verdict::Ok,
                    format!("{} {}", path.display(), version.trim()),
                ));
            }
            None => checks.push(check(
                p.name,
                Verdict::Fail,
                format!(
                    "not installed: apt-get install {} (or scripts/setup)",
                    p.package
                ),
            )),
        }
    }
    if let [(_, Some(a)), (_, Some(b))] = releases.as_slice() {
        checks.push(if a == b {
            check("QEMU release", Verdict::Ok, format!("qemu-system-x86_64 and qemu-img are both {a}"))
        } else {
            check(
                "QEMU release",
                Verdict::Fail,
                format!("qemu-system-x86_64 is {a} but qemu-img is {b}: install both from one suite (scripts/setup does)"),
            )
        });
    }
    let free = free_bytes(&dirs.data);
    checks.push(match free {
        Some(b) if b >= 10 << 30 => check(
            "free space",
            Verdict::Ok,
            format!("{} GiB under {}", b >> 30, dirs.data.display()),
        ),
        Some(b) => check(
            "free space",
            Verdict::Fail,
            format!(
                "{} MiB under {}: a base takes about 1 GiB and every run its overlays; free some or set GUESTBOX_HOME",
                b >> 20,
                dirs.data.display()
            ),
        ),
        None => check("free space", Verdict::Note, format!("cannot read {}", dirs.data.display())),
    });
    checks
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        probe = probe.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct it is given, for a valid C path.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut s) == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
    }
}

/// The KVM verdict guestbox works by: `/dev/kvm`, then the probe's cached answer (the
/// probe boots guestbox's own kernel once per host boot; doctor starts no VM for it).
fn kvm_check(dirs: &Dirs) -> Check {
    match accel::known_verdict(dirs) {
        accel::Known::NoDevice(why) => check(
            "KVM",
            Verdict::Note,
            format!("not usable ({why}): guests run under TCG (software emulation)"),
        ),
        accel::Known::Works => check("KVM", Verdict::Ok, "usable: guests run under KVM"),
        accel::Known::Hangs(why) => check(
            "KVM",
            Verdict::Note,
            format!(
                "present but did not run a test guest ({}): guests run under TCG",
                why.lines().next().unwrap_or_default().trim_end_matches('.')
            ),
        ),
        accel::Known::NotProbed => check(
            "KVM",
            Verdict::Note,
            "/dev/kvm opens; not probed yet (the first bootstrap with --accel auto probes it)",
        ),
    }
}

async fn exec(session: &mut Session, script: &str) -> Result<(i32, String, String)> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut streams = Streams {
        stdin: None,
        stdout: &mut out,
        stderr: &mut err,
        window: None,
    };
    let cmd = Command {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Command::default()
    };
    let o = session.exec(&cmd, &mut streams).await?;
    Ok((
        o.exit_code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    ))
}

/// One revive: (urandom bytes as hex, guest clock minus host clock in seconds).
async fn one_revive(store: &Store, base: &Base) -> Result<(String, f64)> {
    let mut s = Session::revive(store, base, &SessionOptions::default()).await?;
    let before = now();
    let (_, out, _) = exec(
        &mut s,
        "dd if=/dev/urandom bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n'; echo; date +%s.%N",
    )
    .await?;
    let after = now();
    s.discard().await;
    let mut lines = out.lines();
    let random = lines.next().unwrap_or_default().to_string();
    let guest: f64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(f64::NAN);
    // Within the exec's window, the guest's clock reading is the host's at some moment.
    let skew = if guest < before {
        guest - before
    } else if guest > after {
        guest - after
    } else {
        0.0
    };
    Ok((random, skew))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What the share probe checks in a writable share, each a line `NAME ok|FAIL`; the host
/// then checks what landed on its side ([`host_side`]).
const SHARE_PROBE: &str = r#"cd /probe
r() { if eval "$2"; then echo "$1 ok"; else echo "$1 FAIL"; fi; }
r "mode-bits" '[ "$(stat -c %a mode640)" = 640 ] && [ "$(stat -c %a mode4755)" = 4755 ]'
r "symlink-from-host" '[ -L link ] && [ "$(readlink link)" = mode640 ]'
r "symlink-in-guest" 'ln -s mode640 made-link 2>/dev/null && [ -L made-link ]'
r "case-sensitive-names" 'echo X > Upper && echo y > upper && [ "$(cat Upper)" = X ] && [ "$(cat upper)" = y ]'
r "utf8-names" '[ -e "ünï cödé" ]'
r "non-utf8-names" 'echo z > "$(printf "a\377b")" && [ -e "$(printf "a\376b")" ] && [ "$(cat "$(printf "a\377b")")" = z ]'
r "chmod" 'chmod 600 mode640 2>/dev/null && [ "$(stat -c %a mode640)" = 600 ]'
r "owner-from-host" '[ "$(stat -c %u:%g mode640)" = "$(cat owner)" ]'
r "mtime-100ns" '[ "$(find mode4755 -printf %T@)" = 1000000000.1234567000 ]'
r "hard-links" 'ln mode4755 hard 2>/dev/null && [ "$(stat -c %h mode4755)" = 2 ]'
"#;

/// What the probe's changes must have made on the host: `(name, holds)`.
fn host_side(p: &Path) -> Vec<(&'static str, bool)> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(p.join("mode640")).map(|m| m.mode() & 0o7777);
    let link = std::fs::read_link(p.join("made-link"));
    let upper = std::fs::read(p.join("upper"));
    let odd = std::fs::read(p.join(std::ffi::OsStr::from_bytes(b"a\xffb")));
    vec![
        ("chmod-on-host", matches!(mode, Ok(0o600))),
        (
            "symlink-on-host",
            link.is_ok_and(|l| l == Path::new("mode640")),
        ),
        ("case-on-host", upper.is_ok_and(|u| u == b"y\n")),
        ("non-utf8-on-host", odd.is_ok_and(|u| u == b"z\n")),
    ]
}

/// The probe's tree: a 0640 file, a setuid file with a time to 100 ns, a symlink, a UTF-8
/// name, a name that is not UTF-8, and the owner the guest must see.
fn probe_tree(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::write(p.join("mode640"), b"x")?;
    std::fs::set_permissions(p.join("mode640"), std::fs::Permissions::from_mode(0o640))?;
    let f = std::fs::File::create(p.join("mode4755"))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o4755))?;
    // 1 000 000 000.1234567 s: the 100 ns SMB carries.
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 123_456_700);
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))?;
    std::os::unix::fs::symlink("mode640", p.join("link"))?;
    std::fs::write(p.join("ünï cödé"), b"")?;
    std::fs::write(p.join(std::ffi::OsStr::from_bytes(b"a\xfeb")), b"")?;
    let md = std::fs::metadata(p.join("mode640"))?;
    std::fs::write(p.join("owner"), format!("{}:{}", md.uid(), md.gid()))
}

async fn share_check(store: &Store, base: &Base) -> Result<Check> {
    let dir = tempfile::tempdir().ctx(|| "making a probe directory")?;
    let p = dir.path();
    probe_tree(p).ctx(|| "writing the share probe")?;
    let opts = SessionOptions {
        volumes: vec![Volume {
            host: p.to_path_buf(),
            guest: "/probe".into(),
            readonly: false,
        }],
        ..SessionOptions::default()
    };
    let mut s = Session::revive(store, base, &opts).await?;
    let (_, out, _) = exec(&mut s, SHARE_PROBE).await?;
    s.discard().await;
    let mut results: Vec<(String, bool)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, v)| (name.to_string(), v == "ok"))
        .collect();
    let in_guest = results.len();
    results.extend(
        host_side(p)
            .into_iter()
            .map(|(name, ok)| (name.to_string(), ok)),
    );
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name.as_str())
        .collect();
    let total = results.len();
    Ok(if failed.is_empty() && in_guest > 0 {
        check(
            "share fidelity",
            Verdict::Ok,
            format!("{total} of {total} POSIX properties hold"),
        )
    } else {
        check(
            "share fidelity",
            Verdict::Fail,
            format!("not like a local POSIX filesystem: {}", failed.join(", ")),
        )
    })
}

async fn route_check(store: &Store, base: &Base) -> Result<Check> {
    let mut s = Session::revive(store, base, &SessionOptions::default()).await?;
    let (_, out, _) = exec(
        &mut s,
        "ip -4 route show; ip -6 route show 2>/dev/null; ls /sys/class/net",
    )
    .await?;
    s.discard().await;
    let default = out.lines().any(|l| l.starts_with("default"));
    let nics: Vec<&str> = out
        .lines()
        .filter(|l| !l.contains(' ') && !l.is_empty() && *l != "lo")
        .collect();
    Ok(if !default && nics.len() == 1 {
        check(
            "no route out",
            Verdict::Ok,
            format!(
                "one NIC ({}), no default route: only the controller is reachable",
                nics[0]
            ),
        )
    } else {
        check(
            "no route out",
            Verdict::Fail,
            format!("the guest has a default route or other NICs:\n{out}"),
        )
    })
}

async fn base_checks(store: &Store, base: &Base, revives: u32) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut values = Vec::new();
    let mut worst_skew: f64 = 0.0;
    for _ in 0..revives {
        match one_revive(store, base).await {
            Ok((random, skew)) => {
                values.push(random);
                if skew.abs() > worst_skew.abs() {
                    worst_skew = skew;
                }
            }
            Err(e) => {
                checks.push(check("revive", Verdict::Fail, e.to_string()));
                return checks;
            }
        }
    }
    let distinct: std::collections::BTreeSet<&String> = values.iter().collect();
    checks.push(if distinct.len() == values.len() {
        check(
            "unique randomness",
            Verdict::Ok,
            format!("{revives} revives, {revives} different /dev/urandom values"),
        )
    } else {
        check(
            "unique randomness",
            Verdict::Fail,
            format!(
                "{revives} revives gave only {} different values",
                distinct.len()
            ),
        )
    });
    checks.push(if worst_skew.abs() <= 1.0 {
        check(
            "guest clock",
            Verdict::Ok,
            format!("within {:.2} s of the host's", worst_skew.abs()),
        )
    } else {
        check(
            "guest clock",
            Verdict::Fail,
            format!("{worst_skew:+.2} s from the host's"),
        )
    });
    for c in [
        share_check(store, base).await,
        route_check(store, base).await,
    ] {
        checks.push(c.unwrap_or_else(|e| check("probe", Verdict::Fail, e.to_string())));
    }
    checks
}

/// Runs every check, prints the table; returns the exit status (1: a check failed).
pub async fn doctor(base: Option<&str>, revives: u32, progress: &Progress) -> Result<i32> {
    let dirs = Dirs::from_env()?;
    let step = progress.step("checking the host");
    let mut checks = host_checks(&dirs);
    checks.push(kvm_check(&dirs));
    step.done();
    let store = Store::new(&dirs);
    let found = match base {
        Some(b) => Some(store.resolve(b)?),
        None => store.resolve(crate::commands::DEFAULT_BASE).ok(),
    };
    match &found {
        Some(b) => {
            let step = progress.step(format!(
                "checking base {} ({revives} revives, a share, the routes)",
                &b.manifest.id[..12]
            ));
            checks.extend(base_checks(&store, b, revives).await);
            step.done();
        }
        None => checks.push(check(
            "base",
            Verdict::Note,
            "no default base yet (`guestbox run` or `guestbox bootstrap` makes one); give --base",
        )),
    }
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(8);
    println!(
        "guestbox doctor{}",
        found
            .as_ref()
            .map(|b| format!(": host and base {}", &b.manifest.id[..12]))
            .unwrap_or_else(|| ": host".into())
    );
    for c in &checks {
        let v = match c.verdict {
            Verdict::Ok => "ok",
            Verdict::Note => "note",
            Verdict::Fail => "FAIL",
        };
        let mut lines = c.found.lines();
        println!(
            "{:<w$}  {v:<4}  {}",
            c.name,
            lines.next().unwrap_or_default()
        );
        for l in lines {
            println!("{:<w$}        {l}", "");
        }
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        return Ok(0);
    }
    eprintln!("guestbox: doctor: failed: {}", failed.join(", "));
    Ok(1)
}
