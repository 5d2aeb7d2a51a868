//! Can this host revive that base exactly? Checked before any QEMU starts, each refusal
//! naming what differs and what to do.

use std::fs;
use std::path::Path;

use crate::machine::qemu::QemuFacts;
use crate::machine::Accel;
use crate::store::{self, Base, Manifest, Store};
use crate::{Error, Result};

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// Refuses a base whose controller agent speaks another protocol than this guestbox.
pub fn check_agent(base: &Base) -> Result<()> {
    check_agent_of(&base.manifest)
}

/// [`check_agent`] on a manifest alone (a base not in the store yet: `guestbox pull`).
pub fn check_agent_of(m: &Manifest) -> Result<()> {
    if m.agent != store::agent_id() {
        return Err(Error::Usage(format!(
            "base {} was made by another build of guestbox ({}; its controller agent differs from this one's): bootstrap it again with this guestbox",
            short(&m.id),
            m.guestbox_version
        )));
    }
    Ok(())
}

/// Refuses, before QEMU starts, a base this host cannot revive exactly.
pub async fn check_compatible(store: &Store, base: &Base, qemu: &Path) -> Result<()> {
    check_host(store, &base.manifest, qemu).await?;
    store::quick_check(base)
}

/// What [`check_compatible`] checks from the manifest alone: the agent, QEMU's version,
/// the machine type, KVM. `guestbox pull` says so before it downloads a base.
pub async fn check_host(store: &Store, m: &Manifest, qemu: &Path) -> Result<()> {
    check_agent_of(m)?;
    let facts = QemuFacts::of(&store.cache, qemu).await?;
    let version = facts.version;
    if version != m.qemu_version {
        return Err(Error::Usage(format!(
            "base {} was made by QEMU {}.{}.{} but this host has QEMU {}.{}.{}: a snapshot only revives on the QEMU that made it. Bootstrap a new base (`guestbox bootstrap`) or run with --cold",
            short(&m.id), m.qemu_version.0, m.qemu_version.1, m.qemu_version.2, version.0, version.1, version.2
        )));
    }
    if facts.resolve_machine(&m.pair.machine).is_none() {
        return Err(Error::Usage(format!(
            "base {} needs machine type {} which this QEMU does not have; bootstrap a new base",
            short(&m.id),
            m.pair.machine
        )));
    }
    if m.pair.accel == Accel::Kvm
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
    {
        return Err(Error::Usage(format!(
            "base {} was made under KVM, which this host cannot use now; bootstrap a base with --accel tcg",
            short(&m.id)
        )));
    }
    Ok(())
}
