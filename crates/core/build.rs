//! Builds the controller's agent as a static binary and hands its path to the crate, which
//! embeds it: guestbox ships as one executable that carries what runs inside the controller.
//!
//! The agent must be static because it runs on the controller's Debian, whatever the host's
//! C library is. `crt-static` cannot be set for one package of a workspace, so a nested cargo
//! builds it with an explicit `--target` (which keeps the flag away from proc-macros) into
//! its own target directory.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    // The agent and the crates it is made of.
    for krate in ["agent", "link", "sys"] {
        let dir = workspace.join("crates").join(krate);
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-env-changed=GUESTBOX_AGENT_BINARY");

    // Packagers can build the agent themselves and point at it.
    if let Some(prebuilt) = env::var_os("GUESTBOX_AGENT_BINARY") {
        println!(
            "cargo:rustc-env=GUESTBOX_AGENT_PATH={}",
            PathBuf::from(prebuilt).display()
        );
        return;
    }

    let target = "x86_64-unknown-linux-gnu";
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out.join("agent-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--package",
        "guestbox-agent",
        "--target",
        target,
    ])
    .arg("--manifest-path")
    .arg(workspace.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
    // Wrappers from an outer `cargo clippy` or sccache must not apply to the agent build.
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTC_WRAPPER")
    .env_remove("CARGO_TARGET_DIR")
    .env_remove("RUSTFLAGS");
    if env::var("CARGO_NET_OFFLINE").is_ok() {
        cmd.arg("--offline");
    }
    let status = cmd.status().expect("running cargo to build guestbox-agent");
    assert!(
        status.success(),
        "building the static guestbox-agent failed"
    );
    let binary = target_dir.join(target).join("release/guestbox-agent");
    println!("cargo:rustc-env=GUESTBOX_AGENT_PATH={}", binary.display());
}
