# guestbox for Nix, without nixpkgs: a derivation whose build step runs in a revived
# guestbox guest.
#
#   let guestboxRun = import ./nix/guestbox.nix;
#   in guestboxRun {
#     name = "hello";
#     base = "a95c2cc1017eef8fea0a3726";          # a base id (`guestbox ls --json`)
#     inputs = [ ./src ];                          # store paths the script reads
#     script = "cp -r ${./src} $out/src; uname -a > $out/uname";
#   }
#
# The script runs under `sh -e` in the guest, as root, with the Nix store shared
# read-only at its own path (the inputs' closure is in it) and $out — a directory,
# made on the host first — shared writable at its own path. Its exit status is the
# build's. The build needs the `kvm` system feature, and the sandbox must see guestbox,
# QEMU and the guestbox home: see the README ("Beyond one machine", Nix) for nix.conf.
#
# Inside the sandbox guestbox cannot find itself or its home, hence `guestbox` (the
# binary's absolute path) and `guestboxHome` (GUESTBOX_HOME, the directory with the
# bases); both default to the environment of the evaluation (GUESTBOX_BIN,
# GUESTBOX_HOME), which needs impure evaluation (nix-build, not pure flakes).
{ base
, script
, name
, inputs ? [ ]
, guestbox ? builtins.getEnv "GUESTBOX_BIN"
, guestboxHome ? builtins.getEnv "GUESTBOX_HOME"
  # Where guestbox finds QEMU inside the sandbox (host programs, via extra-sandbox-paths).
, hostPath ? "/usr/bin:/bin"
}:

if guestbox == "" then
  throw "guestbox.nix: give `guestbox` (the absolute path of the guestbox binary) or set GUESTBOX_BIN"
else if guestboxHome == "" then
  throw "guestbox.nix: give `guestboxHome` (the guestbox home with the base) or set GUESTBOX_HOME"
else
  builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    # guestbox is the builder: no shell, no nixpkgs (see crates/cli/src/nix.rs).
    builder = guestbox;
    args = [ "nix-builder" ];
    guestboxBase = base;
    guestboxScript = script;
    # Only to put them (and their closure) in the build's inputs.
    guestboxInputs = inputs;
    GUESTBOX_HOME = guestboxHome;
    PATH = hostPath;
    requiredSystemFeatures = [ "kvm" ];
  }
