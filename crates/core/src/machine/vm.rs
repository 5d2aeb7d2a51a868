//! Starting a VM from its spec and waiting until it says it is ready.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::spec::{Descriptor, DriveInterface, DriveSlot, OpenedDrive};
use super::VmSpec;
use crate::host::process::{tail_of_file, Identity, Supervised};
use crate::{Error, IoContext, Result};

/// A running QEMU machine. Dropping it kills QEMU (and its swtpm).
#[derive(Debug)]
pub struct Vm {
    pub spec: VmSpec,
    pub process: Supervised,
    qmp: Option<qmp::Qmp>,
    /// The swtpm serving the VM's TPM, if it has one (dropped after QEMU: declared later).
    tpm: Option<Supervised>,
}

const CONSOLE_TAIL_LINES: usize = 25;

impl Vm {
    /// Starts QEMU for `spec` (first its swtpm, if it has a TPM); QEMU's stderr goes to
    /// `<console_log>.stderr`. Its writable disks and UEFI variable store are opened here
    /// and handed over as descriptors ([`OpenedDrive`]).
    pub async fn start(qemu: &Path, spec: VmSpec) -> Result<Self> {
        let opened = open_drives(&spec)?;
        // A namespaced QEMU gets every path as a descriptor (its spec for the command
        // line only: guestbox keeps naming the files by their paths).
        let namespaced = match (&spec.confinement.namespace, spec.confinement.off) {
            (Some(sub), false) => Some(super::namespace::prepare(&spec, *sub)?),
            _ => None,
        };
        let argv = namespaced
            .as_ref()
            .map_or(&spec, |n| &n.spec)
            .argv_opened(&opened)?;
        tracing::debug!(vm = %spec.name, ?argv, "qemu command line");
        let stderr = stderr_path(&spec.console_log);
        let stderr = match &spec.cwd {
            Some(dir) if stderr.is_relative() => dir.join(stderr),
            _ => stderr,
        };
        let mut inherit = spec.inherited_fds();
        for o in &opened {
            inherit.extend([o.read_write.fd(), o.read_only.fd()]);
        }
        let identity = match &namespaced {
            Some(n) => {
                inherit.extend(n.inherited_fds());
                n.identity()
            }
            None if spec.confinement.run_as.is_some() && !spec.confinement.off => {
                Identity::ChangesItself
            }
            None => Identity::Same,
        };
        let tpm = match &spec.platform.tpm {
            Some(t) => Some(super::tpm::start(t, spec.cwd.as_deref(), &spec.confinement).await?),
            None => None,
        };
        let process = Supervised::spawn_inheriting(
            &spec.name,
            qemu,
            &argv,
            &stderr,
            &inherit,
            spec.cwd.as_deref(),
            identity,
        )?;
        // QEMU has its copies now.
        drop((opened, namespaced));
        Ok(Self {
            spec,
            process,
            qmp: None,
            tpm,
        })
    }

    /// A file of the spec by a path this process can open (relative ones are relative to
    /// the spec's `cwd`).
    pub fn local_path(&self, path: &Path) -> PathBuf {
        match &self.spec.cwd {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// Saves the display to `path` (a PPM image), as QMP's `screendump` does: where a
    /// firmware-booted guest stopped when it says nothing on its serial port.
    /// A QEMU that has changed user writes the image as that user, and one shut in an
    /// empty root sees only that: it dumps into a directory of its own (in its root, or
    /// a fresh temporary one), which is copied to `path` and removed.
    pub async fn screendump(&mut self, path: &Path) -> Result<()> {
        let file = std::path::absolute(path).ctx(|| format!("resolving {}", path.display()))?;
        let run_as = match &self.spec.confinement {
            c if c.off => None,
            c => c.run_as.clone(),
        };
        let Some(run_as) = run_as else {
            return self.screendump_as_qemu(&file).await;
        };
        let name = file
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("screenshot.ppm"));
        let (dir, _temp, seen_by_qemu) = match &run_as.chroot {
            Some(root) => {
                let dir = root.join(".screendump");
                std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
                (dir, None, PathBuf::from("/.screendump").join(&name))
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("guestbox-screendump")
                    .tempdir()
                    .ctx(|| "creating a directory for a screenshot".to_string())?;
                let dir = t.path().to_path_buf();
                let seen = dir.join(&name);
                (dir, Some(t), seen)
            }
        };
        let result = async {
            crate::host::users::chown(&dir, run_as.ids)?;
            self.screendump_as_qemu(&seen_by_qemu).await?;
            let dumped = dir.join(&name);
            if dumped.is_file() {
                std::fs::copy(&dumped, &file)
                    .ctx(|| format!("copying {} to {}", dumped.display(), file.display()))?;
            }
            Ok(())
        }
        .await;
        if run_as.chroot.is_some() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// QMP's `screendump` to `file` as QEMU sees its files.
    async fn screendump_as_qemu(&mut self, file: &Path) -> Result<()> {
        let q = self.qmp().await?;
        let r = q
            .execute(
                "screendump",
                serde_json::json!({ "filename": file.to_string_lossy() }),
            )
            .await;
        r.map(|_| ()).map_err(|e| self.qmp_error(e))
    }

    /// Once QEMU has ended: waits (at most `grace`) for its swtpm, which writes the TPM's
    /// state and exits when QEMU's connection closes; kills it after that.
    pub async fn finish_tpm(&mut self, grace: Duration) {
        if let Some(mut t) = self.tpm.take() {
            if tokio::time::timeout(grace, t.wait()).await.is_err() {
                t.kill().await;
            }
        }
    }

    /// Kills QEMU and its swtpm.
    pub async fn kill(&mut self) {
        self.process.kill().await;
        if let Some(t) = &mut self.tpm {
            t.kill().await;
        }
    }

    /// Waits until the console prints `marker`. If QEMU exits first or time runs out, the
    /// error carries the tail of the console and of QEMU's stderr.
    pub async fn wait_for_console(&mut self, marker: &str, timeout: Duration) -> Result<()> {
        let log = self.local_path(&self.spec.console_log);
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
                // swtpm ends with QEMU's connection and writes its state first: a frozen
                // base must hold all of it.
                self.finish_tpm(grace).await;
                return Ok(());
            }
        }
        self.kill().await;
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
        let log = self.local_path(&self.spec.console_log);
        let bytes = std::fs::read(&log).ctx(|| format!("reading {}", log.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The writable disks of `spec` (not CD-ROMs, floppies or read-only drives), each opened
/// read-write and read-only.
/// The UEFI variable store too: QEMU reopens it on an incoming resume like a disk.
/// Relative paths are relative to the spec's `cwd`.
fn open_drives(spec: &VmSpec) -> Result<Vec<OpenedDrive>> {
    let open_pair = |drive: DriveSlot, path: &Path| -> Result<OpenedDrive> {
        let path = match &spec.cwd {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        };
        let open = |write: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(&path)
                .map(|f| Descriptor::new(f.into()))
                .ctx(|| format!("opening {}", path.display()))
        };
        Ok(OpenedDrive {
            drive,
            read_write: open(true)?,
            read_only: open(false)?,
        })
    };
    let mut out = Vec::new();
    for (i, d) in spec.drives.iter().enumerate() {
        if d.readonly || matches!(d.interface, DriveInterface::CdRom | DriveInterface::Floppy) {
            continue;
        }
        out.push(open_pair(DriveSlot::Drive(i), &d.path)?);
    }
    if let Some(fw) = &spec.platform.firmware {
        out.push(open_pair(DriveSlot::UefiVars, &fw.vars)?);
    }
    Ok(out)
}

fn stderr_path(console_log: &Path) -> PathBuf {
    let mut p = console_log.as_os_str().to_owned();
    p.push(".stderr");
    PathBuf::from(p)
}
