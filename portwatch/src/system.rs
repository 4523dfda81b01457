//! The live system behind attribution on Linux: sock_diag for sockets,
//! /proc for processes and sysctls.

use std::net::IpAddr;

use crate::aggregate::PortRange;
use crate::attribution::{PortSocket, ProcessInfo, ProcessLookup, SocketProbe};
use crate::model::{Protocol, TcpState};
use crate::procfd;
use crate::sockdiag::{Proto, SockDiag};

/// sock_diag in portwatch's own network namespace. If the netlink socket
/// cannot be opened, TIME_WAIT inference and holder lookups report nothing
/// rather than guessing.
pub struct LiveSockets {
    diag: Option<SockDiag>,
}

impl LiveSockets {
    pub fn new() -> Self {
        let diag = match SockDiag::new() {
            Ok(d) => Some(d),
            Err(e) => {
                log::warn!("sock_diag unavailable ({e}); TIME_WAIT confirmation and port holders will be missing");
                None
            }
        };
        LiveSockets { diag }
    }
}

impl Default for LiveSockets {
    fn default() -> Self {
        Self::new()
    }
}

impl SocketProbe for LiveSockets {
    fn tcp_state(
        &mut self,
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
    ) -> Option<TcpState> {
        let diag = self.diag.as_mut()?;
        match diag.tcp_lookup(saddr, sport, daddr, dport) {
            Ok(found) => found.and_then(|s| TcpState::from_kernel(s.state)),
            Err(e) => {
                log::debug!("sock_diag lookup failed: {e}");
                None
            }
        }
    }

    fn tcp_states(&mut self, tuples: &[crate::attribution::Tuple]) -> Vec<Option<TcpState>> {
        let Some(diag) = self.diag.as_mut() else {
            return vec![None; tuples.len()];
        };
        match diag.tcp_lookup_many(tuples) {
            Ok(found) => found
                .into_iter()
                .map(|e| e.and_then(|s| TcpState::from_kernel(s.state)))
                .collect(),
            Err(e) => {
                log::debug!("sock_diag lookups failed: {e}");
                vec![None; tuples.len()]
            }
        }
    }

    fn on_port(&mut self, port: u16) -> Vec<PortSocket> {
        let Some(diag) = self.diag.as_mut() else {
            return Vec::new();
        };
        let entries = match diag.sockets_on_port(port) {
            Ok(e) => e,
            Err(e) => {
                log::debug!("sock_diag dump failed: {e}");
                return Vec::new();
            }
        };
        let inodes: Vec<u64> = entries
            .iter()
            .map(|e| e.inode)
            .filter(|i| *i != 0)
            .collect();
        let owners = if inodes.is_empty() {
            Default::default()
        } else {
            procfd::owners_of(&inodes)
        };
        entries
            .into_iter()
            .map(|e| {
                let owner = owners.get(&e.inode).and_then(|v| v.first());
                PortSocket {
                    protocol: match e.proto {
                        Proto::Tcp => Protocol::Tcp,
                        Proto::Udp => Protocol::Udp,
                    },
                    state: match e.proto {
                        Proto::Tcp => TcpState::from_kernel(e.state),
                        Proto::Udp => None,
                    },
                    saddr: e.saddr,
                    sport: e.sport,
                    daddr: e.daddr,
                    dport: e.dport,
                    pid: owner.map(|o| o.pid),
                    comm: owner.map(|o| o.comm.clone()),
                }
            })
            .collect()
    }
}

/// Command line and cgroup from /proc.
#[derive(Default)]
pub struct LiveProcesses;

impl ProcessLookup for LiveProcesses {
    fn lookup(&mut self, pid: u32) -> Option<ProcessInfo> {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            });
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| cgroup_path(&s));
        if cmdline.is_none() && cgroup.is_none() {
            return None;
        }
        Some(ProcessInfo {
            cmdline: cmdline.filter(|c| !c.is_empty()),
            cgroup,
        })
    }
}

/// The unified (v2) path, else the systemd or first v1 path.
pub fn cgroup_path(proc_cgroup: &str) -> Option<String> {
    let mut fallback = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrl.is_empty() {
            return Some(path.to_owned());
        }
        if ctrl == "name=systemd" || fallback.is_none() {
            fallback = Some(path.to_owned());
        }
    }
    fallback
}

/// The systemd unit or container a cgroup path belongs to: the innermost
/// `*.service`/`*.scope` component, or a container id under docker, podman
/// (libpod) or kubepods.
pub fn unit_from_cgroup(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, p) in parts.iter().enumerate().rev() {
        for prefix in ["docker-", "libpod-", "cri-containerd-", "crio-"] {
            if let Some(id) = p
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(".scope"))
            {
                let short: String = id.chars().take(12).collect();
                return Some(format!("container {short}"));
            }
        }
        if i > 0 && parts[i - 1] == "docker" && p.len() >= 12 {
            return Some(format!("container {}", &p[..12]));
        }
        if p.ends_with(".service") || p.ends_with(".scope") {
            return Some((*p).to_owned());
        }
    }
    None
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
    fn prefers_the_unified_cgroup_path() {
        let s = "12:pids:/user.slice\n1:name=systemd:/system.slice/mssql.service\n0::/system.slice/mssql.service\n";
        assert_eq!(
            cgroup_path(s).as_deref(),
            Some("/system.slice/mssql.service")
        );
        let v1 = "3:cpu:/a\n1:name=systemd:/system.slice/x.service\n";
        assert_eq!(cgroup_path(v1).as_deref(), Some("/system.slice/x.service"));
        assert_eq!(cgroup_path(""), None);
    }

    #[test]
    fn names_units_and_containers() {
        assert_eq!(
            unit_from_cgroup("/system.slice/mssql-server.service").as_deref(),
            Some("mssql-server.service")
        );
        assert_eq!(
            unit_from_cgroup("/system.slice/docker-0123456789abcdef0123.scope").as_deref(),
            Some("container 0123456789ab")
        );
        assert_eq!(
            unit_from_cgroup("/docker/fedcba9876543210aa").as_deref(),
            Some("container fedcba987654")
        );
        assert_eq!(
            unit_from_cgroup("/user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(unit_from_cgroup("/"), None);
    }

    #[test]
    fn reads_this_namespaces_port_range() {
        let r = ephemeral_range().expect("ip_local_port_range is readable");
        assert!(r.low <= r.high);
        assert!(r.size() >= 1);
    }

    #[test]
    fn looks_up_this_process() {
        let info = LiveProcesses
            .lookup(std::process::id())
            .expect("own /proc entry");
        assert!(info.cmdline.is_some_and(|c| !c.is_empty()));
    }
}
