//! nix/guestbox.nix with Debian's Nix 2.8 (nix-bin): raw `builtins.derivation`s built in a
//! private store (`nix-build --store DIR`), sandbox on, as root without a daemon or build
//! users, their builder (guestbox) reviving the shared test base under TCG.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{base_id, guestbox, test_home, text};

const GUESTBOX: &str = env!("CARGO_BIN_EXE_guestbox");

/// A private Nix store and configuration, removed afterwards (store files are read-only).
struct PrivateNix {
    dir: tempfile::TempDir,
}

impl PrivateNix {
    fn new() -> PrivateNix {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        // What the README's set-up says, for a private store: no daemon and no nixbld
        // group (Debian's nix-bin makes none), no binary cache, the kvm feature, and the
        // host programs and guestbox home the builder needs inside the sandbox.
        std::fs::write(
            conf.join("nix.conf"),
            format!(
                "sandbox = true\nbuild-users-group =\nsubstituters =\nsystem-features = kvm\n\
                 extra-sandbox-paths = /usr /lib /lib64 /bin /etc/ld.so.cache {GUESTBOX} {}\n",
                test_home().display()
            ),
        )
        .unwrap();
        PrivateNix { dir }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `nix-build --no-out-link -A attr file`, with guestbox's location in the environment.
    fn build(&self, file: &Path, attr: &str) -> Output {
        Command::new("nix-build")
            .arg("--store")
            .arg(self.store())
            .args(["--no-out-link", "-A", attr])
            .arg(file)
            .env("NIX_CONF_DIR", self.dir.path().join("conf"))
            .env("HOME", self.dir.path().join("home"))
            .env("GUESTBOX_BIN", GUESTBOX)
            .env("GUESTBOX_HOME", test_home())
            .output()
            .expect("run nix-build (install nix-bin: scripts/setup --with-tests)")
    }

    /// Where a store path of the private store is on the host.
    fn host_path(&self, store_path: &str) -> PathBuf {
        self.store().join(store_path.trim().trim_start_matches('/'))
    }
}

impl Drop for PrivateNix {
    fn drop(&mut self) {
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.dir.path())
            .status();
    }
}

fn expressions(dir: &Path, base: &str) -> PathBuf {
    let file = dir.join("test.nix");
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/../../nix/guestbox.nix");
    std::fs::write(
        &file,
        format!(
            r#"let
  guestboxRun = import {lib};
  greeting = builtins.toFile "greeting.txt" "hello from the store\n";
in rec {{
  reads = guestboxRun {{
    name = "guestbox-reads";
    base = "{base}";
    inputs = [ greeting ];
    script = ''
      cat ${{greeting}} > $out/greeting
      uname -n > $out/host
      ls /nix/store > $out/store
      if touch /nix/store/intruder 2>/dev/null; then echo yes > $out/store-writable; fi
    '';
  }};
  # Another guestbox build's output as an input: its closure is in the store too.
  chained = guestboxRun {{
    name = "guestbox-chained";
    base = "{base}";
    inputs = [ reads ];
    script = "tr a-z A-Z < ${{reads}}/greeting > $out/loud";
  }};
  fails = guestboxRun {{
    name = "guestbox-fails";
    base = "{base}";
    script = "echo written > $out/partial; echo failing >&2; exit 3";
  }};
}}
"#
        ),
    )
    .unwrap();
    file
}

fn test_base() -> String {
    let o = guestbox().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    base_id("default")
}

#[test]
fn a_derivation_reads_its_input_in_the_guest_and_writes_out() {
    let base = test_base();
    let nix = PrivateNix::new();
    let file = expressions(nix.dir.path(), &base);
    let o = nix.build(&file, "chained");
    let (out, err) = text(&o);
    assert!(o.status.success(), "nix-build failed:\n{err}");
    let chained = nix.host_path(&out);
    assert_eq!(
        std::fs::read_to_string(chained.join("loud")).unwrap(),
        "HELLO FROM THE STORE\n"
    );
    // The first build (built on the way): in the guest, seeing only its inputs' closure.
    let o = nix.build(&file, "reads");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let reads = nix.host_path(&out);
    assert_eq!(
        std::fs::read_to_string(reads.join("greeting")).unwrap(),
        "hello from the store\n"
    );
    assert_eq!(
        std::fs::read_to_string(reads.join("host")).unwrap().trim(),
        "guestbox-guest"
    );
    assert!(
        !reads.join("store-writable").exists(),
        "the guest could write to the store"
    );
    let store = std::fs::read_to_string(reads.join("store")).unwrap();
    let mut seen: Vec<&str> = store.lines().collect();
    seen.sort();
    assert_eq!(
        seen.len(),
        2,
        "the guest saw more than the closure: {store}"
    );
    assert!(seen.iter().any(|p| p.ends_with("-greeting.txt")), "{store}");
    assert!(
        seen.iter().any(|p| p.ends_with("-guestbox-reads")),
        "{store}"
    );
}

#[test]
fn a_failing_script_fails_the_build_with_its_exit_code() {
    let base = test_base();
    let nix = PrivateNix::new();
    let file = expressions(nix.dir.path(), &base);
    let o = nix.build(&file, "fails");
    let (_, err) = text(&o);
    assert!(!o.status.success(), "the build should fail:\n{err}");
    assert!(
        err.contains("failing"),
        "the script's stderr is in the log:\n{err}"
    );
    assert!(
        err.contains("failed with exit code 3"),
        "Nix should report the script's status:\n{err}"
    );
}

#[test]
fn without_guestbox_the_expression_says_what_to_give() {
    let nix = PrivateNix::new();
    let file = expressions(nix.dir.path(), "any");
    let o = Command::new("nix-instantiate")
        .arg("--store")
        .arg(nix.store())
        .args(["-A", "reads"])
        .arg(&file)
        .env("NIX_CONF_DIR", nix.dir.path().join("conf"))
        .env("HOME", nix.dir.path().join("home"))
        .env_remove("GUESTBOX_BIN")
        .env("GUESTBOX_HOME", test_home())
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("GUESTBOX_BIN"), "{err}");
}

#[test]
fn the_builder_run_by_hand_says_what_it_is() {
    let o = guestbox().arg("nix-builder").output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("nix/guestbox.nix"), "{err}");
}
