//! Protocol edge cases QEMU will not produce on demand, against a scripted server.

mod common;

use std::time::Duration;

use common::within;
use qmp::{Qmp, QmpError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixListener;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 3, "minor": 1, "major": 9}, "package": ""}, "capabilities": []}}"#;
const LIMIT: Duration = Duration::from_secs(20);

/// Accepts one client, sends `greeting`, answers `qmp_capabilities`, then
/// hands each later request to `script` with the write half.
async fn serve<F>(listener: UnixListener, greeting: &'static str, mut script: F)
where
    F: FnMut(Value, &mut Vec<String>),
{
    let (stream, _) = listener.accept().await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    send(&mut write, greeting).await;
    while let Ok(Some(line)) = lines.next_line().await {
        let req: Value = serde_json::from_str(&line).unwrap();
        let mut out = Vec::new();
        if req["execute"] == "qmp_capabilities" {
            out.push(json!({"return": {}, "id": req["id"]}).to_string());
        } else {
            script(req, &mut out);
        }
        for l in out {
            send(&mut write, &l).await;
        }
    }
}

async fn send(write: &mut OwnedWriteHalf, line: &str) {
    // QEMU ends lines with \r\n; do the same.
    let _ = write.write_all(format!("{line}\r\n").as_bytes()).await;
}

fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let l = UnixListener::bind(&path).unwrap();
    (dir, path, l)
}

#[tokio::test]
async fn non_qmp_greeting_is_a_protocol_error() {
    let (_dir, path, l) = listener();
    let server = tokio::spawn(serve(l, r#"{"hello": 1}"#, |_, _| {}));
    within(LIMIT, async {
        let res = Qmp::connect(&path, Duration::from_secs(5)).await;
        assert!(matches!(res, Err(QmpError::Protocol(_))), "{res:?}");
    })
    .await;
    server.abort();
}

#[tokio::test]
async fn out_of_order_replies_and_strays_are_routed_by_id() {
    let (_dir, path, l) = listener();
    let mut held: Option<Value> = None;
    let server = tokio::spawn(serve(l, GREETING, move |req, out| {
        // Hold the first request, answer it after the second; sprinkle noise.
        match held.take() {
            None => held = Some(req),
            Some(first) => {
                out.push(json!({"return": {"who": req["execute"]}, "id": req["id"]}).to_string());
                out.push(json!({"return": {}, "id": 999_999}).to_string());
                out.push(json!({"error": {"class": "GenericError", "desc": "no id"}}).to_string());
                out.push(
                    json!({"event": "X", "data": {"n": 1},
                           "timestamp": {"seconds": 1, "microseconds": 2}})
                    .to_string(),
                );
                out.push(
                    json!({"return": {"who": first["execute"]}, "id": first["id"]}).to_string(),
                );
            }
        }
    }));
    within(LIMIT, async {
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.version(), (9, 1, 3));
        let mut events = qmp.events();
        let (a, b) = tokio::join!(qmp.execute("first", Value::Null), async {
            // Make sure "first" is sent first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            qmp.execute("second", Value::Null).await
        });
        assert_eq!(a.unwrap()["who"], "first");
        assert_eq!(b.unwrap()["who"], "second");
        let ev = qmp::wait_event_on(&mut events, "X", Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(ev.data, json!({"n": 1}));
    })
    .await;
    server.abort();
}

#[tokio::test]
async fn malformed_json_fails_pending_call_with_protocol_error() {
    let (_dir, path, l) = listener();
    let server = tokio::spawn(serve(l, GREETING, |_, out| {
        out.push("{this is not json".into());
    }));
    within(LIMIT, async {
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let res = qmp.execute("anything", Value::Null).await;
        assert!(matches!(res, Err(QmpError::Protocol(_))), "{res:?}");
        // The stream is no longer trusted: later calls fail at once, the same way.
        let res = qmp.execute("anything", Value::Null).await;
        assert!(matches!(res, Err(QmpError::Protocol(_))), "{res:?}");
    })
    .await;
    server.abort();
}

#[tokio::test]
async fn arguments_are_sent_and_null_arguments_omitted() {
    let (_dir, path, l) = listener();
    let server = tokio::spawn(serve(l, GREETING, |req, out| {
        // Echo the request back so the test can inspect what went on the wire.
        out.push(json!({"return": req.clone(), "id": req["id"]}).to_string());
    }));
    within(LIMIT, async {
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let sent = qmp.execute("plain", Value::Null).await.unwrap();
        assert!(sent.get("arguments").is_none(), "{sent}");
        let sent = qmp.execute("with", json!({"uri": "fd:x"})).await.unwrap();
        assert_eq!(sent["arguments"], json!({"uri": "fd:x"}));
        qmp.migrate_set_capabilities(&[("x-ignore-shared", true), ("events", false)])
            .await
            .unwrap();
        let a = qmp.execute("a", Value::Null).await.unwrap();
        let b = qmp.execute("b", Value::Null).await.unwrap();
        assert_ne!(a["id"], b["id"], "ids must be unique");
    })
    .await;
    server.abort();
}
