//! `guestbox nix-builder` (hidden): the builder of the derivations `nix/guestbox.nix`
//! makes. Nix runs it in its build sandbox with the derivation's attributes in the
//! environment; it runs `guestboxScript` in a revived guest of `guestboxBase` with the
//! Nix store shared read-only at the same path (the inputs' closure is in it) and `$out`
//! (made here first, a directory) shared writable at its own path, and exits with the
//! script's status.
//!
//! Why guestbox itself is the builder rather than `/bin/sh`: the derivation needs no
//! shell and no nixpkgs, only the guestbox binary (and QEMU) among the sandbox's extra
//! paths; the attributes arrive as plain environment variables, with no quoting of the
//! script into a command line.
//!
//! It writes nothing outside the sandbox: run directories and host facts go under the
//! build's temporary directory; the guestbox home (`GUESTBOX_HOME`) is only read.

use std::path::PathBuf;
use std::time::Duration;

use guestbox::host::Dirs;
use guestbox::run::{Command as JobCommand, RunOptions, SessionOptions, Streams, Volume};
use guestbox::store::Store;
use guestbox::{Error, IoContext, Result};

fn attribute(name: &str) -> Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::Usage(format!(
                "guestbox nix-builder: the derivation has no {name}; it is Nix's builder for \
             derivations made by nix/guestbox.nix, not a command to run by hand"
            ))
        })
}

/// Runs the derivation's script in a revived guest; its exit status is the build's.
pub async fn nix_builder() -> Result<i32> {
    let out = PathBuf::from(attribute("out")?);
    let base = attribute("guestboxBase")?;
    let script = attribute("guestboxScript")?;
    if std::env::var_os("GUESTBOX_HOME").is_none_or(|h| h.is_empty()) {
        return Err(Error::Usage(
            "guestbox nix-builder: GUESTBOX_HOME is not set: give guestbox.nix guestboxHome \
             (the directory with the bases), and add it to extra-sandbox-paths"
                .into(),
        ));
    }
    let store_dir = std::env::var("NIX_STORE").unwrap_or_else(|_| "/nix/store".into());
    let tmp = PathBuf::from(
        std::env::var("NIX_BUILD_TOP")
            .or_else(|_| std::env::var("TMPDIR"))
            .unwrap_or_else(|_| "/tmp".into()),
    );
    let dirs = Dirs::from_env()?;
    let store = Store {
        runs: tmp.join("guestbox-runs"),
        cache: tmp.join("guestbox-cache"),
        ..Store::new(&dirs)
    };
    for d in [&store.runs, &store.cache] {
        std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
    }
    let base = store.resolve(&base)?;
    std::fs::create_dir_all(&out).ctx(|| format!("creating $out ({})", out.display()))?;
    let out_str = out.to_string_lossy().into_owned();
    let opts = RunOptions {
        session: SessionOptions {
            volumes: vec![
                Volume {
                    host: PathBuf::from(&store_dir),
                    guest: store_dir.clone(),
                    readonly: true,
                },
                // Mounted over its place in the read-only store.
                Volume {
                    host: out.clone(),
                    guest: out_str.clone(),
                    readonly: false,
                },
            ],
            xchg: None,
            cold: false,
            boot_timeout: Duration::from_secs(600),
            replay_snapshot_randomness: false,
            unconfined: false,
        },
        command: JobCommand {
            argv: vec!["sh".into(), "-ec".into(), script],
            env: vec![("out".into(), out_str), ("NIX_STORE".into(), store_dir)],
            workdir: None,
            timeout: None,
            keep_snapshot_time: false,
            tty: None,
        },
    };
    eprintln!(
        "guestbox nix-builder: running the script in a revived guest of base {}",
        base.manifest.id
    );
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut streams = Streams {
        stdin: None,
        stdout: &mut stdout,
        stderr: &mut stderr,
        window: None,
    };
    let outcome = guestbox::run::run(&store, &base, &opts, &mut streams).await?;
    if outcome.exit_code != 0 {
        eprintln!(
            "guestbox nix-builder: the script exited with {}",
            outcome.exit_code
        );
    }
    Ok(outcome.exit_code)
}
