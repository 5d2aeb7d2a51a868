//! One run: mount its 9p volumes under the share root (the guest sees them through the SMB
//! share it mounted at bootstrap), open a session on the SSH master, pump its output to the
//! host, and return its exit status.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use link::proto::{write_frame, Event, FrameKind, Run};
use link::shares;

use crate::serve::{send, Input, StdinSink, Writer};
use crate::{mux, ssh};

/// A new terminal of `rows` × `cols` with the kernel's default (sane) modes: (the side
/// guestbox writes the host's keys to, the side the SSH master reads).
fn terminal(rows: u16, cols: u16) -> io::Result<(File, OwnedFd)> {
    let (mut host_side, mut ours) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; a null name and termios mean "none" and
    // "the default modes"; the winsize is valid for the call.
    let rc = unsafe {
        libc::openpty(
            &mut host_side,
            &mut ours,
            std::ptr::null_mut(),
            std::ptr::null(),
            if rows > 0 && cols > 0 {
                &size
            } else {
                std::ptr::null()
            },
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    let (host_side, ours) =
        unsafe { (OwnedFd::from_raw_fd(host_side), OwnedFd::from_raw_fd(ours)) };
    for fd in [&host_side, &ours] {
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((File::from(host_side), ours))
}

/// No line discipline on this terminal any more: bytes pass as they are.
fn make_raw(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: termios is plain data that tcgetattr fills; the descriptor is ours.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd.as_raw_fd(), &mut t) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The host's terminal changed size: this terminal takes it, and the SSH master, told by
/// SIGWINCH as `ssh -S` tells it, passes it on to the guest.
pub(crate) fn resize(terminal: &File, rows: u16, cols: u16, master: i32) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: an ioctl and a kill with valid arguments.
    unsafe {
        if libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::kill(master, libc::SIGWINCH) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// mount(2) directly: a run is on the critical path, and a mount(8) process costs a fork
/// and an exec under emulation.
fn mount_9p(tag: &str, target: &str, readonly: bool) -> io::Result<()> {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let (source, target_c, fstype) = (c(tag)?, c(target)?, c("9p")?);
    let data = c("trans=virtio,version=9p2000.L,msize=1048576,cache=none,access=any")?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if readonly {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_clock(seconds: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: seconds as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall with a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs one job: its volumes (those not mounted yet), then its command in the guest;
/// returns the exit status.
pub(crate) fn run(
    job: &Run,
    writer: &Writer,
    stdin_sink: &StdinSink,
    mounted: &mut BTreeSet<String>,
    server: &mut Option<crate::ssh::Server>,
) -> io::Result<i32> {
    if let Some(t) = job.time {
        set_clock(t)?;
    }
    for m in &job.mounts {
        if mounted.contains(&m.tag) {
            continue;
        }
        let target = format!("{}/{}", shares::SHARE_ROOT, m.tag);
        mount_9p(&m.tag, &target, m.readonly)
            .map_err(|e| io::Error::other(format!("mounting {}: {e}", m.tag)))?;
        mounted.insert(m.tag.clone());
    }
    let code = match (
        server.as_mut(),
        &job.tty,
        job.script.strip_prefix(link::job::PREFIX),
    ) {
        (Some(s), None, Some(json)) => match served(s, json, job.stdin, writer, stdin_sink) {
            Ok(code) => code,
            // The server is gone (it never should be): this job and the next open sessions.
            Err(e) => {
                crate::console(&format!("guestbox-agent: the guest's job server: {e}"));
                *server = None;
                return Err(e);
            }
        },
        _ => in_session(job, writer, stdin_sink)?,
    };
    // As in the original: the exit code also lands in the exchange directory.
    if mounted.contains(shares::XCHG_TAG) {
        fs::write(
            format!(
                "{}/{}/{}",
                shares::SHARE_ROOT,
                shares::XCHG_TAG,
                shares::EXIT_CODE_FILE
            ),
            format!("{code}\n"),
        )?;
    }
    Ok(code)
}

/// A job through the guest's resident server: the job, then its stdin, out as frames; its
/// output and end back as frames (passed on to the host as they are, but the end).
fn served(
    server: &mut crate::ssh::Server,
    job_json: &str,
    stdin: bool,
    writer: &Writer,
    stdin_sink: &StdinSink,
) -> io::Result<i32> {
    let proto_err = |e: link::proto::ProtoError| io::Error::other(e.to_string());
    write_frame(
        &mut server.to_guest,
        FrameKind::Message,
        job_json.as_bytes(),
    )
    .map_err(proto_err)?;
    if stdin {
        *stdin_sink
            .lock()
            .map_err(|_| io::Error::other("stdin poisoned"))? = Some(Input {
            file: server.to_guest.try_clone()?,
            tty_master: None,
            framed: true,
        });
    }
    let result = loop {
        let (kind, payload) = match link::proto::read_frame(&mut server.from_guest) {
            Ok(frame) => frame,
            Err(e) => break Err(proto_err(e)),
        };
        match kind {
            FrameKind::Stdout | FrameKind::Stderr => {
                let mut w = writer
                    .lock()
                    .map_err(|_| io::Error::other("writer poisoned"))?;
                write_frame(&mut *w, kind, &payload).map_err(proto_err)?;
            }
            FrameKind::Message => match serde_json::from_slice::<Event>(&payload) {
                Ok(Event::Started) => send(writer, &Event::Started)?,
                Ok(Event::Exit { code }) => break Ok(code),
                Ok(_) | Err(_) => {}
            },
            FrameKind::Stdin | FrameKind::Resize => {}
        }
    };
    if let Ok(mut sink) = stdin_sink.lock() {
        *sink = None;
    }
    result
}

/// A job in a session of its own (a terminal job, or when there is no job server).
fn in_session(job: &Run, writer: &Writer, stdin_sink: &StdinSink) -> io::Result<i32> {
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let master = Path::new(ssh::MASTER);
    // A terminal job reads a terminal here, so that the SSH master takes sane modes from
    // it for the guest's terminal (from a pipe it would send all-zero modes: no output
    // processing, and every line a step to the right) and its size.
    let (stdin, input, terminal) = match (&job.tty, job.stdin) {
        (Some(tty), _) => {
            let (host_side, ours) = terminal(tty.rows, tty.cols)?;
            let pid = mux::master_pid(master)?;
            (
                ours.try_clone()?,
                Some(Input {
                    file: host_side,
                    tty_master: Some(pid),
                    framed: false,
                }),
                Some(ours),
            )
        }
        (None, true) => {
            let (read, write) = pipe()?;
            (
                read,
                Some(Input {
                    file: File::from(write),
                    tty_master: None,
                    framed: false,
                }),
                None,
            )
        }
        (None, false) => (OwnedFd::from(File::open("/dev/null")?), None, None),
    };
    *stdin_sink
        .lock()
        .map_err(|_| io::Error::other("stdin poisoned"))? = input;
    let mut session = mux::open(
        master,
        &job.script,
        job.tty.as_ref().map(|t| t.term.as_str()),
        &stdin,
        &stdout_write,
        &stderr_write,
    )?;
    // The master has read the terminal's modes: from now on it passes bytes through
    // untouched, in both directions (the guest's terminal does the processing).
    if let Some(t) = &terminal {
        make_raw(t)?;
    }
    // The master holds its own copies now; ours must go or the pipes never reach EOF.
    drop((stdin, stdout_write, stderr_write, terminal));
    send(writer, &Event::Started)?;
    let pumps: Vec<_> = [
        (stdout_read, FrameKind::Stdout),
        (stderr_read, FrameKind::Stderr),
    ]
    .into_iter()
    .map(|(fd, kind)| {
        let writer = writer.clone();
        let mut stream = File::from(fd);
        std::thread::spawn(move || -> io::Result<()> {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                let mut w = writer
                    .lock()
                    .map_err(|_| io::Error::other("writer poisoned"))?;
                write_frame(&mut *w, kind, &buf[..n])
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
        })
    })
    .collect();
    let code = session.wait();
    if let Ok(mut sink) = stdin_sink.lock() {
        *sink = None;
    }
    for pump in pumps {
        pump.join()
            .map_err(|_| io::Error::other("output pump panicked"))??;
    }
    // Only now: the master has written all output (see Session::wait).
    drop(session);
    code
}
