//! One run: mount its 9p volumes under the share root (the guest sees them through the SMB
//! share it mounted at bootstrap), open a session on the SSH master, pump its output to the
//! host, and return its exit status.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use link::proto::{write_frame, Event, FrameKind, Run};
use link::shares;

use crate::serve::{send, StdinSink, Writer};
use crate::{mux, ssh};

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
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
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

/// Runs one job: its volumes, then its command in the guest; returns the exit status.
pub(crate) fn run(job: &Run, writer: &Writer, stdin_sink: &StdinSink) -> io::Result<i32> {
    if let Some(t) = job.time {
        set_clock(t)?;
    }
    for m in &job.mounts {
        let target = format!("{}/{}", shares::SHARE_ROOT, m.tag);
        mount_9p(&m.tag, &target, m.readonly)
            .map_err(|e| io::Error::other(format!("mounting {}: {e}", m.tag)))?;
    }
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let stdin = if job.stdin {
        let (read, write) = pipe()?;
        *stdin_sink
            .lock()
            .map_err(|_| io::Error::other("stdin poisoned"))? = Some(File::from(write));
        read
    } else {
        OwnedFd::from(File::open("/dev/null")?)
    };
    let mut session = mux::open(
        Path::new(ssh::MASTER),
        &job.script,
        job.tty.as_ref().map(|t| t.term.as_str()),
        &stdin,
        &stdout_write,
        &stderr_write,
    )?;
    // The master holds its own copies now; ours must go or the pipes never reach EOF.
    drop((stdin, stdout_write, stderr_write));
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
    let code = code?;
    // As in the original: the exit code also lands in the exchange directory.
    if job.mounts.iter().any(|m| m.tag == shares::XCHG_TAG) {
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
