//! The live system behind attribution on Linux: sock_diag for sockets,
//! /proc for processes and sysctls.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use crate::aggregate::PortRange;
use crate::attribution::{PortSocket, ProcessInfo, ProcessLookup, SocketProbe};
use crate::model::{Protocol, TcpState};
use crate::procfd;
use crate::sockdiag::{Proto, SockDiag, SocketEntry};

const MAX_NETNS: usize = 4096;

/// Network namespaces met so far, by inode: an open `/proc/PID/ns/net` each,
/// taken while the process was alive, so that its sockets can still be
/// looked up after it exits.
#[derive(Clone, Default)]
pub struct Netns {
    inner: Arc<Mutex<HashMap<u64, Arc<OwnedFd>>>>,
    own: Option<u64>,
}

impl Netns {
    pub fn new() -> Self {
        Netns {
            inner: Arc::default(),
            own: netns_inode("self"),
        }
    }

    /// Remembers `pid`'s namespace and returns its inode.
    fn register(&self, pid: u32) -> Option<u64> {
        let ino = netns_inode(&pid.to_string())?;
        if Some(ino) != self.own {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            // Each entry holds an fd (and keeps a dead namespace alive): bounded.
            if map.len() >= MAX_NETNS {
                map.clear();
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(ino) {
                if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/ns/net")) {
                    slot.insert(Arc::new(OwnedFd::from(f)));
                }
            }
        }
        Some(ino)
    }

    fn get(&self, ino: u64) -> Option<Arc<OwnedFd>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .cloned()
    }
}

fn netns_inode(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// sock_diag in the namespace of each event's owner (containers included),
/// falling back to portwatch's own. If no netlink socket can be opened,
/// TIME_WAIT confirmation and holder lookups report nothing rather than guess.
pub struct LiveSockets {
    own: Option<SockDiag>,
    others: HashMap<u64, SockDiag>,
    netns: Netns,
}

impl LiveSockets {
    pub fn new(netns: Netns) -> Self {
        let own = match SockDiag::new() {
            Ok(d) => Some(d),
            Err(e) => {
                log::warn!("sock_diag unavailable ({e}); TIME_WAIT confirmation and port holders will be missing");
                None
            }
        };
        LiveSockets {
            own,
            others: HashMap::new(),
            netns,
        }
    }

    fn diag(&mut self, netns: Option<u64>) -> Option<&mut SockDiag> {
        match netns {
            Some(ino) if Some(ino) != self.netns.own => {
                if !self.others.contains_key(&ino) {
                    let fd = self.netns.get(ino)?;
                    match SockDiag::in_netns(fd) {
                        Ok(d) => {
                            self.others.insert(ino, d);
                        }
                        Err(e) => {
                            log::debug!("sock_diag in netns {ino}: {e}");
                            return None;
                        }
                    }
                }
                self.others.get_mut(&ino)
            }
            _ => self.own.as_mut(),
        }
    }
}

impl SocketProbe for LiveSockets {
    fn tcp_state(
        &mut self,
        netns: Option<u64>,
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
    ) -> Option<TcpState> {
        let diag = self.diag(netns)?;
        match diag.tcp_lookup(saddr, sport, daddr, dport) {
            Ok(found) => found.and_then(|s| TcpState::from_kernel(s.state)),
            Err(e) => {
                log::debug!("sock_diag lookup failed: {e}");
                None
            }
        }
    }

    fn tcp_states(
        &mut self,
        netns: Option<u64>,
        tuples: &[crate::attribution::Tuple],
    ) -> Vec<Option<TcpState>> {
        let Some(diag) = self.diag(netns) else {
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

    fn on_port(&mut self, netns: Option<u64>, port: u16) -> Vec<PortSocket> {
        let Some(diag) = self.diag(netns) else {
            return Vec::new();
        };
        let entries = match diag.sockets_on_port(port) {
            Ok(e) => e,
            Err(e) => {
                log::debug!("sock_diag dump failed: {e}");
                return Vec::new();
            }
        };
        let owners = owners_of(&entries);
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

/// Command line, cgroup and network namespace from /proc.
#[derive(Clone, Default)]
pub struct LiveProcesses {
    netns: Netns,
    cgroups: CgroupIndex,
}

impl LiveProcesses {
    /// Namespaces found here are registered in `netns` for [`LiveSockets`].
    pub fn new(netns: Netns) -> Self {
        LiveProcesses {
            netns,
            cgroups: CgroupIndex::default(),
        }
    }
}

/// cgroup v2 ids (the inode of the cgroup's directory) to paths, rebuilt
/// when an unknown id turns up, at most once a second.
#[derive(Clone, Default)]
struct CgroupIndex {
    paths: HashMap<u64, String>,
    scanned: Option<std::time::Instant>,
}

impl CgroupIndex {
    fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        if self
            .scanned
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        {
            return None;
        }
        self.scanned = Some(std::time::Instant::now());
        self.paths.clear();
        let root = cgroup2_mount()?;
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(meta) = std::fs::metadata(&dir) {
                let rel = dir
                    .strip_prefix(&root)
                    .map_or_else(|_| "/".to_owned(), |r| format!("/{}", r.display()));
                self.paths.insert(meta.ino(), rel);
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        self.paths.get(&id).cloned()
    }
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on hybrid systems).
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))
            .flatten()
    })
}

impl ProcessLookup for LiveProcesses {
    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        self.cgroups.path(id)
    }

    fn lookup(&mut self, pid: u32) -> Option<ProcessInfo> {
        let netns = self.netns.register(pid);
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
        if cmdline.is_none() && cgroup.is_none() && netns.is_none() {
            return None;
        }
        Some(ProcessInfo {
            cmdline: cmdline.filter(|c| !c.is_empty()),
            cgroup,
            netns,
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
    fn maps_a_cgroup_id_back_to_its_path() {
        let Some(root) = cgroup2_mount() else {
            eprintln!("SKIPPED: no cgroup v2 hierarchy mounted");
            return;
        };
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| cgroup_path(&s))
            .expect("own cgroup");
        let dir = root.join(own.trim_start_matches('/'));
        let Ok(meta) = std::fs::metadata(&dir) else {
            eprintln!("SKIPPED: own cgroup {own} is not under {}", root.display());
            return;
        };
        let mut p = LiveProcesses::default();
        assert_eq!(p.cgroup_path(meta.ino()).as_deref(), Some(own.as_str()));
        assert_eq!(p.cgroup_path(u64::MAX), None);
    }

    #[test]
    fn reads_this_namespaces_port_range() {
        let r = ephemeral_range().expect("ip_local_port_range is readable");
        assert!(r.low <= r.high);
        assert!(r.size() >= 1);
    }

    #[test]
    fn looks_up_this_process() {
        let info = LiveProcesses::default()
            .lookup(std::process::id())
            .expect("own /proc entry");
        assert!(info.cmdline.is_some_and(|c| !c.is_empty()));
        assert_eq!(info.netns, netns_inode("self"));
    }
}
