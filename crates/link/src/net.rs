//! The private link: two hosts, one subnet, no gateway, no DNS.

use std::net::Ipv4Addr;

/// The guest, as in the original (192.168.0.1).
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
/// The controller, as in the original (192.168.0.2): SMB server and SSH client.
pub const CONTROLLER_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// Both sit on a /24; nothing else is on it.
pub const PREFIX_LEN: u8 = 24;

/// MACs in QEMU's locally administered range. The Windows answer file names the guest's
/// interface by its MAC, so the guest VM of every profile uses this one.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
pub const CONTROLLER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];

/// Jumbo frames on the virtio link: fewer packets for the emulator to move (they took
/// shared-directory writes from 30% to 81% of local disk under TCG).
pub const MTU: u32 = 65520;

/// The SSH port the controller waits for on the guest.
pub const SSH_PORT: u16 = 22;
/// The only port the controller offers the guest.
pub const SMB_PORT: u16 = 445;

/// `52:54:00:00:00:01` (QEMU's `mac=`) or `52-54-00-00-00-01` (unattend's Identifier).
pub fn mac_string(mac: [u8; 6], separator: char) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(&separator.to_string())
}

/// `192.168.0.1/24`, as `ip addr add` wants it.
pub fn with_prefix(address: Ipv4Addr) -> String {
    format!("{address}/{PREFIX_LEN}")
}

/// The subnet mask for [`PREFIX_LEN`] (`255.255.255.0`), as Windows' `netsh` wants it.
pub fn netmask() -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX << (32 - u32::from(PREFIX_LEN)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_is_one_subnet_of_two_hosts() {
        let mask = u32::from(netmask());
        assert_eq!(netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            u32::from(GUEST_ADDRESS) & mask,
            u32::from(CONTROLLER_ADDRESS) & mask
        );
        assert_ne!(GUEST_ADDRESS, CONTROLLER_ADDRESS);
        assert_eq!(mac_string(GUEST_MAC, ':'), "52:54:00:00:00:01");
        assert_eq!(mac_string(CONTROLLER_MAC, '-'), "52-54-00-00-00-02");
        assert_eq!(with_prefix(CONTROLLER_ADDRESS), "192.168.0.2/24");
    }
}
