//! Errors a person sees when the worker cannot join a farm.

mod support;

use std::sync::Arc;
use std::time::Duration;

use reapi::{CancellationToken, Worker, WorkerConfig};
use support::{farm, Behaviour, HostExecutorDouble};

fn double() -> Arc<HostExecutorDouble> {
    Arc::new(HostExecutorDouble::new(Behaviour::Run))
}

#[tokio::test]
async fn nothing_listening_names_the_url_and_what_to_check() {
    let port = support::farm::free_port().expect("a free port");
    let url = format!("grpc://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let w = Worker::new(WorkerConfig::new(&url, dir.path()), double()).expect("config");
    let e = tokio::time::timeout(Duration::from_secs(30), w.run(CancellationToken::new()))
        .await
        .expect("fails fast")
        .expect_err("nothing listens there");
    let msg = e.to_string();
    assert!(matches!(e, reapi::Error::Connect { .. }), "{e:?}");
    assert!(msg.contains(&url) && msg.contains("check"), "{msg}");
}

#[test]
fn bad_settings_are_refused_before_connecting() {
    let mut c = WorkerConfig::new("grpc://127.0.0.1:1", "/nonexistent");
    c.max_concurrent = 0;
    let e = Worker::new(c, double()).err().expect("refused");
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = Worker::new(WorkerConfig::new("localhost:8980", "/tmp"), double())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("grpc://HOST:PORT"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_instance_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = WorkerConfig::new(&farm().url, dir.path());
    c.instance_name = "no-such-instance".into();
    let w = Worker::new(c, double()).expect("config");
    let e = tokio::time::timeout(Duration::from_secs(60), w.run(CancellationToken::new()))
        .await
        .expect("fails fast")
        .expect_err("BuildGrid has no such instance");
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("Bots.CreateBotSession") && msg.contains(&farm().url),
        "{msg}"
    );
    assert!(msg.contains("instance"), "{msg}");
}
