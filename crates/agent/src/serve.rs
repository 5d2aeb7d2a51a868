//! The control port: one thread reads every frame from the host (requests to the loop, a
//! job's stdin straight into its pipe); the loop answers each request in turn.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use link::proto::{self, read_frame, write_message, Event, FrameKind, Request};

use crate::{console, job, run_cmd, ssh};

/// The port's write side, shared by the loop and a job's output pumps.
pub(crate) type Writer = Arc<Mutex<File>>;

/// Where Stdin (and Resize) frames go while a job reads its stdin.
pub(crate) type StdinSink = Arc<Mutex<Option<Input>>>;

/// A running job's input: a pipe, the controller-side terminal the SSH master reads (then
/// resizes go to that terminal, and SIGWINCH to the master), or the resident job server's
/// session (then the input travels as frames).
pub(crate) struct Input {
    pub file: File,
    /// The SSH master's pid, for a job with a terminal.
    pub tty_master: Option<i32>,
    /// Stdin goes to the guest's job server as `Stdin` frames.
    pub framed: bool,
}

pub(crate) fn send(writer: &Writer, event: &Event) -> io::Result<()> {
    let mut w = writer
        .lock()
        .map_err(|_| io::Error::other("writer poisoned"))?;
    write_message(&mut *w, event).map_err(|e| io::Error::other(e.to_string()))
}

pub(crate) fn serve(port: &Path) -> io::Result<()> {
    // A virtio port can be opened once: one read-write handle, cloned for writing.
    let reader = OpenOptions::new().read(true).write(true).open(port)?;
    let writer: Writer = Arc::new(Mutex::new(reader.try_clone()?));
    let stdin_sink: StdinSink = Arc::new(Mutex::new(None));
    let (requests, incoming) = std::sync::mpsc::channel::<Vec<u8>>();
    let sink = stdin_sink.clone();
    std::thread::spawn(move || read_frames(reader, requests, sink));
    // 9p tags mounted so far: a revived controller starts with none, and a session's
    // later jobs reuse them.
    let mut mounted = std::collections::BTreeSet::new();
    // The guest's resident job server, opened at setup (it lives on in the snapshot).
    let mut server: Option<ssh::Server> = None;
    loop {
        let Ok(payload) = incoming.recv() else {
            return Err(io::Error::other("the control port reader stopped"));
        };
        let answer = match serde_json::from_slice::<Request>(&payload) {
            Ok(Request::Ping) => Event::Pong {
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            Ok(Request::Setup(setup)) => match ssh::setup(&setup) {
                Ok(s) => {
                    server = s.server;
                    Event::SetupDone {
                        host_key: s.host_key,
                    }
                }
                Err(e) => Event::Error {
                    message: format!("setup: {e}"),
                },
            },
            Ok(Request::Run(run)) => {
                match job::run(&run, &writer, &stdin_sink, &mut mounted, &mut server) {
                    Ok(code) => Event::Exit { code },
                    Err(e) => Event::Error {
                        message: e.to_string(),
                    },
                }
            }
            Ok(Request::Poweroff) => {
                let _ = run_cmd("/bin/sync", &[]);
                // SAFETY: plain syscall; the host asked for the controller to go away.
                unsafe {
                    libc::reboot(libc::RB_POWER_OFF);
                }
                return Ok(());
            }
            Err(e) => Event::Error {
                message: format!("bad request: {e}"),
            },
        };
        send(&writer, &answer)?;
    }
}

fn sigio_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        set
    }
}

pub(crate) fn block_sigio() {
    let set = sigio_set();
    // SAFETY: changes this thread's signal mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Asks the kernel for SIGIO when the host end of `port` opens or closes. Until a host
/// connects, reads return EOF at once: polling them cost a TCG controller a fifth of a CPU,
/// idle, which parallel revives felt.
fn notify_host_changes(port: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = port.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        if libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits for the host to connect (a SIGIO from the port), at most a quarter second so a
/// lost signal only costs a little latency.
fn wait_for_host() {
    let set = sigio_set();
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 250_000_000,
    };
    // SAFETY: SIGIO is blocked in every thread; this takes a pending one or times out.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
}

fn read_frames(mut reader: File, requests: std::sync::mpsc::Sender<Vec<u8>>, stdin: StdinSink) {
    let notified = notify_host_changes(&reader);
    if let Err(e) = &notified {
        console(&format!(
            "guestbox-agent: no SIGIO from the control port ({e}); polling it"
        ));
    }
    loop {
        match read_frame(&mut reader) {
            Ok((FrameKind::Message, payload)) => {
                if requests.send(payload).is_err() {
                    return;
                }
            }
            Ok((FrameKind::Stdin, data)) => {
                let Ok(mut sink) = stdin.lock() else { return };
                if let Some(input) = sink.as_mut() {
                    let sent = if input.framed {
                        proto::write_frame(&mut input.file, FrameKind::Stdin, &data).is_ok()
                    } else {
                        data.is_empty() || input.file.write_all(&data).is_ok()
                    };
                    // At the end, or when the command closed its stdin: nowhere to go.
                    if data.is_empty() || !sent {
                        *sink = None;
                    }
                }
            }
            Ok((FrameKind::Resize, data)) => {
                let Ok(sink) = stdin.lock() else { return };
                if let (Some(input), Some((rows, cols))) =
                    (sink.as_ref(), proto::parse_resize(&data))
                {
                    if let Some(master) = input.tty_master {
                        if let Err(e) = crate::job::resize(&input.file, rows, cols, master) {
                            console(&format!("guestbox-agent: resizing the terminal: {e}"));
                        }
                    }
                }
            }
            Ok(_) => {}
            // The host end is not connected (yet, or any more): wait for the next host.
            Err(proto::ProtoError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                if notified.is_ok() {
                    wait_for_host();
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Err(e) => {
                console(&format!("guestbox-agent: control channel: {e}"));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
