//! Builds the two programs guestbox puts inside its VMs as static binaries and hands their
//! paths to the crate, which embeds them: guestbox ships as one executable that carries
//! what runs inside the controller (`guestbox-agent`) and the guest (`guestbox-exec`).
//!
//! They must be static because they run on the VMs' Debian, whatever the host's C library
//! is. `crt-static` cannot be set for some packages of a workspace only, so a nested cargo
//! builds them with an explicit `--target` (which keeps the flag away from proc-macros)
//! into its own target directory.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// (package, binary, the env variable naming it for the crate and for packagers).
const PROGRAMS: &[(&str, &str, &str)] = &[
    ("guestbox-agent", "guestbox-agent", "GUESTBOX_AGENT_PATH"),
    ("guestbox-guest", "guestbox-exec", "GUESTBOX_EXEC_PATH"),
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    // The programs and the crates they are made of.
    for krate in ["agent", "guest", "link", "sys"] {
        let dir = workspace.join("crates").join(krate);
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-env-changed=GUESTBOX_AGENT_BINARY");
    println!("cargo:rerun-if-env-changed=GUESTBOX_EXEC_BINARY");

    // Packagers can build them themselves and point at them.
    if let (Some(agent), Some(exec)) = (
        env::var_os("GUESTBOX_AGENT_BINARY"),
        env::var_os("GUESTBOX_EXEC_BINARY"),
    ) {
        println!(
            "cargo:rustc-env=GUESTBOX_AGENT_PATH={}",
            PathBuf::from(agent).display()
        );
        println!(
            "cargo:rustc-env=GUESTBOX_EXEC_PATH={}",
            PathBuf::from(exec).display()
        );
        return;
    }

    let target = "x86_64-unknown-linux-gnu";
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out.join("agent-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", target]);
    for (package, _, _) in PROGRAMS {
        cmd.args(["--package", package]);
    }
    cmd.arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        // Wrappers from an outer `cargo clippy` or sccache must not apply to this build.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS");
    if env::var("CARGO_NET_OFFLINE").is_ok() {
        cmd.arg("--offline");
    }
    let status = cmd
        .status()
        .expect("running cargo to build the VMs' programs");
    assert!(
        status.success(),
        "building the static guestbox-agent and guestbox-exec failed"
    );
    for (_, binary, var) in PROGRAMS {
        let path = target_dir.join(target).join("release").join(binary);
        println!("cargo:rustc-env={var}={}", path.display());
    }
}
