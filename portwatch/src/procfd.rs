//! Maps socket inodes (as reported by sock_diag) to the processes holding
//! them, by scanning `/proc/PID/fd`.
//!
//! The kernel's socket tables know a socket's inode and uid but not which
//! process owns it; the only general way to attribute a socket is to find
//! the `socket:[INODE]` links among every process's open files, as `ss -p`
//! and `lsof` do.

use std::collections::{HashMap, HashSet};

use procfs::process::{all_processes, FDTarget, Process};

/// A process that has a given socket open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub pid: u32,
    /// Process name from `/proc/PID/stat` (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
}

/// Scans /proc/*/fd once and returns socket inode -> owners.
///
/// A socket can be shared by several processes (fork, fd passing), so all of
/// them are kept, lowest pid first. Processes that vanish or deny access
/// mid-scan are skipped, not errors: a snapshot of a live system is always
/// racy, and an unprivileged caller simply sees fewer owners.
pub fn socket_inodes() -> HashMap<u64, Vec<SocketOwner>> {
    scan(None, false)
}

/// Every process holding each of the given inodes: like [`owners_of`], but
/// it visits every process, so that all sharers of a socket are found (an
/// nginx master and all its workers), not only the lowest pid.
pub fn every_owner_of(inodes: &[u64]) -> HashMap<u64, Vec<SocketOwner>> {
    let wanted: HashSet<u64> = inodes.iter().copied().filter(|&i| i != 0).collect();
    if wanted.is_empty() {
        return HashMap::new();
    }
    scan(Some(&wanted), false)
}

/// Same as [`socket_inodes`] but only looks for the given inodes and stops
/// early when all are found.
///
/// Processes are visited in ascending pid order, so each inode gets at least
/// its lowest-pid owner; sharers in later processes may be missed once every
/// inode has one owner (that is the price of stopping early).
pub fn owners_of(inodes: &[u64]) -> HashMap<u64, Vec<SocketOwner>> {
    // Inode 0 is what sock_diag reports for TIME_WAIT/orphans: nobody owns it.
    let wanted: HashSet<u64> = inodes.iter().copied().filter(|&i| i != 0).collect();
    if wanted.is_empty() {
        return HashMap::new();
    }
    scan(Some(&wanted), true)
}

fn scan(wanted: Option<&HashSet<u64>>, stop_early: bool) -> HashMap<u64, Vec<SocketOwner>> {
    let mut map: HashMap<u64, Vec<SocketOwner>> = HashMap::new();
    let Ok(procs) = all_processes() else {
        return map;
    };
    for process in procs.flatten() {
        let found = socket_fds(&process, wanted);
        if found.is_empty() {
            continue;
        }
        let Ok(pid) = u32::try_from(process.pid) else {
            continue;
        };
        // Failing to read stat now means the process has exited: skip it.
        let Ok(stat) = process.stat() else {
            continue;
        };
        for inode in found {
            map.entry(inode).or_default().push(SocketOwner {
                pid,
                comm: stat.comm.clone(),
            });
        }
        if let (Some(w), true) = (wanted, stop_early) {
            // Keys are a subset of `w`, so equal sizes means all were found.
            if map.len() == w.len() {
                break;
            }
        }
    }
    for owners in map.values_mut() {
        owners.sort_by_key(|o| o.pid);
    }
    map
}

/// Distinct socket inodes open in `process` (restricted to `wanted` if given).
fn socket_fds(process: &Process, wanted: Option<&HashSet<u64>>) -> Vec<u64> {
    // Kernel threads, exited processes and (without privileges) other users'
    // processes have no readable fd directory: treat them as owning nothing.
    let Ok(fds) = process.fd() else {
        return Vec::new();
    };
    let mut found: Vec<u64> = fds
        .flatten()
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .filter(|inode| match wanted {
            Some(w) => w.contains(inode),
            None => true,
        })
        .collect();
    // The same socket on several fds of one process counts as one owner.
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::inode_of;
    use std::net::{TcpListener, UdpSocket};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::process::{Command, Stdio};

    fn own_comm() -> String {
        std::fs::read_to_string("/proc/self/comm")
            .unwrap()
            .trim_end()
            .to_string()
    }

    #[test]
    fn full_scan_maps_our_sockets_to_our_pid() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("[::1]:0").unwrap();
        let map = socket_inodes();
        for ino in [inode_of(&tcp), inode_of(&udp)] {
            let owners = map
                .get(&ino)
                .unwrap_or_else(|| panic!("inode {ino} missing"));
            assert_eq!(
                owners,
                &vec![SocketOwner {
                    pid: std::process::id(),
                    comm: own_comm(),
                }]
            );
        }
        // Only sockets are reported: stdin/stdout-style fds are not.
        assert!(!map.contains_key(&0));
    }

    #[test]
    fn owners_of_returns_only_requested_inodes() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("[::1]:0").unwrap();
        let (ia, ib) = (inode_of(&a), inode_of(&b));
        let bogus = u64::MAX - 1;
        let map = owners_of(&[ia, bogus, 0]);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map[&ia][0].pid, std::process::id());
        assert!(!map.contains_key(&ib));
        assert!(owners_of(&[]).is_empty());
    }

    /// A listener this process shares with a child `sleep` (its inode, the
    /// child); the caller kills the child.
    fn shared_with_a_child() -> (TcpListener, u64, std::process::Child) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = inode_of(&l);
        // dup() drops FD_CLOEXEC, so the child inherits the socket.
        let raw = unsafe { libc::dup(l.as_raw_fd()) };
        assert!(raw >= 0);
        let dup = unsafe { OwnedFd::from_raw_fd(raw) };
        let child = Command::new("sleep")
            .arg("10")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        drop(dup);
        (l, ino, child)
    }

    #[test]
    fn every_owner_of_finds_sharers_in_later_processes_too() {
        let (_l, ino, mut child) = shared_with_a_child();
        let early = owners_of(&[ino]);
        let every = every_owner_of(&[ino]);
        let _ = child.kill();
        let _ = child.wait();
        // The test process comes first; the early stop misses the child.
        assert_eq!(early[&ino].len(), 1, "{early:?}");
        let pids: Vec<u32> = every[&ino].iter().map(|o| o.pid).collect();
        assert!(
            pids.contains(&child.id()) && pids.contains(&std::process::id()),
            "{pids:?}"
        );
    }

    #[test]
    fn shared_socket_lists_every_owner_sorted() {
        let (_l, ino, mut child) = shared_with_a_child();
        let map = socket_inodes();
        let _ = child.kill();
        let _ = child.wait();

        let owners = map.get(&ino).expect("listener inode present");
        let pids: Vec<u32> = owners.iter().map(|o| o.pid).collect();
        let mut sorted = pids.clone();
        sorted.sort();
        assert_eq!(pids, sorted);
        assert!(pids.contains(&std::process::id()), "{owners:?}");
        let c = owners
            .iter()
            .find(|o| o.pid == child.id())
            .unwrap_or_else(|| panic!("child missing: {owners:?}"));
        assert_eq!(c.comm, "sleep");
        assert_eq!(owners.len(), 2);
    }
}
