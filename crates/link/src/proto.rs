//! The protocol between guestbox on the host and its agent in the controller VM.
//!
//! Both ends talk over one virtio-serial port (a unix socket on the host) in frames:
//! one kind byte, a big-endian u32 length, the payload. Control messages are JSON; a job's
//! stdout and stderr travel as raw bytes in their own frame kinds, so they stay unmixed
//! and binary-safe without any encoding overhead.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Name of the virtio-serial port the agent serves.
pub const CONTROL_PORT: &str = "guestbox.ctl";
/// Largest frame either side accepts; stdout is sent in chunks far below it.
pub const MAX_FRAME: u32 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Message = 1,
    Stdout = 2,
    Stderr = 3,
    /// Host → agent: the job's standard input; an empty payload closes it.
    Stdin = 4,
    /// Host → agent: the host terminal's new size, rows then columns (two big-endian
    /// u16), for a job with a terminal.
    Resize = 5,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Message),
            2 => Some(Self::Stdout),
            3 => Some(Self::Stderr),
            4 => Some(Self::Stdin),
            5 => Some(Self::Resize),
            _ => None,
        }
    }
}

/// Host → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Ping,
    /// Once, at bootstrap: credentials, then a lasting SSH connection to the guest, then
    /// `guest_script` run in the guest (it mounts the SMB share root there).
    Setup(Setup),
    /// Per job: mount the run's volumes, then run `script` in the guest.
    Run(Run),
    /// Sync and power the controller off.
    Poweroff,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// OpenSSH private key the controller logs in to the guest with.
    pub client_key: String,
    /// The guest's public host key (`ssh-ed25519 AAAA...`): nothing else is trusted. Empty
    /// when nobody knows it yet (a Windows guest made its own at install): then the first
    /// key the guest shows on the private link is trusted, and returned in
    /// [`Event::SetupDone`] to be recorded.
    pub guest_host_key: String,
    pub guest_user: String,
    pub smb_password: String,
    /// Fed to [`Setup::guest_command`] in the guest on stdin, so no secret appears in any
    /// argument list.
    pub guest_script: String,
    /// The remote command that runs the script from its stdin (`sh -s`; `bash -s` for
    /// Cygwin).
    #[serde(default = "default_guest_command")]
    pub guest_command: String,
    /// Then open the guest's resident job server (a Linux guest's exec helper); without it
    /// every job opens an SSH session of its own.
    #[serde(default = "default_true")]
    pub job_server: bool,
    /// How long the guest's SSH port may take to open (a Windows guest boots for minutes).
    #[serde(default = "default_ssh_wait")]
    pub ssh_wait_secs: u64,
}

fn default_guest_command() -> String {
    "sh -s".into()
}

fn default_true() -> bool {
    true
}

fn default_ssh_wait() -> u64 {
    120
}

// Secrets stay out of logs and panics.
impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("guest_user", &self.guest_user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Host time (seconds since the epoch) to set in both VMs; None keeps the snapshot's.
    pub time: Option<i64>,
    pub mounts: Vec<Mount>,
    /// The remote command line given to ssh; the guest's shell runs it.
    pub script: String,
    /// Forward the host's stdin (Stdin frames) to the command; otherwise it reads /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Give the command a terminal in the guest (`guestbox shell`).
    #[serde(default)]
    pub tty: Option<Tty>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tty {
    /// `$TERM` for the guest.
    pub term: String,
    /// The host terminal's size when the job starts (0: unknown).
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
}

/// The payload of a [`FrameKind::Resize`] frame.
pub fn resize_payload(rows: u16, cols: u16) -> [u8; 4] {
    let (r, c) = (rows.to_be_bytes(), cols.to_be_bytes());
    [r[0], r[1], c[0], c[1]]
}

/// `(rows, cols)` of a [`FrameKind::Resize`] frame.
pub fn parse_resize(payload: &[u8]) -> Option<(u16, u16)> {
    match payload {
        [r0, r1, c0, c1] => Some((
            u16::from_be_bytes([*r0, *r1]),
            u16::from_be_bytes([*c0, *c1]),
        )),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub tag: String,
    pub readonly: bool,
}

/// Agent → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Pong {
        version: String,
    },
    /// Setup finished: the SSH connection is up and the guest has the share mounted.
    /// `host_key` is the guest's host key the connection trusted (`ssh-ed25519 AAAA...`).
    SetupDone {
        #[serde(default)]
        host_key: String,
    },
    /// Volumes are mounted and the command was started in the guest.
    Started,
    /// The command ended. `code` is its exit status, or 128 + the signal that killed it.
    Exit {
        code: i32,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("control channel: {0}")]
    Io(#[from] io::Error),
    #[error("control channel: unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("control channel: frame of {0} bytes exceeds the limit")]
    TooLarge(u32),
    #[error("control channel: bad message: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn write_frame(w: &mut impl Write, kind: FrameKind, payload: &[u8]) -> Result<(), ProtoError> {
    let len = u32::try_from(payload.len()).map_err(|_| ProtoError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    let mut header = [0u8; 5];
    header[0] = kind as u8;
    header[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&header)?;
    w.write_all(payload)?;
    w.flush()?;
    Ok(())
}

pub fn write_message(w: &mut impl Write, message: &impl Serialize) -> Result<(), ProtoError> {
    write_frame(w, FrameKind::Message, &serde_json::to_vec(message)?)
}

/// Splits a frame header into its kind and payload length.
pub fn parse_header(header: [u8; 5]) -> Result<(FrameKind, u32), ProtoError> {
    let kind = FrameKind::from_byte(header[0]).ok_or(ProtoError::UnknownKind(header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    Ok((kind, len))
}

pub fn read_frame(r: &mut impl Read) -> Result<(FrameKind, Vec<u8>), ProtoError> {
    let mut header = [0u8; 5];
    r.read_exact(&mut header)?;
    let (kind, len) = parse_header(header)?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok((kind, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_message(&mut buf, &Request::Ping).unwrap();
        write_frame(&mut buf, FrameKind::Stderr, b"\x00\xffbinary").unwrap();
        let mut r = &buf[..];
        let (kind, payload) = read_frame(&mut r).unwrap();
        assert_eq!(kind, FrameKind::Message);
        assert_eq!(
            serde_json::from_slice::<Request>(&payload).unwrap(),
            Request::Ping
        );
        let (kind, payload) = read_frame(&mut r).unwrap();
        assert_eq!(kind, FrameKind::Stderr);
        assert_eq!(payload, b"\x00\xffbinary");
        assert!(matches!(read_frame(&mut r), Err(ProtoError::Io(_))));
    }

    #[test]
    fn rejects_unknown_kinds_and_huge_frames() {
        assert!(matches!(
            parse_header([9, 0, 0, 0, 1]),
            Err(ProtoError::UnknownKind(9))
        ));
        assert!(matches!(
            parse_header([1, 0xff, 0, 0, 0]),
            Err(ProtoError::TooLarge(_))
        ));
    }
}
