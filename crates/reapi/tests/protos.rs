//! The vendored protos against what BuildGrid 0.4.4 was built from: every message,
//! field (number, name, type) and enum value BuildGrid knows must be ours too. Ours may
//! be newer (fields and messages added since); only additions are allowed.

mod support;

use std::collections::HashMap;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};

/// Dumps BuildGrid's compiled descriptors (it ships `_pb2` modules, no .proto files).
const DUMP: &str = r#"
import sys, importlib
from google.protobuf import descriptor_pb2
fds = descriptor_pb2.FileDescriptorSet()
for m in sys.argv[2:]:
    fdp = descriptor_pb2.FileDescriptorProto()
    importlib.import_module(m).DESCRIPTOR.CopyToProto(fdp)
    fds.file.append(fdp)
open(sys.argv[1], "wb").write(fds.SerializeToString())
"#;

const MODULES: &[&str] = &[
    "buildgrid._protos.google.devtools.remoteworkers.v1test2.bots_pb2",
    "buildgrid._protos.google.devtools.remoteworkers.v1test2.worker_pb2",
    "buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2",
    "buildgrid._protos.google.bytestream.bytestream_pb2",
    "buildgrid._protos.google.rpc.status_pb2",
    "buildgrid._protos.google.longrunning.operations_pb2",
];

type Fields = HashMap<
    i32,
    (
        String,
        prost_types::field_descriptor_proto::Type,
        prost_types::field_descriptor_proto::Label,
        String,
    ),
>;

fn messages(prefix: &str, ms: &[DescriptorProto], out: &mut HashMap<String, Fields>) {
    for m in ms {
        let name = format!("{prefix}.{}", m.name());
        let fields = m
            .field
            .iter()
            .map(|f| {
                (
                    f.number(),
                    (
                        f.name().to_string(),
                        f.r#type(),
                        f.label(),
                        f.type_name().to_string(),
                    ),
                )
            })
            .collect();
        out.insert(name.clone(), fields);
        messages(&name, &m.nested_type, out);
    }
}

fn index(fds: &FileDescriptorSet) -> (HashMap<String, Fields>, HashMap<String, i32>, Vec<String>) {
    let mut msgs = HashMap::new();
    let mut enums = HashMap::new();
    let mut methods = Vec::new();
    for f in &fds.file {
        messages(f.package(), &f.message_type, &mut msgs);
        for e in &f.enum_type {
            for v in &e.value {
                enums.insert(
                    format!("{}.{}.{}", f.package(), e.name(), v.name()),
                    v.number(),
                );
            }
        }
        for s in &f.service {
            for m in &s.method {
                methods.push(format!(
                    "{}.{}/{}({}) -> {}",
                    f.package(),
                    s.name(),
                    m.name(),
                    m.input_type(),
                    m.output_type()
                ));
            }
        }
    }
    (msgs, enums, methods)
}

#[test]
fn vendored_protos_agree_with_buildgrid() {
    let bin = support::farm::venv().expect("the BuildGrid venv");
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let status = std::process::Command::new(bin.join("python"))
        .arg("-c")
        .arg(DUMP)
        .arg(out.path())
        .args(MODULES)
        .status()
        .expect("run python");
    assert!(status.success());
    let theirs = FileDescriptorSet::decode(std::fs::read(out.path()).expect("read").as_slice())
        .expect("BuildGrid's descriptors");
    assert_eq!(theirs.file.len(), MODULES.len());
    let ours = FileDescriptorSet::decode(reapi::proto::FILE_DESCRIPTOR_SET).expect("ours");
    let (their_msgs, their_enums, their_methods) = index(&theirs);
    let (our_msgs, our_enums, our_methods) = index(&ours);
    let mut problems = Vec::new();
    for (m, fields) in &their_msgs {
        if m.ends_with("PostBotEventTempRequest") {
            continue; // BuildGrid's extra RPC, unused by the bot (see below)
        }
        let Some(ours) = our_msgs.get(m) else {
            problems.push(format!("message {m} is missing"));
            continue;
        };
        for (n, f) in fields {
            if ours.get(n) != Some(f) {
                problems.push(format!(
                    "{m} field {n}: BuildGrid {f:?}, ours {:?}",
                    ours.get(n)
                ));
            }
        }
    }
    for (v, n) in &their_enums {
        if our_enums.get(v) != Some(n) {
            problems.push(format!("enum value {v} = {n}: ours {:?}", our_enums.get(v)));
        }
    }
    for m in &their_methods {
        if !our_methods.contains(m) && !m.contains("/PostBotEventTemp(") {
            problems.push(format!("RPC {m} is missing"));
        }
    }
    assert!(
        problems.is_empty(),
        "the vendored protos disagree with BuildGrid 0.4.4:\n{}",
        problems.join("\n")
    );
    // The comparison saw real content (not two empty sets).
    assert!(their_msgs.contains_key("google.devtools.remoteworkers.v1test2.Lease"));
    assert!(their_msgs.len() > 50, "{}", their_msgs.len());
}
