//! End to end with a hand-made REAPI client instead of Bazel: what Bazel 4 cannot show
//! (symlinks and empty directories in the input root, `output_paths`, the Tree of an
//! output directory, action timeouts, missing inputs, an Action sent as a Digest).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use reapi::proto::re::content_addressable_storage_client::ContentAddressableStorageClient;
use reapi::proto::re::execution_client::ExecutionClient;
use reapi::proto::re::{
    batch_update_blobs_request, command, platform, Action, BatchReadBlobsRequest,
    BatchUpdateBlobsRequest, Command, Digest, Directory, DirectoryNode, ExecuteRequest,
    ExecuteResponse, FileNode, Platform, SymlinkNode, Tree,
};
use sha2::Digest as _;
use support::{config, farm, init_logs, start_worker, unique, Behaviour, HostExecutorDouble};
use tonic::transport::Channel;

fn digest(data: &[u8]) -> Digest {
    Digest {
        hash: format!("{:x}", sha2::Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

struct Client {
    cas: ContentAddressableStorageClient<Channel>,
    exec: ExecutionClient<Channel>,
    blobs: HashMap<String, Vec<u8>>,
}

impl Client {
    async fn new() -> Client {
        let url = farm().url.replace("grpc://", "http://");
        let ch = Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        Client {
            cas: ContentAddressableStorageClient::new(ch.clone()),
            exec: ExecutionClient::new(ch),
            blobs: HashMap::new(),
        }
    }

    /// Keeps a blob to upload; returns its digest.
    fn blob(&mut self, data: Vec<u8>) -> Digest {
        let d = digest(&data);
        self.blobs.insert(d.hash.clone(), data);
        d
    }

    fn message<M: Message>(&mut self, m: &M) -> Digest {
        self.blob(m.encode_to_vec())
    }

    async fn upload(&mut self) {
        let requests = self
            .blobs
            .drain()
            .map(|(_, data)| batch_update_blobs_request::Request {
                digest: Some(digest(&data)),
                data,
                ..Default::default()
            })
            .collect();
        let r = self
            .cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: String::new(),
                requests,
                ..Default::default()
            })
            .await
            .expect("BatchUpdateBlobs")
            .into_inner();
        for x in r.responses {
            assert_eq!(x.status.map_or(0, |s| s.code), 0, "upload failed");
        }
    }

    async fn read(&mut self, d: &Digest) -> Vec<u8> {
        if d.size_bytes == 0 {
            return Vec::new();
        }
        let mut r = self
            .cas
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: String::new(),
                digests: vec![d.clone()],
                ..Default::default()
            })
            .await
            .expect("BatchReadBlobs")
            .into_inner();
        let x = r.responses.pop().expect("one response");
        assert_eq!(x.status.map_or(0, |s| s.code), 0, "blob {} missing", d.hash);
        x.data
    }

    /// Executes `action` (uploaded) and returns the final ExecuteResponse.
    async fn execute(&mut self, action: &Digest) -> ExecuteResponse {
        let mut ops = self
            .exec
            .execute(ExecuteRequest {
                instance_name: String::new(),
                skip_cache_lookup: true,
                action_digest: Some(action.clone()),
                ..Default::default()
            })
            .await
            .expect("Execute")
            .into_inner();
        while let Some(op) = ops.next().await {
            let op = op.expect("operation stream");
            if op.done {
                use reapi::proto::google::longrunning::operation::Result as R;
                match op.result {
                    Some(R::Response(any)) => {
                        return ExecuteResponse::decode(any.value.as_slice())
                            .expect("ExecuteResponse")
                    }
                    other => panic!("the operation ended without a response: {other:?}"),
                }
            }
        }
        panic!("the operation stream ended before the operation was done");
    }
}

fn platform_for(base: &str) -> Platform {
    Platform {
        properties: vec![
            platform::Property {
                name: "OSFamily".into(),
                value: "Linux".into(),
            },
            platform::Property {
                name: "guestbox-base".into(),
                value: base.into(),
            },
        ],
    }
}

#[allow(deprecated)]
fn bash(script: &str, base: &str, output_paths: &[&str]) -> Command {
    Command {
        arguments: vec!["/bin/bash".into(), "-c".into(), script.into()],
        environment_variables: vec![command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: output_paths.iter().map(|s| s.to_string()).collect(),
        platform: Some(platform_for(base)),
        ..Default::default()
    }
}

fn action(
    c: &mut Client,
    cmd: &Command,
    root: Digest,
    base: &str,
    timeout: Option<Duration>,
) -> Digest {
    let command_digest = c.message(cmd);
    let a = Action {
        command_digest: Some(command_digest),
        input_root_digest: Some(root),
        timeout: timeout.map(|t| prost_types::Duration {
            seconds: t.as_secs() as i64,
            nanos: 0,
        }),
        do_not_cache: true,
        platform: Some(platform_for(base)),
        ..Default::default()
    };
    c.message(&a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_tree_and_output_paths_round_trip() {
    init_logs();
    let base = unique("base");
    let w = start_worker(
        config(&farm().url, &[&base], std::path::Path::new("")),
        HostExecutorDouble::new(Behaviour::Run),
    )
    .await;
    let mut c = Client::new().await;
    let n = unique("x");
    let x = c.blob(n.clone().into_bytes());
    let tool = c.blob(b"#!/bin/bash\necho tool ran\n".to_vec());
    let empty = c.message(&Directory::default());
    let data = c.message(&Directory {
        files: vec![FileNode {
            name: "x.txt".into(),
            digest: Some(x),
            ..Default::default()
        }],
        ..Default::default()
    });
    let root = c.message(&Directory {
        files: vec![FileNode {
            name: "tool.sh".into(),
            digest: Some(tool),
            is_executable: true,
            ..Default::default()
        }],
        directories: vec![
            DirectoryNode {
                name: "data".into(),
                digest: Some(data),
            },
            DirectoryNode {
                name: "empty".into(),
                digest: Some(empty),
            },
        ],
        symlinks: vec![SymlinkNode {
            name: "link".into(),
            target: "data/x.txt".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    // "out" does not exist in the input: the worker makes it, as the parent of out/d.
    let script = format!(
        "set -e; ./tool.sh; test -d empty; test -L link; test \"$(cat link)\" = {n}; \
         test -d out; mkdir -p out/d/e/empty2; cp link out/d/copied; chmod +x out/d/copied; \
         ln -s copied out/d/sl; echo err >&2"
    );
    let cmd = bash(&script, &base, &["out/d", "out/missing"]);
    let a = action(&mut c, &cmd, root, &base, None);
    c.upload().await;

    let resp = c.execute(&a).await;
    assert_eq!(
        resp.status.as_ref().map_or(0, |s| s.code),
        0,
        "{:?}",
        resp.status
    );
    let result = resp.result.expect("an ActionResult");
    let stdout = c.read(result.stdout_digest.as_ref().expect("stdout")).await;
    let stderr = c.read(result.stderr_digest.as_ref().expect("stderr")).await;
    assert_eq!(result.exit_code, 0, "stdout {stdout:?} stderr {stderr:?}");
    assert_eq!(String::from_utf8_lossy(&stdout), "tool ran\n");
    assert_eq!(String::from_utf8_lossy(&stderr), "err\n");
    assert_eq!(result.output_directories.len(), 1, "{result:?}");
    let od = &result.output_directories[0];
    assert_eq!(od.path, "out/d");
    let tree = Tree::decode(
        c.read(od.tree_digest.as_ref().expect("tree"))
            .await
            .as_slice(),
    )
    .expect("Tree");
    let root = tree.root.expect("tree root");
    assert_eq!(root.files.len(), 1);
    assert_eq!(root.files[0].name, "copied");
    assert!(root.files[0].is_executable);
    assert_eq!(
        c.read(root.files[0].digest.as_ref().expect("digest")).await,
        n.as_bytes()
    );
    assert_eq!(root.symlinks.len(), 1);
    assert_eq!(
        (
            root.symlinks[0].name.as_str(),
            root.symlinks[0].target.as_str()
        ),
        ("sl", "copied")
    );
    assert_eq!(root.directories.len(), 1);
    assert_eq!(root.directories[0].name, "e");
    // e holds the empty directory empty2: both are among the Tree's children.
    let by_digest: HashMap<String, Directory> = tree
        .children
        .iter()
        .map(|d| (digest(&d.encode_to_vec()).hash, d.clone()))
        .collect();
    let e = &by_digest[&root.directories[0].digest.as_ref().expect("e").hash];
    assert_eq!(e.directories.len(), 1);
    assert_eq!(e.directories[0].name, "empty2");
    let empty2 = &by_digest[&e.directories[0].digest.as_ref().expect("empty2").hash];
    assert_eq!(empty2, &Directory::default());
    assert!(result.output_files.is_empty() && result.output_symlinks.is_empty());
    let meta = result.execution_metadata.expect("metadata");
    assert!(meta.worker.starts_with("bot-"), "{meta:?}");
    assert!(meta.output_upload_completed_timestamp.is_some());
    assert_eq!(w.snapshot().leases_succeeded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_action_timeout_is_deadline_exceeded() {
    init_logs();
    let base = unique("base");
    let w = start_worker(
        config(&farm().url, &[&base], std::path::Path::new("")),
        HostExecutorDouble::new(Behaviour::Run),
    )
    .await;
    let mut c = Client::new().await;
    let root = c.message(&Directory::default());
    let n = unique("started");
    let cmd = bash(&format!("echo {n}; sleep 60"), &base, &[]);
    let a = action(&mut c, &cmd, root, &base, Some(Duration::from_secs(2)));
    c.upload().await;
    let t = Instant::now();
    let resp = c.execute(&a).await;
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "the timeout was not honoured: {:?}",
        t.elapsed()
    );
    let status = resp.status.expect("a status");
    assert_eq!(
        status.code,
        tonic::Code::DeadlineExceeded as i32,
        "{status:?}"
    );
    assert!(status.message.contains("timeout"), "{status:?}");
    // What the command printed before it was stopped still comes back.
    let result = resp.result.expect("a partial ActionResult");
    let stdout = c.read(result.stdout_digest.as_ref().expect("stdout")).await;
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), n);
    let s = w.snapshot();
    assert_eq!((s.leases_accepted, s.leases_failed), (1, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_input_is_failed_precondition_naming_the_blob() {
    init_logs();
    let base = unique("base");
    let _w = start_worker(
        config(&farm().url, &[&base], std::path::Path::new("")),
        HostExecutorDouble::new(Behaviour::Run),
    )
    .await;
    let mut c = Client::new().await;
    let absent = digest(unique("never uploaded").as_bytes());
    let root = c.message(&Directory {
        files: vec![FileNode {
            name: "gone".into(),
            digest: Some(absent.clone()),
            ..Default::default()
        }],
        ..Default::default()
    });
    let cmd = bash("cat gone", &base, &[]);
    let a = action(&mut c, &cmd, root, &base, None);
    c.upload().await;
    let resp = c.execute(&a).await;
    let status = resp.status.expect("a status");
    assert_eq!(
        status.code,
        tonic::Code::FailedPrecondition as i32,
        "{status:?}"
    );
    let pf = status
        .details
        .iter()
        .find(|d| d.type_url.ends_with("google.rpc.PreconditionFailure"))
        .expect("a PreconditionFailure detail");
    let pf = reapi::proto::rpc::PreconditionFailure::decode(pf.value.as_slice()).expect("decode");
    assert_eq!(pf.violations.len(), 1);
    assert_eq!(pf.violations[0].r#type, "MISSING");
    assert_eq!(
        pf.violations[0].subject,
        format!("blobs/{}/{}", absent.hash, absent.size_bytes)
    );
}

/// BuildGrid sends the Action itself when it kept it, else its Digest: with the job's
/// Action removed from BuildGrid's database, the worker must fetch it from the CAS.
/// (BuildGrid 0.4.4 itself needs the stored Action again to complete the job, so the
/// test puts it back while the command runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_with_an_action_digest_runs() {
    init_logs();
    let farm = farm();
    let base = unique("base");
    let mut c = Client::new().await;
    let root = c.message(&Directory::default());
    let n = unique("by-digest");
    let cmd = bash(&format!("sleep 2; echo {n}"), &base, &[]);
    let a = action(&mut c, &cmd, root, &base, None);
    let action_hex: String = c.blobs[&a.hash]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    c.upload().await;
    // Queue the job while no bot can take it, then drop its stored Action.
    let mut exec = c.exec.clone();
    let ad = a.clone();
    let call = tokio::spawn(async move {
        let mut ops = exec
            .execute(ExecuteRequest {
                instance_name: String::new(),
                skip_cache_lookup: true,
                action_digest: Some(ad),
                ..Default::default()
            })
            .await
            .expect("Execute")
            .into_inner();
        while let Some(op) = ops.next().await {
            let op = op.expect("operation stream");
            if op.done {
                use reapi::proto::google::longrunning::operation::Result as R;
                if let Some(R::Response(any)) = op.result {
                    return ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse");
                }
                panic!("no response");
            }
        }
        panic!("the stream ended early");
    });
    let key = format!("{}/{}", a.hash, a.size_bytes);
    let start = Instant::now();
    loop {
        let n: u32 = farm
            .sql(&format!(
                "SELECT count(*) FROM jobs WHERE action_digest = '{key}'"
            ))
            .expect("query jobs")
            .trim()
            .parse()
            .expect("a count");
        if n == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the job was not queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    farm.sql("ALTER TABLE jobs ALTER COLUMN action DROP NOT NULL")
        .expect("alter");
    farm.sql(&format!(
        "UPDATE jobs SET action = NULL WHERE action_digest = '{key}'"
    ))
    .expect("drop the stored Action");
    let w = start_worker(
        config(&farm.url, &[&base], std::path::Path::new("")),
        HostExecutorDouble::new(Behaviour::Run),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), w.executor.wait_started(1))
        .await
        .expect("the action started");
    farm.sql(&format!(
        "UPDATE jobs SET action = '\\x{action_hex}'::bytea WHERE action_digest = '{key}'"
    ))
    .expect("put the Action back");
    let resp = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the action ran")
        .expect("execute task");
    assert_eq!(
        resp.status.as_ref().map_or(0, |s| s.code),
        0,
        "{:?}",
        resp.status
    );
    let result = resp.result.expect("result");
    let stdout = c.read(result.stdout_digest.as_ref().expect("stdout")).await;
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), n);
    assert_eq!(w.snapshot().leases_succeeded, 1);
}

/// A drained worker tells the farm it is leaving: work for its base goes to the next
/// worker at once instead of waiting (BuildGrid's keepalive, 120 s here) for the session
/// of the one that left to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_is_given_no_more_work() {
    init_logs();
    let base = unique("base");
    let mut c = config(&farm().url, &[&base], std::path::Path::new(""));
    c.poll_timeout = Duration::from_secs(5);
    let mut first = start_worker(c, HostExecutorDouble::new(Behaviour::Run)).await;
    first.wait_joined().await;
    let s = first.stop().await.expect("the idle worker drained");
    assert_eq!(s.leases_accepted, 0, "{s:?}");
    let second = start_worker(
        config(&farm().url, &[&base], std::path::Path::new("")),
        HostExecutorDouble::new(Behaviour::Run),
    )
    .await;
    let mut client = Client::new().await;
    let root = client.message(&Directory::default());
    let n = unique("second");
    let cmd = bash(&format!("echo {n}"), &base, &[]);
    let a = action(&mut client, &cmd, root, &base, None);
    client.upload().await;
    let t = Instant::now();
    let resp = client.execute(&a).await;
    assert_eq!(resp.status.map_or(0, |s| s.code), 0);
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "the action waited {:?}: it was given to the worker that had left",
        t.elapsed()
    );
    assert_eq!(second.executor.calls(), 1);
}
