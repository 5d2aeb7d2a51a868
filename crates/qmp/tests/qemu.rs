//! Tests against a real qemu-system-x86_64 (TCG only; KVM does not work here).

mod common;

use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{installed_qemu_version, within, Qemu};
use qmp::{wait_event_on, Qmp, QmpError};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn greeting_reports_installed_qemu_version() {
    let vm = Qemu::none(&[]);
    within(LIMIT, async {
        let qmp = vm.connect().await;
        assert_eq!(qmp.version(), installed_qemu_version());
        assert!(!qmp.is_closed());
    })
    .await;
}

#[tokio::test]
async fn query_status_follows_prelaunch_and_cont() {
    let vm = Qemu::none(&["-S"]);
    within(LIMIT, async {
        let qmp = vm.connect().await;
        assert_eq!(qmp.query_status().await.unwrap(), "prelaunch");
        qmp.cont().await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "running");
    })
    .await;
}

#[tokio::test]
async fn unknown_command_gives_qmp_error_and_connection_survives() {
    let vm = Qemu::none(&[]);
    within(LIMIT, async {
        let qmp = vm.connect().await;
        match qmp.execute("no-such-command", Value::Null).await {
            Err(QmpError::Qmp { class, desc }) => {
                assert_eq!(class, "CommandNotFound");
                assert!(desc.contains("no-such-command"), "desc: {desc}");
            }
            other => panic!("expected a QMP error, got {other:?}"),
        }
        // A bad argument is a different class of error.
        match qmp
            .execute("query-status", json!({"bogus-argument": 1}))
            .await
        {
            Err(QmpError::Qmp { class, .. }) => assert_eq!(class, "GenericError"),
            other => panic!("expected a QMP error, got {other:?}"),
        }
        assert_eq!(qmp.query_status().await.unwrap(), "running");
    })
    .await;
}

#[tokio::test]
async fn stop_and_cont_emit_stop_and_resume_events() {
    let vm = Qemu::none(&[]);
    within(LIMIT, async {
        let qmp = vm.connect().await;
        let mut events = qmp.events();
        qmp.stop().await.unwrap();
        let stop = wait_event_on(&mut events, "STOP", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(stop.timestamp.is_some());
        assert_eq!(qmp.query_status().await.unwrap(), "paused");

        qmp.cont().await.unwrap();
        wait_event_on(&mut events, "RESUME", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "running");

        let names: Vec<String> = qmp.recent_events().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["STOP", "RESUME"]);

        // wait_event only sees events after the call: the STOP above is not reused.
        match qmp.wait_event("STOP", Duration::from_millis(200)).await {
            Err(QmpError::Timeout { command }) => assert_eq!(command, "event STOP"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_commands_get_their_own_replies() {
    let vm = Qemu::none(&[]);
    within(LIMIT, async {
        let qmp = Arc::new(vm.connect().await);
        let options = ["machine", "accel", "smp-opts", "boot-opts", "name", "rtc"];
        let mut tasks = Vec::new();
        for i in 0..60 {
            let qmp = qmp.clone();
            tasks.push(tokio::spawn(async move {
                if i % 3 == 2 {
                    let name = format!("no-such-command-{i}");
                    match qmp.execute(&name, Value::Null).await {
                        Err(QmpError::Qmp { desc, .. }) => {
                            assert!(desc.contains(&name), "{desc} vs {name}")
                        }
                        other => panic!("expected error for {name}, got {other:?}"),
                    }
                } else {
                    let opt = options[i % options.len()];
                    let ret = qmp
                        .execute("query-command-line-options", json!({ "option": opt }))
                        .await
                        .unwrap();
                    assert_eq!(ret[0]["option"], opt, "reply routed to the wrong caller");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn killed_qemu_fails_pending_and_later_calls_quickly() {
    let vm = Qemu::none(&[]);
    within(LIMIT, async {
        let qmp = Arc::new(vm.connect().await);
        assert_eq!(qmp.timeout(), Duration::from_secs(30));
        let mut events = qmp.events();

        // A frozen QEMU leaves the command pending; then kill it.
        vm.signal(libc::SIGSTOP);
        let pending = {
            let qmp = qmp.clone();
            tokio::spawn(async move { qmp.query_status().await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!pending.is_finished(), "a frozen QEMU cannot have answered");
        let killed = Instant::now();
        vm.signal(libc::SIGKILL);

        let res = pending.await.unwrap();
        assert!(matches!(res, Err(QmpError::Disconnected)), "{res:?}");
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "{:?}",
            killed.elapsed()
        );

        let t = Instant::now();
        let res = qmp.execute("query-status", Value::Null).await;
        assert!(matches!(res, Err(QmpError::Disconnected)), "{res:?}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(qmp.is_closed());

        let res = wait_event_on(&mut events, "STOP", Duration::from_secs(5)).await;
        assert!(matches!(res, Err(QmpError::Disconnected)), "{res:?}");
        // Subscribing after the fact also reports the disconnect instead of waiting.
        let res = qmp.wait_event("STOP", Duration::from_secs(5)).await;
        assert!(matches!(res, Err(QmpError::Disconnected)), "{res:?}");
    })
    .await;
}

#[tokio::test]
async fn timeout_fires_and_late_reply_is_not_misrouted() {
    let vm = Qemu::none(&[]);
    within(LIMIT, async {
        let mut qmp = vm.connect().await;
        vm.signal(libc::SIGSTOP);
        let t = Instant::now();
        let res = qmp
            .execute_with_timeout("query-version", Value::Null, Duration::from_millis(300))
            .await;
        match res {
            Err(QmpError::Timeout { command }) => assert_eq!(command, "query-version"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(2));

        // The default timeout applies to typed helpers too.
        qmp.set_timeout(Duration::from_millis(200));
        let res = qmp.query_status().await;
        assert!(matches!(res, Err(QmpError::Timeout { .. })), "{res:?}");

        // Once QEMU wakes, the stale query-version reply must not be taken as
        // the answer to the next command (it has no `status`).
        vm.signal(libc::SIGCONT);
        qmp.set_timeout(Duration::from_secs(10));
        assert_eq!(qmp.query_status().await.unwrap(), "running");
        let v = qmp.execute("query-version", Value::Null).await.unwrap();
        assert!(v["qemu"]["major"].is_u64(), "{v}");
    })
    .await;
}

#[tokio::test]
async fn migrate_stopped_pc_to_file_via_getfd_and_back() {
    let src = Qemu::pc(&[]);
    let state = src.path("state.bin");
    within(LIMIT, async {
        let qmp = src.connect().await;
        // Run the PC briefly (SeaBIOS finds nothing to boot), then freeze it,
        // as guestbox does with a real guest.
        qmp.cont().await.unwrap();
        qmp.stop().await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "paused");
        let out = std::fs::File::create(&state).unwrap();
        qmp.send_fd("mig", out.as_fd()).await.unwrap();
        drop(out); // QEMU holds its own copy.
        qmp.migrate("fd:mig").await.unwrap();
        let info = qmp.wait_migration(Duration::from_secs(60)).await.unwrap();
        assert_eq!(info.status, "completed");
        let ram = info.ram.expect("ram stats");
        // Guest RAM plus a few ROMs (BIOS, option ROMs).
        assert!(ram.total >= 64 << 20 && ram.total < 68 << 20, "{ram:?}");
        assert!(ram.transferred > 0, "{ram:?}");
        assert_eq!(qmp.query_status().await.unwrap(), "postmigrate");
        // The name was consumed by the migration.
        assert!(matches!(
            qmp.close_fd("mig").await,
            Err(QmpError::Qmp { .. })
        ));
    })
    .await;

    let mut magic = [0u8; 4];
    std::fs::File::open(&state)
        .unwrap()
        .read_exact(&mut magic)
        .unwrap();
    assert_eq!(&magic, b"QEVM", "not a QEMU migration stream");
    assert!(common::file_len(&state) > 4096);

    // Restore it into a fresh QEMU.
    let dst = Qemu::pc(&["-incoming", "defer"]);
    within(LIMIT, async {
        let qmp = dst.connect().await;
        assert_eq!(qmp.query_status().await.unwrap(), "inmigrate");
        let input = std::fs::File::open(&state).unwrap();
        qmp.send_fd("in", input.as_fd()).await.unwrap();
        qmp.migrate_incoming("fd:in").await.unwrap();
        let info = qmp.wait_migration(Duration::from_secs(60)).await.unwrap();
        assert_eq!(info.status, "completed");
        // The destination takes the source's run state (paused), not `running`.
        assert_eq!(qmp.query_status().await.unwrap(), "paused");
        qmp.cont().await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "running");
    })
    .await;
}

#[tokio::test]
async fn migration_to_closed_pipe_fails_with_qemu_reason() {
    let vm = Qemu::pc(&[]);
    within(LIMIT, async {
        let qmp = vm.connect().await;
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two fresh fds, each wrapped exactly once below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(read_end);
        qmp.migrate_set_capabilities(&[("x-ignore-shared", true)])
            .await
            .unwrap();
        qmp.send_fd("broken", write_end.as_fd()).await.unwrap();
        drop(write_end);
        qmp.migrate("fd:broken").await.unwrap();
        match qmp.wait_migration(Duration::from_secs(60)).await {
            Err(QmpError::MigrationFailed { desc }) => {
                assert!(!desc.is_empty());
                assert_ne!(desc, "QEMU gave no reason");
            }
            other => panic!("expected a failed migration, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_fd_name_is_rejected() {
    let vm = Qemu::pc(&[]);
    within(LIMIT, async {
        let qmp = vm.connect().await;
        match qmp.migrate("fd:never-sent").await {
            Err(QmpError::Qmp { desc, .. }) => assert!(desc.contains("never-sent"), "{desc}"),
            other => panic!("expected an error, got {other:?}"),
        }
        let res = qmp.migrate_set_capabilities(&[("no-such-cap", true)]).await;
        assert!(matches!(res, Err(QmpError::Qmp { .. })), "{res:?}");
    })
    .await;
}

#[tokio::test]
async fn system_powerdown_emits_powerdown_event() {
    let vm = Qemu::pc(&[]);
    within(LIMIT, async {
        let qmp = vm.connect().await;
        let mut events = qmp.events();
        qmp.system_powerdown().await.unwrap();
        wait_event_on(&mut events, "POWERDOWN", Duration::from_secs(10))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn quit_ends_qemu_and_later_calls_report_disconnect() {
    let mut vm = Qemu::none(&[]);
    within(LIMIT, async {
        let qmp = vm.connect().await;
        let mut events = qmp.events();
        qmp.quit().await.unwrap();
        let shutdown = wait_event_on(&mut events, "SHUTDOWN", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(shutdown.data["guest"], false);
        tokio::time::timeout(Duration::from_secs(10), qmp.closed())
            .await
            .expect("connection closes after quit");
        let res = qmp.query_status().await;
        assert!(matches!(res, Err(QmpError::Disconnected)), "{res:?}");
        // quit on a closed connection is still fine: QEMU is gone either way.
        qmp.quit().await.unwrap();
    })
    .await;
    let status = vm.wait_exit(Duration::from_secs(10)).expect("qemu exited");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn connect_waits_for_a_socket_created_later() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("late.sock");
    within(LIMIT, async {
        let connecting = {
            let sock = sock.clone();
            tokio::spawn(async move { Qmp::connect(&sock, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!connecting.is_finished());
        let sock_arg = format!("unix:{},server=on,wait=off", sock.display());
        let _vm = Qemu::none(&["-qmp", &sock_arg]);
        let qmp = connecting.await.unwrap().unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "running");
    })
    .await;
}

#[tokio::test]
async fn connect_times_out_when_no_qemu_listens() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let res = Qmp::connect(&dir.path().join("nobody.sock"), Duration::from_millis(300)).await;
    match res {
        Err(e @ QmpError::Timeout { .. }) => {
            assert!(e.to_string().contains("nobody.sock"), "{e}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2));
}
