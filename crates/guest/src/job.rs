//! Running one job: everything before the command with system calls, then the command as
//! a child whose end is reported as a shell reports it.

use std::ffi::CString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use link::job::{Job, SETUP_FAILED_EXIT};

/// `_IOW('R', 0x03, int[2])` and `_IO('R', 0x07)` from linux/random.h (not in libc).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Runs `job` as the session's shell; returns the exit status guestbox-exec ends with.
pub fn run(job: &Job) -> i32 {
    let mut cmd = match prepare(job) {
        Ok(cmd) => cmd,
        Err(message) => {
            eprintln!("guestbox: {message}");
            return SETUP_FAILED_EXIT;
        }
    };
    match cmd.status() {
        Ok(status) => ended(status, &mut io::stderr()),
        Err(e) => not_started(&job.argv, &e, &mut io::stderr()),
    }
}

/// The exit status for a command that could not be started, as a shell has it (127 not
/// found, 126 otherwise), its reason written to `err`.
pub fn not_started(argv: &[String], e: &io::Error, err: &mut dyn io::Write) -> i32 {
    let program = argv.first().map_or("", String::as_str);
    if e.kind() == io::ErrorKind::NotFound {
        let _ = writeln!(err, "guestbox: {program}: command not found");
        127
    } else {
        let _ = writeln!(err, "guestbox: {program}: cannot run: {e}");
        126
    }
}

/// The exit status for a command that ended: its own, or 128 + the signal that killed it,
/// named in `err` as shells and docker name it.
pub fn ended(status: ExitStatus, err: &mut dyn io::Write) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    match status.signal() {
        Some(signal) => {
            let _ = writeln!(
                err,
                "guestbox: the command was killed by {}{}",
                signal_name(signal),
                if status.core_dumped() {
                    " (core dumped)"
                } else {
                    ""
                }
            );
            128 + signal
        }
        None => SETUP_FAILED_EXIT,
    }
}

/// Everything before the command, in this order so that nothing the job's setup does sees
/// the snapshot's randomness either: randomness, clock, mounts (for the whole guest), then
/// the command with its working directory and environment.
pub fn prepare(job: &Job) -> Result<Command, String> {
    prepare_guest(job)?;
    let (program, args) = job.argv.split_first().ok_or("the job has no command")?;
    let mut cmd = Command::new(program);
    cmd.args(args).envs(job.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &job.workdir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot use {dir} as the working directory: {e}"))?;
        cmd.current_dir(dir);
    }
    Ok(cmd)
}

fn prepare_guest(job: &Job) -> Result<(), String> {
    if let Some(seed) = &job.seed {
        let bytes = hex(seed).ok_or("the host's random seed is not hex")?;
        reseed(&bytes).map_err(|e| format!("cannot reseed the kernel's random generator: {e}"))?;
    }
    if let Some(seconds) = job.time {
        let ts = libc::timespec {
            tv_sec: seconds as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: plain syscall with a valid timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(format!(
                "cannot set the clock: {}",
                io::Error::last_os_error()
            ));
        }
    }
    for m in &job.mounts {
        std::fs::create_dir_all(&m.target)
            .map_err(|e| format!("cannot make the mount point {}: {e}", m.target))?;
        bind(&m.source, &m.target, m.readonly)
            .map_err(|e| format!("cannot mount {} at {}: {e}", m.source, m.target))?;
    }
    Ok(())
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Mixes `bytes` into the input pool, credited (they come from the host's getrandom), then
/// reseeds the CRNG from it at once: the snapshot's generator state is behind us before
/// the command's first instruction.
fn reseed(bytes: &[u8]) -> io::Result<()> {
    #[repr(C)]
    struct PoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 64],
    }
    let mut info = PoolInfo {
        entropy_count: 0,
        buf_size: 0,
        buf: [0; 64],
    };
    let n = bytes.len().min(info.buf.len());
    info.buf[..n].copy_from_slice(&bytes[..n]);
    info.buf_size = n as libc::c_int;
    info.entropy_count = (n * 8) as libc::c_int;
    let random = std::fs::File::open("/dev/random")?;
    use std::os::fd::AsRawFd;
    // SAFETY: ioctls on an open descriptor with a struct laid out as rand_pool_info.
    unsafe {
        if libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, &info) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn bind(source: &str, target: &str, readonly: bool) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let (source, target) = (c(source)?, c(target)?);
    // SAFETY: valid C strings for the duration of each call.
    unsafe {
        if libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if readonly
            && libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `SIGSEGV` for 11, as shells and docker name them.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_signal_names() {
        assert_eq!(hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(hex("0"), None);
        assert_eq!(hex("zz"), None);
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(signal_name(64), "signal 64");
    }

    /// A command killed by a signal ends the helper with 128 + N, as a shell's `$?` has it.
    #[test]
    fn a_signal_death_becomes_128_plus_n() {
        let job = |argv: &[&str]| Job {
            time: None,
            seed: None,
            mounts: vec![],
            env: vec![("GUESTBOX_T".into(), "v".into())],
            workdir: None,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: false,
        };
        assert_eq!(run(&job(&["sh", "-c", "kill -SEGV $$"])), 139);
        assert_eq!(run(&job(&["sh", "-c", "kill -TERM $$"])), 143);
        assert_eq!(run(&job(&["sh", "-c", "exit 7"])), 7);
        assert_eq!(run(&job(&["sh", "-c", "test \"$GUESTBOX_T\" = v"])), 0);
        assert_eq!(run(&job(&["/no/such/program"])), 127);
    }
}
