//! Compiles the vendored REAPI / Remote Workers API protos (see proto/README.md) into Rust.
//! The generated code lives in OUT_DIR only.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "build/bazel/remote/execution/v2/remote_execution.proto",
    "google/devtools/remoteworkers/v1test2/bots.proto",
    "google/bytestream/bytestream.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?)
            .join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
    // Kept for the test that compares these messages with what BuildGrid was built from.
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
