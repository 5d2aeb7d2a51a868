//! A passenger client of OpenSSH's ControlMaster ("mux") protocol, as specified in
//! OpenSSH's PROTOCOL.mux.
//!
//! Spawning `ssh` for every job would re-run the OpenSSH client (and its crypto libraries'
//! loading) in the controller each time; under emulation that alone costs hundreds of
//! milliseconds. The master connection made at bootstrap already speaks to the guest, so a
//! job only needs a new session on it: one message and three file descriptors.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

const MUX_MSG_HELLO: u32 = 0x0000_0001;
const MUX_C_NEW_SESSION: u32 = 0x1000_0002;
const MUX_C_ALIVE_CHECK: u32 = 0x1000_0004;
const MUX_S_ALIVE: u32 = 0x8000_0005;
const MUX_S_PERMISSION_DENIED: u32 = 0x8000_0002;
const MUX_S_FAILURE: u32 = 0x8000_0003;
const MUX_S_EXIT_MESSAGE: u32 = 0x8000_0004;
const MUX_S_SESSION_OPENED: u32 = 0x8000_0006;
const MUX_S_TTY_ALLOC_FAIL: u32 = 0x8000_0008;
const MUX_VERSION: u32 = 4;
const NO_ESCAPE: u32 = 0xffff_ffff;

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

fn put_string(buf: &mut Vec<u8>, s: &[u8]) {
    put_u32(buf, s.len() as u32);
    buf.extend_from_slice(s);
}

fn send_packet(sock: &mut UnixStream, body: &[u8]) -> io::Result<()> {
    let mut packet = Vec::with_capacity(body.len() + 4);
    put_string(&mut packet, body);
    sock.write_all(&packet)
}

fn read_packet(sock: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 256 * 1024 {
        return Err(io::Error::other(format!("mux packet of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body)?;
    Ok(body)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> io::Result<u32> {
        if self.0.len() < 4 {
            return Err(io::Error::other("short mux packet"));
        }
        let (head, rest) = self.0.split_at(4);
        self.0 = rest;
        Ok(u32::from_be_bytes([head[0], head[1], head[2], head[3]]))
    }
    fn string(&mut self) -> io::Result<String> {
        let len = self.u32()? as usize;
        if self.0.len() < len {
            return Err(io::Error::other("short mux string"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(String::from_utf8_lossy(head).into_owned())
    }
}

/// Sends one fd with one byte of data, as OpenSSH's mm_send_fd does.
fn send_fd(sock: &UnixStream, fd: RawFd) -> io::Result<()> {
    match sys::fdpass::send_with_fd(sock.as_raw_fd(), &[0], fd)? {
        1 => Ok(()),
        n => Err(io::Error::other(format!(
            "sent {n} bytes with a descriptor instead of 1"
        ))),
    }
}

/// A session opened on the master: wait for its exit status with [`Session::wait`].
pub struct Session {
    sock: UnixStream,
}

/// Connects to the master and exchanges hellos.
fn connect(control: &Path) -> io::Result<UnixStream> {
    let mut sock = UnixStream::connect(control)?;
    let mut hello = Vec::new();
    put_u32(&mut hello, MUX_MSG_HELLO);
    put_u32(&mut hello, MUX_VERSION);
    send_packet(&mut sock, &hello)?;
    let reply = read_packet(&mut sock)?;
    let mut r = Reader(&reply);
    if r.u32()? != MUX_MSG_HELLO {
        return Err(io::Error::other("the ssh master did not say hello"));
    }
    let version = r.u32()?;
    if version != MUX_VERSION {
        return Err(io::Error::other(format!(
            "unsupported ssh mux protocol version {version}"
        )));
    }
    Ok(sock)
}

/// The master's process id. A mux client relays SIGWINCH to it (as `ssh -S` does): the
/// master then re-reads the window size of every session's terminal.
pub fn master_pid(control: &Path) -> io::Result<i32> {
    let mut sock = connect(control)?;
    let mut m = Vec::new();
    put_u32(&mut m, MUX_C_ALIVE_CHECK);
    put_u32(&mut m, 1);
    send_packet(&mut sock, &m)?;
    let reply = read_packet(&mut sock)?;
    let mut r = Reader(&reply);
    match r.u32()? {
        MUX_S_ALIVE => {
            let _request_id = r.u32()?;
            i32::try_from(r.u32()?).map_err(io::Error::other)
        }
        other => Err(io::Error::other(format!(
            "unexpected ssh mux reply {other:#x} to an alive check"
        ))),
    }
}

/// Opens a session running `command` in the guest, with stdin/stdout/stderr connected to
/// the given descriptors (the master writes the command's output into them).
pub fn open(
    control: &Path,
    command: &str,
    tty: Option<&str>,
    stdin: &OwnedFd,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
) -> io::Result<Session> {
    let mut sock = connect(control)?;
    let request_id = 1;
    let mut m = Vec::new();
    put_u32(&mut m, MUX_C_NEW_SESSION);
    put_u32(&mut m, request_id);
    put_string(&mut m, b""); // reserved
    put_u32(&mut m, u32::from(tty.is_some())); // want tty
    put_u32(&mut m, 0); // X11 forwarding
    put_u32(&mut m, 0); // agent forwarding
    put_u32(&mut m, 0); // subsystem
    put_u32(&mut m, NO_ESCAPE);
    put_string(&mut m, tty.unwrap_or_default().as_bytes()); // terminal type
    put_string(&mut m, command.as_bytes());
    send_packet(&mut sock, &m)?;
    for fd in [stdin, stdout, stderr] {
        send_fd(&sock, fd.as_raw_fd())?;
    }
    let reply = read_packet(&mut sock)?;
    let mut r = Reader(&reply);
    match r.u32()? {
        MUX_S_SESSION_OPENED => {
            let _client_request_id = r.u32()?;
            Ok(Session { sock })
        }
        MUX_S_PERMISSION_DENIED | MUX_S_FAILURE => {
            let _ = r.u32()?;
            Err(io::Error::other(format!(
                "the ssh master refused the session: {}",
                r.string()?
            )))
        }
        other => Err(io::Error::other(format!(
            "unexpected ssh mux reply {other:#x}"
        ))),
    }
}

impl Session {
    /// The command's exit status, once the command ends. The master may still hold output
    /// for the session's descriptors then: keep the session (its control connection) until
    /// they reach EOF, for closing it makes the master drop whatever it has not written.
    pub fn wait(&mut self) -> io::Result<i32> {
        loop {
            let packet = match read_packet(&mut self.sock) {
                Ok(p) => p,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(io::Error::other(
                        "the connection to the guest was lost before the command ended",
                    ))
                }
                Err(e) => return Err(e),
            };
            let mut r = Reader(&packet);
            match r.u32()? {
                MUX_S_EXIT_MESSAGE => {
                    let _session = r.u32()?;
                    return Ok(r.u32()? as i32);
                }
                MUX_S_TTY_ALLOC_FAIL => continue,
                other => {
                    return Err(io::Error::other(format!(
                        "unexpected ssh mux message {other:#x}"
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_numbers_are_ssh_wire_format() {
        let mut b = Vec::new();
        put_u32(&mut b, MUX_C_NEW_SESSION);
        put_string(&mut b, b"ls -l");
        assert_eq!(&b[..4], &[0x10, 0, 0, 2]);
        assert_eq!(&b[4..8], &[0, 0, 0, 5]);
        let mut r = Reader(&b);
        assert_eq!(r.u32().unwrap(), MUX_C_NEW_SESSION);
        assert_eq!(r.string().unwrap(), "ls -l");
        assert!(r.u32().is_err());
    }
}
