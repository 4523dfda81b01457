//! What exists when a trace starts: the listeners and connections of every
//! network namespace, with their owners. In a real incident the server was
//! started long before anyone ran portwatch; without this, every connection
//! its listener accepts would be unattributed although `who` can name it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::netns::{inode_of, Netns};
use crate::attribution::{overlaps, Tuple};
use crate::model::{Family, Side};
use crate::procfd::{self, SocketOwner};
use crate::sockdiag::{SockDiag, SocketEntry, TCP_ALL_STATES};

/// TCP_LISTEN in the kernel's numbering, as sock_diag reports states.
const LISTEN: u8 = 10;

/// A process that owns a socket, as far as /proc can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedOwner {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
}

/// A listening socket that predates the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedListener {
    pub netns: u64,
    pub family: Family,
    pub port: u16,
    pub addr: IpAddr,
    /// None when several processes could be accepting on it.
    pub owner: Option<SeedOwner>,
}

/// A connection that predates the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedConnection {
    pub netns: u64,
    pub tuple: Tuple,
    /// The kernel's TCP state number, as sock_diag reported it.
    pub state: u8,
    pub owner: Option<SeedOwner>,
    pub side: Side,
}

#[derive(Clone, Debug, Default)]
pub struct StartSnapshot {
    pub listeners: Vec<SeedListener>,
    pub connections: Vec<SeedConnection>,
    /// Namespaces read, and the ones that could not be (with why).
    pub namespaces: usize,
    pub unreadable: Vec<(u64, String)>,
}

/// Every network namespace a process is in right now, with a pid in it.
pub fn namespaces() -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ino) = inode_of(&pid.to_string()) {
            out.entry(ino).or_insert(pid);
        }
    }
    out
}

/// Who accepts on a socket several processes hold: the one worker among
/// them whose parent holds it too (nginx's master and its single worker,
/// a pre-forking server), the only holder, or nobody when it is unclear.
pub fn acceptor(holders: &[SocketOwner], parent_of: impl Fn(u32) -> Option<u32>) -> Option<u32> {
    let pids: BTreeSet<u32> = holders.iter().map(|h| h.pid).collect();
    if pids.len() == 1 {
        return pids.first().copied();
    }
    let workers: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| parent_of(*p).is_some_and(|pp| pids.contains(&pp)))
        .collect();
    match workers.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let p = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    u32::try_from(p.stat().ok()?.ppid).ok()
}

fn uid_of(pid: u32) -> u32 {
    i32::try_from(pid)
        .ok()
        .and_then(|p| procfs::process::Process::new(p).ok())
        .and_then(|p| p.uid().ok())
        .unwrap_or(0)
}

fn family_of(a: &IpAddr) -> Family {
    match a {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

/// Reads every namespace's TCP sockets over sock_diag, and their owners
/// with one scan of /proc. Handles on the namespaces found are kept in
/// `netns` for the lookups that follow.
pub fn take(netns: &Netns) -> StartSnapshot {
    let mut snap = StartSnapshot::default();
    let mut per_ns: Vec<(u64, Vec<SocketEntry>)> = Vec::new();
    for (ino, pid) in namespaces() {
        netns.register(pid);
        let diag = if Some(ino) == netns.own() {
            SockDiag::new()
        } else {
            match netns.get(ino) {
                Some(fd) => SockDiag::in_netns(fd),
                None => {
                    snap.unreadable
                        .push((ino, "its processes exited meanwhile".into()));
                    continue;
                }
            }
        };
        match diag.and_then(|mut d| d.tcp_sockets(TCP_ALL_STATES)) {
            Ok(entries) => per_ns.push((ino, entries)),
            Err(e) => snap.unreadable.push((ino, e.to_string())),
        }
    }
    snap.namespaces = per_ns.len();
    let owners = procfd::socket_inodes();
    let owner_of = |inode: u64| -> Option<SeedOwner> {
        let holders = owners.get(&inode)?;
        let pid = acceptor(holders, parent_of)?;
        let comm = holders.iter().find(|h| h.pid == pid)?.comm.clone();
        Some(SeedOwner {
            pid,
            comm,
            uid: uid_of(pid),
        })
    };
    for (ino, entries) in &per_ns {
        let listening: Vec<&SocketEntry> = entries.iter().filter(|e| e.state == LISTEN).collect();
        for l in &listening {
            snap.listeners.push(SeedListener {
                netns: *ino,
                family: family_of(&l.saddr),
                port: l.sport,
                addr: l.saddr,
                owner: owner_of(l.inode),
            });
        }
        for e in entries {
            // Listeners are above; TIME_WAIT and orphans have no owner and
            // no more transitions worth attributing.
            if e.state == LISTEN || e.inode == 0 {
                continue;
            }
            let server = listening
                .iter()
                .any(|l| l.sport == e.sport && overlaps(e.saddr, l.saddr, l.ipv6_only));
            snap.connections.push(SeedConnection {
                netns: *ino,
                tuple: (e.saddr, e.sport, e.daddr, e.dport),
                state: e.state,
                owner: owner_of(e.inode),
                side: if server { Side::Server } else { Side::Client },
            });
        }
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: u32) -> SocketOwner {
        SocketOwner {
            pid,
            comm: "nginx".into(),
        }
    }

    #[test]
    fn the_single_worker_of_a_master_accepts() {
        let parents: HashMap<u32, u32> = [(10, 1), (11, 10), (12, 10)].into();
        let parent = |p: u32| parents.get(&p).copied();
        assert_eq!(acceptor(&[holder(10)], parent), Some(10));
        assert_eq!(acceptor(&[holder(10), holder(11)], parent), Some(11));
        // Two workers: which one accepts is unknowable.
        assert_eq!(
            acceptor(&[holder(10), holder(11), holder(12)], parent),
            None
        );
        // Two unrelated holders (fd passing): unknowable too.
        assert_eq!(acceptor(&[holder(11), holder(30)], parent), None);
    }

    #[test]
    fn finds_a_listener_of_this_process_with_its_owner() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: reading other namespaces needs root");
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = l.local_addr().expect("addr").port();
        let snap = take(&Netns::new());
        let own = inode_of("self").expect("own netns");
        let found = snap
            .listeners
            .iter()
            .find(|s| s.netns == own && s.port == port)
            .expect("our listener");
        let owner = found.owner.as_ref().expect("owned");
        assert_eq!(owner.pid, std::process::id());
        assert!(snap.namespaces >= 1);
    }
}
