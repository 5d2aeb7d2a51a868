//! guestbox-exec: the Linux guest user's login shell.
//!
//! sshd runs a session's command as `SHELL -c COMMAND`. When COMMAND is a job
//! ([`link::job`]), this program does what a shell script did before — mix the host's
//! random bytes into the kernel's pool and reseed it, set the clock, bind the volumes,
//! enter the working directory, set the environment — with system calls instead of a shell
//! and `date`, `mkdir` and `mount` processes, each of which a revived guest pays for in
//! full under emulation. Then it runs the command as its child, so that a command killed by
//! a signal is reported as a shell reports it (128 + N, the signal named on stderr): SSH
//! would send `exit-signal`, which OpenSSH's multiplexing protocol cannot carry.
//!
//! With [`link::job::SERVE_COMMAND`] it becomes the resident job server ([`serve`]) the
//! controller starts at bootstrap. Anything that is not a job goes to `/bin/sh` unchanged,
//! as a login shell would take it.

mod job;
mod serve;

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let [_, flag, command] = args.as_slice() {
        if flag == "-c" && command == link::job::SERVE_COMMAND {
            std::process::exit(serve::serve());
        }
        if flag == "-c" {
            if let Some(job) = command.to_str().and_then(link::job::Job::parse) {
                let code = match job {
                    Ok(job) => job::run(&job),
                    Err(e) => {
                        eprintln!("guestbox: the job from the host does not parse: {e}");
                        link::job::SETUP_FAILED_EXIT
                    }
                };
                std::process::exit(code);
            }
        }
    }
    exec_sh(&args);
}

/// Becomes `/bin/sh` with the same arguments (`-sh` for a login shell, as sshd asks with
/// a leading `-` in argv[0]).
fn exec_sh(args: &[OsString]) -> ! {
    let login = args
        .first()
        .is_some_and(|a| a.as_bytes().first() == Some(&b'-'));
    let mut argv: Vec<CString> = vec![CString::from(if login { c"-sh" } else { c"sh" })];
    for a in args.iter().skip(1) {
        match CString::new(a.as_bytes()) {
            Ok(c) => argv.push(c),
            Err(_) => {
                eprintln!("guestbox-exec: an argument contains a NUL byte");
                std::process::exit(126);
            }
        }
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: a NUL-terminated path and a NULL-terminated array of C strings that outlive
    // the call; execv only returns on failure.
    unsafe { libc::execv(c"/bin/sh".as_ptr(), ptrs.as_ptr()) };
    eprintln!(
        "guestbox-exec: cannot run /bin/sh: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(126);
}
