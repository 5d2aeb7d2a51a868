//! Generated protocol types and gRPC clients (and servers, for test doubles).
//!
//! Module paths follow the proto packages, as the generated code refers to its
//! neighbours by relative paths.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod build {
    pub mod bazel {
        pub mod remote {
            pub mod execution {
                pub mod v2 {
                    tonic::include_proto!("build.bazel.remote.execution.v2");
                }
            }
        }
        pub mod semver {
            tonic::include_proto!("build.bazel.semver");
        }
    }
}

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
    pub mod bytestream {
        tonic::include_proto!("google.bytestream");
    }
    pub mod devtools {
        pub mod remoteworkers {
            pub mod v1test2 {
                tonic::include_proto!("google.devtools.remoteworkers.v1test2");
            }
        }
    }
    pub mod longrunning {
        tonic::include_proto!("google.longrunning");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The encoded `FileDescriptorSet` of every vendored proto, as compiled.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub use build::bazel::remote::execution::v2 as re;
pub use google::bytestream;
pub use google::devtools::remoteworkers::v1test2 as rw;
pub use google::rpc;
