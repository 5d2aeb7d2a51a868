//! Lines the VMs print on their serial consoles; the host reads the console log for them.

/// The guest's init prints this once sshd listens.
pub const GUEST_READY: &str = "GUESTBOX-READY guest";
/// The controller's agent prints this once smbd listens and the control port is served.
pub const CONTROLLER_READY: &str = "GUESTBOX-READY controller";
/// The initramfs prints this, then the reason, when it cannot hand over to the root disk.
pub const BOOT_FAILED: &str = "GUESTBOX-BOOT-FAILED";
/// Printed by the initramfs for the KVM probe (kernel parameter `guestbox.probe`) before
/// it powers off.
pub const PROBE_OK: &str = "GUESTBOX-PROBE-OK";
/// A Windows guest's bootstrap prints this on COM1 when Cygwin and sshd are set up.
pub const BOOTSTRAP_OK: &str = "GUESTBOX-BOOTSTRAP-OK";
/// A Windows guest's bootstrap prints this, then ": " and the failed step, on COM1.
pub const BOOTSTRAP_FAILED: &str = "GUESTBOX-BOOTSTRAP-FAILED";
