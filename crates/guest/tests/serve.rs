//! The resident job server, driven through its frames as the controller's agent drives it
//! (here on the host, with jobs that need no mounts, clock or seed).

use std::io::Write;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use link::job::{Job, SERVE_COMMAND};
use link::proto::{read_frame, write_frame, write_message, Event, FrameKind};

struct Server {
    child: Child,
    to: ChildStdin,
    from: ChildStdout,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_guestbox-exec"))
            .args(["-c", SERVE_COMMAND])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (to, from) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        Server { child, to, from }
    }

    /// Runs a job: (exit code, stdout, stderr, saw Started).
    fn job(&mut self, argv: &[&str], stdin: Option<&[u8]>) -> (i32, String, String, bool) {
        let job = Job {
            time: None,
            seed: None,
            mounts: vec![],
            env: vec![("GUESTBOX_T".into(), "v w".into())],
            workdir: None,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: stdin.is_some(),
        };
        write_message(&mut self.to, &job).unwrap();
        if let Some(input) = stdin {
            write_frame(&mut self.to, FrameKind::Stdin, input).unwrap();
            write_frame(&mut self.to, FrameKind::Stdin, b"").unwrap();
        }
        self.to.flush().unwrap();
        let (mut out, mut err, mut started) = (Vec::new(), Vec::new(), false);
        loop {
            let (kind, payload) = read_frame(&mut self.from).unwrap();
            match kind {
                FrameKind::Stdout => out.extend(payload),
                FrameKind::Stderr => err.extend(payload),
                FrameKind::Message => match serde_json::from_slice::<Event>(&payload).unwrap() {
                    Event::Started => started = true,
                    Event::Exit { code } => {
                        return (
                            code,
                            String::from_utf8(out).unwrap(),
                            String::from_utf8(err).unwrap(),
                            started,
                        )
                    }
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
}

#[test]
fn one_server_runs_job_after_job_with_their_streams_and_ends() {
    let mut s = Server::start();
    let (code, out, err, started) = s.job(
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; echo \"$GUESTBOX_T\"; exit 3",
        ],
        None,
    );
    assert_eq!(
        (code, out.as_str(), err.as_str(), started),
        (3, "out\nv w\n", "err\n", true)
    );
    // The server's own environment is untouched by a job's.
    let (code, out, _, _) = s.job(&["sh", "-c", "cat; echo \"[$GUESTBOX_T]\""], Some(b"in\n"));
    assert_eq!((code, out.as_str()), (0, "in\n[v w]\n"));
    let (code, _, err, _) = s.job(&["sh", "-c", "kill -SEGV $$"], None);
    assert_eq!(code, 139);
    assert!(
        err.contains("guestbox: the command was killed by SIGSEGV"),
        "{err}"
    );
    let (code, _, err, started) = s.job(&["/no/such/program"], None);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("command not found") && !started, "{err}");
    // Without stdin the command reads EOF, never the next job's frames.
    let (code, out, _, _) = s.job(&["sh", "-c", "cat; echo eof"], None);
    assert_eq!((code, out.as_str()), (0, "eof\n"));
    // A background process that keeps the output open holds the end back until it closes.
    let (code, out, _, _) = s.job(&["sh", "-c", "(sleep 1; echo late) & echo now"], None);
    assert_eq!((code, out.as_str()), (0, "now\nlate\n"));
    drop(s.to);
    assert!(s.child.wait().unwrap().success());
}
