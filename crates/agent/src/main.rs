//! guestbox-agent: the controller VM's only service (tini is PID 1 and reaps for it).
//!
//! - [`init`]: at start, the pseudo filesystems, the private link, the share root.
//! - [`smb`]: smbd serving the share root to the guest, and its one user.
//! - [`ssh`]: the lasting SSH connection to the guest (made once, at bootstrap) and
//!   [`mux`], the client that opens a session on it per job.
//! - [`serve`]: the control port to the host: frames in, requests out, SIGIO waits.
//! - [`job`]: one run: its 9p volumes, the command in the guest, its output back.

mod init;
mod job;
mod mux;
mod serve;
mod smb;
mod ssh;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn main() {
    // Before any thread exists, so every thread inherits it: SIGIO (which would terminate
    // us) only ever waits to be taken by the control port reader (children get a clean mask).
    serve::block_sigio();
    if let Err(e) = init::start().and_then(|port| serve::serve(&port)) {
        console(&format!("guestbox-agent: {e}"));
        // Keep PID 1 (tini) from panicking the kernel: the host sees the message and times out.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Writes a line to the VM's console (the host keeps it as the console log).
pub(crate) fn console(line: &str) {
    if let Ok(mut c) = OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "{line}");
    }
}

/// Runs a program to completion; its stderr becomes the error.
pub(crate) fn run_cmd(program: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Writes a file only its owner can read.
pub(crate) fn write_secret(path: &str, content: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}
