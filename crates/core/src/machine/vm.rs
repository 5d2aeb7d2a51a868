//! Starting a VM from its spec and waiting until it says it is ready.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::spec::{Descriptor, DriveInterface, OpenedDrive};
use super::VmSpec;
use crate::host::process::{tail_of_file, Supervised};
use crate::{Error, IoContext, Result};

/// A running QEMU machine. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Vm {
    pub spec: VmSpec,
    pub process: Supervised,
    qmp: Option<qmp::Qmp>,
}

const CONSOLE_TAIL_LINES: usize = 25;

impl Vm {
    /// Starts QEMU for `spec`; its stderr goes to `<console_log>.stderr`. Its writable
    /// disks are opened here and handed over as descriptors ([`OpenedDrive`]).
    pub fn start(qemu: &Path, spec: VmSpec) -> Result<Self> {
        let opened = open_drives(&spec)?;
        let argv = spec.argv_opened(&opened)?;
        tracing::debug!(vm = %spec.name, ?argv, "qemu command line");
        let stderr = stderr_path(&spec.console_log);
        let mut inherit = spec.inherited_fds();
        for o in &opened {
            inherit.extend([o.read_write.fd(), o.read_only.fd()]);
        }
        let changes_user = spec.confinement.run_as.is_some() && !spec.confinement.off;
        let process = Supervised::spawn_inheriting(
            &spec.name,
            qemu,
            &argv,
            &stderr,
            &inherit,
            None,
            changes_user,
        )?;
        // QEMU has its copies now.
        drop(opened);
        Ok(Self {
            spec,
            process,
            qmp: None,
        })
    }

    /// Waits until the console prints `marker`. If QEMU exits first or time runs out, the
    /// error carries the tail of the console and of QEMU's stderr.
    pub async fn wait_for_console(&mut self, marker: &str, timeout: Duration) -> Result<()> {
        let log = self.spec.console_log.clone();
        let deadline = Instant::now() + timeout;
        let mut seen = 0usize;
        let mut carry = String::new();
        loop {
            if let Ok(bytes) = std::fs::read(&log) {
                if bytes.len() > seen {
                    carry.push_str(&String::from_utf8_lossy(&bytes[seen..]));
                    seen = bytes.len();
                    if carry.contains(marker) {
                        return Ok(());
                    }
                    // Keep only enough to match a marker split across two reads.
                    if carry.len() > marker.len() * 2 {
                        let mut cut = carry.len() - marker.len();
                        while !carry.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        carry.drain(..cut);
                    }
                }
            }
            if let Some(status) = self.process.try_wait()? {
                return Err(Error::VmExited {
                    vm: self.spec.name.clone(),
                    status: status.to_string(),
                    stderr: self.process.stderr_tail(5).trim().to_string(),
                    log: log.clone(),
                    tail: tail_of_file(&log, CONSOLE_TAIL_LINES),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::BootTimeout {
                    vm: self.spec.name.clone(),
                    seconds: timeout.as_secs(),
                    log: log.clone(),
                    tail: tail_of_file(&log, CONSOLE_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The QMP connection, opened on first use.
    pub async fn qmp(&mut self) -> Result<&qmp::Qmp> {
        let client = match self.qmp.take() {
            Some(client) => client,
            None => qmp::Qmp::connect(&self.spec.qmp_socket, Duration::from_secs(10))
                .await
                .map_err(|source| self.qmp_error(source))?,
        };
        Ok(self.qmp.insert(client))
    }

    /// A QMP failure of this VM, naming its socket by its real path (a connect timeout
    /// names the path it tried, the short alias: that is replaced too).
    pub fn qmp_error(&self, source: qmp::QmpError) -> Error {
        let socket = self.real_path(&self.spec.qmp_socket);
        let source = match source {
            qmp::QmpError::Timeout { command } => qmp::QmpError::Timeout {
                command: command.replace(
                    &*self.spec.qmp_socket.to_string_lossy(),
                    &socket.to_string_lossy(),
                ),
            },
            other => other,
        };
        Error::Qmp {
            vm: self.spec.name.clone(),
            socket,
            source,
        }
    }

    /// A path of this VM's spec as messages must show it (see [`crate::host::ShortDir`]).
    pub fn real_path(&self, path: &Path) -> PathBuf {
        match &self.spec.inherit {
            Some(short) => short.real_path(path),
            None => path.to_path_buf(),
        }
    }

    /// Asks QEMU to quit and waits for it; kills it if it does not go within `grace`.
    pub async fn shutdown(mut self, grace: Duration) -> Result<()> {
        let asked = match self.qmp().await {
            Ok(q) => q.quit().await.is_ok(),
            Err(_) => false,
        };
        if asked {
            if let Ok(status) = tokio::time::timeout(grace, self.process.wait()).await {
                let status = status?;
                if !status.success() {
                    return Err(Error::Command {
                        what: format!("QEMU ({})", self.spec.name),
                        status: status.to_string(),
                        detail: self.process.stderr_tail(5),
                    });
                }
                return Ok(());
            }
        }
        self.process.kill().await;
        Ok(())
    }

    /// True if QEMU reported a write that failed because the host's disk is full.
    pub fn host_disk_was_full(&self) -> bool {
        self.qmp.as_ref().is_some_and(|q| {
            q.recent_events().iter().any(|e| {
                // `nospace` is only sent with werror=enospc; with werror=report the
                // reason (QEMU's strerror, not localised) says it.
                e.name == "BLOCK_IO_ERROR"
                    && (e.data["nospace"] == true
                        || e.data["reason"]
                            .as_str()
                            .is_some_and(|r| r.contains("No space left")))
            })
        })
    }

    /// The console output so far.
    pub fn console(&self) -> Result<String> {
        let bytes = std::fs::read(&self.spec.console_log)
            .ctx(|| format!("reading {}", self.spec.console_log.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The writable disks of `spec` (not CD-ROMs, floppies or read-only drives), each opened
/// read-write and read-only.
fn open_drives(spec: &VmSpec) -> Result<Vec<OpenedDrive>> {
    let mut out = Vec::new();
    for (i, d) in spec.drives.iter().enumerate() {
        if d.readonly || matches!(d.interface, DriveInterface::CdRom | DriveInterface::Floppy) {
            continue;
        }
        let open = |write: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(&d.path)
                .map(|f| Descriptor::new(f.into()))
                .ctx(|| format!("opening {}", d.path.display()))
        };
        out.push(OpenedDrive {
            drive: i,
            read_write: open(true)?,
            read_only: open(false)?,
        });
    }
    Ok(out)
}

fn stderr_path(console_log: &Path) -> PathBuf {
    let mut p = console_log.as_os_str().to_owned();
    p.push(".stderr");
    PathBuf::from(p)
}
