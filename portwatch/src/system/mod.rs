//! The live system behind attribution on Linux: sock_diag for sockets in
//! each network namespace, /proc for processes, cgroups and sysctls.

mod cgroup;
mod netns;
mod process;
pub mod snapshot;
mod sockets;

use std::collections::HashMap;

pub use cgroup::{cgroup2_mount, cgroup_path, unit_from_cgroup};
pub use netns::{inode_of as netns_inode, open as open_netns, run_in, Netns};
pub use process::LiveProcesses;
pub use sockets::LiveSockets;

use crate::aggregate::PortRange;
use crate::procfd;
use crate::sockdiag::SocketEntry;

/// The processes holding each socket of a snapshot, by inode (TIME_WAIT and
/// orphaned sockets have none). Scans /proc only when there is something to find.
pub fn owners_of(entries: &[SocketEntry]) -> HashMap<u64, Vec<procfd::SocketOwner>> {
    let inodes: Vec<u64> = entries
        .iter()
        .map(|e| e.inode)
        .filter(|i| *i != 0)
        .collect();
    if inodes.is_empty() {
        HashMap::new()
    } else {
        procfd::owners_of(&inodes)
    }
}

/// net.ipv4.ip_local_port_range of this network namespace.
pub fn ephemeral_range() -> Option<PortRange> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Some(PortRange { low, high }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_namespaces_port_range() {
        let r = ephemeral_range().expect("ip_local_port_range is readable");
        assert!(r.low <= r.high);
        assert!(r.size() >= 1);
    }
}
