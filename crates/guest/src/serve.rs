//! The resident job server (`link::job::SERVE_COMMAND`): started by the controller at
//! bootstrap on an SSH session of its own and frozen with the guest, it runs each job of a
//! revived pair with no SSH session to open and no shell to start. Jobs come as frames on
//! stdin, one at a time; their output and end go out as frames on stdout.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use link::job::{Job, SETUP_FAILED_EXIT};
use link::proto::{read_frame, write_frame, write_message, Event, FrameKind};

use crate::job;

type Out = Arc<Mutex<File>>;
type StdinSink = Arc<Mutex<Input>>;

/// Where the current job's `Stdin` frames go.
enum Input {
    /// No job reads stdin.
    None,
    /// The job is being started: what arrives meanwhile waits here.
    Pending {
        data: Vec<u8>,
        eof: bool,
    },
    Open(ChildStdin),
}

fn send(out: &Out, kind: FrameKind, bytes: &[u8]) -> io::Result<()> {
    let mut w = out
        .lock()
        .map_err(|_| io::Error::other("output poisoned"))?;
    write_frame(&mut *w, kind, bytes).map_err(|e| io::Error::other(e.to_string()))
}

fn event(out: &Out, e: &Event) -> io::Result<()> {
    let mut w = out
        .lock()
        .map_err(|_| io::Error::other("output poisoned"))?;
    write_message(&mut *w, e).map_err(|e| io::Error::other(e.to_string()))
}

/// Serves jobs until stdin ends; returns the exit status.
pub fn serve() -> i32 {
    // SAFETY: descriptors 0 and 1 are the session's, open for the life of the process.
    let (input, output) = unsafe { (File::from_raw_fd(0), File::from_raw_fd(1)) };
    let out: Out = Arc::new(Mutex::new(output));
    let sink: StdinSink = Arc::new(Mutex::new(Input::None));
    let (jobs, queue) = mpsc::channel::<Vec<u8>>();
    let reader_sink = sink.clone();
    // One thread reads every frame: jobs to the loop below, stdin straight to the job.
    std::thread::spawn(move || read_frames(input, jobs, reader_sink));
    while let Ok(payload) = queue.recv() {
        let result = match serde_json::from_slice::<Job>(&payload) {
            Ok(job) => run(&job, &out, &sink),
            Err(e) => {
                let _ = send(
                    &out,
                    FrameKind::Stderr,
                    format!("guestbox: the job from the host does not parse: {e}\n").as_bytes(),
                );
                event(
                    &out,
                    &Event::Exit {
                        code: SETUP_FAILED_EXIT,
                    },
                )
            }
        };
        if let Err(e) = result {
            eprintln!("guestbox-exec: the session to the controller broke: {e}");
            return 1;
        }
    }
    0
}

fn read_frames(mut input: File, jobs: mpsc::Sender<Vec<u8>>, sink: StdinSink) {
    loop {
        match read_frame(&mut input) {
            Ok((FrameKind::Message, payload)) => {
                // Input for this job may follow before it is started: keep it till then.
                if let Ok(mut s) = sink.lock() {
                    *s = Input::Pending {
                        data: Vec::new(),
                        eof: false,
                    };
                }
                if jobs.send(payload).is_err() {
                    return;
                }
            }
            Ok((FrameKind::Stdin, bytes)) => {
                let Ok(mut s) = sink.lock() else { return };
                match &mut *s {
                    Input::Pending { data, eof } if !*eof => {
                        if bytes.is_empty() {
                            *eof = true;
                        } else {
                            data.extend_from_slice(&bytes);
                        }
                    }
                    Input::Open(stdin) if !bytes.is_empty() => {
                        // The command may have closed its stdin: then the input has
                        // nowhere to go.
                        if stdin.write_all(&bytes).is_err() {
                            *s = Input::None;
                        }
                    }
                    _ => *s = Input::None,
                }
            }
            Ok(_) => {}
            // The session ended: so does the server (its queue closes with this thread).
            Err(_) => return,
        }
    }
}

/// Runs one job: its setup, the command with piped streams, their frames, its end.
fn run(job: &Job, out: &Out, sink: &StdinSink) -> io::Result<()> {
    let mut err = FrameWriter(out.clone(), FrameKind::Stderr);
    let mut cmd = match job::prepare(job) {
        Ok(cmd) => cmd,
        Err(message) => {
            let _ = writeln!(err, "guestbox: {message}");
            return event(
                out,
                &Event::Exit {
                    code: SETUP_FAILED_EXIT,
                },
            );
        }
    };
    cmd.stdin(if job.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let code = job::not_started(&job.argv, &e, &mut err);
            return event(out, &Event::Exit { code });
        }
    };
    if let Ok(mut s) = sink.lock() {
        let pending = std::mem::replace(&mut *s, Input::None);
        if let (Some(mut stdin), Input::Pending { data, eof }) = (child.stdin.take(), pending) {
            if stdin.write_all(&data).is_ok() && !eof {
                *s = Input::Open(stdin);
            }
        }
    }
    event(out, &Event::Started)?;
    let pumps: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| (Box::new(s) as Box<dyn Read + Send>, FrameKind::Stdout)),
        child
            .stderr
            .take()
            .map(|s| (Box::new(s) as Box<dyn Read + Send>, FrameKind::Stderr)),
    ]
    .into_iter()
    .flatten()
    .map(|(mut stream, kind)| {
        let out = out.clone();
        std::thread::spawn(move || -> io::Result<()> {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                send(&out, kind, &buf[..n])?;
            }
        })
    })
    .collect();
    let status = child.wait();
    if let Ok(mut s) = sink.lock() {
        *s = Input::None;
    }
    // Every byte of output before the end: the pipes reach EOF when the command and
    // whatever it left running have closed them (as an SSH session would wait).
    for pump in pumps {
        pump.join()
            .map_err(|_| io::Error::other("an output pump panicked"))??;
    }
    let code = match status {
        Ok(status) => job::ended(status, &mut err),
        Err(e) => {
            let _ = writeln!(err, "guestbox: waiting for the command: {e}");
            SETUP_FAILED_EXIT
        }
    };
    event(out, &Event::Exit { code })
}

/// Text written as frames of one kind (the job's stderr, for guestbox's own messages).
struct FrameWriter(Out, FrameKind);

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(&self.0, self.1, buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
