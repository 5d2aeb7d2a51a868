//! `guestbox bench`'s run section: what a job pays after the revive. `run -- true` end to
//! end and split by stage and by process (CPU), runs per minute at concurrency 1, 2 and 4,
//! one exec in a revived guest, one file read through a read-only share.

use std::time::Instant;

use guestbox::run::{Command, Session, SessionOptions, Streams, Volume};
use guestbox::store::{Base, Store};
use guestbox::{Error, IoContext, Result};

use crate::bench::{cpu_of, median, own_cpu, secs, Row};

/// One `true` in a fresh session, measured: wall time to its exit status, to the session
/// gone; CPU of guestbox (with qemu-img), the guest's QEMU and the controller's QEMU.
struct TrueRun {
    to_status: f64,
    to_gone: f64,
    split: [f64; 4],
    cpu: [f64; 3],
}

fn command(argv: &[&str]) -> Command {
    Command {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Command::default()
    }
}

async fn exec_quiet(session: &mut Session, cmd: &Command) -> Result<guestbox::run::Outcome> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut streams = Streams {
        stdin: None,
        stdout: &mut out,
        stderr: &mut err,
        window: None,
    };
    let outcome = session.exec(cmd, &mut streams).await?;
    if outcome.exit_code != 0 {
        return Err(Error::Command {
            what: format!("the benchmark command {:?}", cmd.argv),
            status: format!("exit status {}", outcome.exit_code),
            detail: String::from_utf8_lossy(&err).into_owned(),
        });
    }
    Ok(outcome)
}

async fn true_run(store: &Store, base: &Base) -> Result<TrueRun> {
    let ours = own_cpu();
    let t = Instant::now();
    let mut session = Session::revive(store, base, &SessionOptions::default()).await?;
    let o = exec_quiet(&mut session, &command(&["true"])).await?;
    let to_status = secs(t.elapsed());
    let (guest, controller) = session.pids();
    let cpu_guest = guest.map_or(f64::NAN, cpu_of);
    let cpu_controller = controller.map_or(f64::NAN, cpu_of);
    // Before the QEMUs are reaped, or their CPU would count twice.
    let cpu_ours = own_cpu() - ours;
    session.discard().await;
    let to_gone = secs(t.elapsed());
    let tm = &o.timings;
    Ok(TrueRun {
        to_status,
        to_gone,
        split: [
            secs(tm.revive),
            secs(tm.controller_ready),
            secs(tm.command_started),
            secs(tm.command_done),
        ],
        cpu: [cpu_ours, cpu_guest, cpu_controller],
    })
}

/// Runs per minute with `concurrency` sessions at a time, each `true`, `rounds` times.
async fn runs_per_minute(
    store: &Store,
    base: &Base,
    concurrency: usize,
    rounds: usize,
) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..rounds {
        let runs = (0..concurrency).map(|_| true_run(store, base));
        futures::future::try_join_all(runs).await?;
    }
    Ok((concurrency * rounds) as f64 / secs(t.elapsed()) * 60.0)
}

pub async fn rows(store: &Store, base: &Base, n: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..n {
        runs.push(true_run(store, base).await?);
    }
    let m = |f: &dyn Fn(&TrueRun) -> f64| median(runs.iter().map(f).collect());
    let (wall, gone) = (m(&|r| r.to_status), m(&|r| r.to_gone));
    rows.push(Row::new(
        "run_true_s",
        "`run -- true`, to its exit status",
        wall,
        "s",
        "<= 0.5 s",
    ));
    rows.push(Row::new(
        "run_true_teardown_s",
        "  then both VMs killed, run dir removed",
        gone - wall,
        "s",
        "",
    ));
    rows.push(Row::text(
        "run_true_split",
        "  split: running | agent answered | started | exited",
        format!(
            "{:.3} | {:.3} | {:.3} | {:.3} s",
            m(&|r| r.split[0]),
            m(&|r| r.split[1]),
            m(&|r| r.split[2]),
            m(&|r| r.split[3])
        ),
        "",
    ));
    let cpu = [m(&|r| r.cpu[0]), m(&|r| r.cpu[1]), m(&|r| r.cpu[2])];
    rows.push(Row::new(
        "run_true_cpu_s",
        "CPU per `run -- true`, all processes",
        cpu.iter().sum(),
        "CPU-s",
        "<= 0.5 CPU-s",
    ));
    rows.push(Row::text(
        "run_true_cpu_split",
        "  guestbox + qemu-img | guest QEMU | controller QEMU",
        format!("{:.3} | {:.3} | {:.3} CPU-s", cpu[0], cpu[1], cpu[2]),
        "",
    ));
    for c in [1, 2, 4] {
        let rate = runs_per_minute(store, base, c, n.div_ceil(c).max(1)).await?;
        rows.push(Row::new(
            match c {
                1 => "runs_per_minute_1",
                2 => "runs_per_minute_2",
                _ => "runs_per_minute_4",
            },
            &format!("runs of `true` per minute, {c} at a time"),
            rate,
            "/min",
            "",
        ));
    }
    // What one exec costs in a revived guest: 100 of them in one job, minus one job.
    let mut per_exec = Vec::new();
    for _ in 0..n.min(3) {
        let mut s = Session::revive(store, base, &SessionOptions::default()).await?;
        // The first command mounts the session's shares: out of the measure.
        exec_quiet(&mut s, &command(&["sh", "-c", "/bin/true"])).await?;
        let started = Instant::now();
        exec_quiet(
            &mut s,
            &command(&["sh", "-c", "for i in $(seq 100); do /bin/true; done"]),
        )
        .await?;
        let hundred = secs(started.elapsed());
        s.discard().await;
        per_exec.push(hundred / 100.0);
    }
    rows.push(Row::new(
        "exec_ms",
        "one exec of /bin/true in a revived guest (100 in a loop)",
        median(per_exec) * 1000.0,
        "ms",
        "",
    ));
    // What a file costs through a read-only share: `cat` of 1 000 small files.
    let tree = tempfile::tempdir().ctx(|| "creating a temporary directory")?;
    for i in 0..1000 {
        let p = tree.path().join(format!("f{i:04}"));
        std::fs::write(&p, format!("file {i}\n")).ctx(|| format!("writing {}", p.display()))?;
    }
    let opts = SessionOptions {
        volumes: vec![Volume {
            host: tree.path().to_path_buf(),
            guest: "/src".into(),
            readonly: true,
        }],
        ..SessionOptions::default()
    };
    let mut per_file = Vec::new();
    for _ in 0..n.min(3) {
        let mut s = Session::revive(store, base, &opts).await?;
        let started = Instant::now();
        exec_quiet(&mut s, &command(&["sh", "-c", "cat /src/* > /dev/null"])).await?;
        per_file.push(secs(started.elapsed()) / 1000.0);
        s.discard().await;
    }
    rows.push(Row::new(
        "share_file_ms",
        "one small file read through a ro share (1 000 with cat)",
        median(per_file) * 1000.0,
        "ms",
        "",
    ));
    Ok(rows)
}
