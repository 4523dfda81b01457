//! Network namespaces by inode, and a way into each: an open
//! `/proc/PID/ns/net` taken from a live process in it. Events name a
//! socket's namespace by inode (read by the eBPF programs); lookups for it
//! must run there, never in portwatch's own namespace by mistake.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

/// Namespace handles kept open at once: each is an fd, and keeps a dead
/// namespace alive, so a recorder on a host that starts and stops thousands
/// of containers recycles them, least recently used first.
const MAX_HANDLES: usize = 256;
/// How often /proc may be searched for a process in a namespace nobody
/// registered (its first process exited before its events were read).
const SEARCH_EVERY: Duration = Duration::from_secs(2);
const MAX_SEARCHED: usize = 4096;
/// How long a lookup waits for that search, which runs on a thread of its
/// own (a host with tens of thousands of processes takes longer); a search
/// that finishes later serves the next lookup.
const SEARCH_WAIT: Duration = Duration::from_millis(50);

struct Inner {
    handles: LruCache<u64, Arc<OwnedFd>>,
    searched: HashMap<u64, Instant>,
    /// Searches still running, by namespace.
    pending: HashMap<u64, mpsc::Receiver<Option<OwnedFd>>>,
}

/// Shared between the socket probe and the process lookup (cheap to clone).
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Mutex<Inner>>,
    own: Option<u64>,
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

/// Inode of `/proc/<pid>/ns/net` (`pid` may be `self`).
pub fn inode_of(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

impl Netns {
    pub fn new() -> Self {
        Netns {
            inner: Arc::new(Mutex::new(Inner {
                handles: LruCache::new(NonZeroUsize::new(MAX_HANDLES).unwrap_or(NonZeroUsize::MIN)),
                searched: HashMap::new(),
                pending: HashMap::new(),
            })),
            own: inode_of("self"),
        }
    }

    /// portwatch's own namespace.
    pub fn own(&self) -> Option<u64> {
        self.own
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `pid`'s namespace and returns its inode.
    pub fn register(&self, pid: u32) -> Option<u64> {
        let ino = inode_of(&pid.to_string())?;
        if Some(ino) != self.own {
            let mut inner = self.lock();
            if inner.handles.get(&ino).is_none() {
                if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/ns/net")) {
                    // Only if it is still the same namespace (the pid may have
                    // been reused between the two calls).
                    if f.metadata().is_ok_and(|m| m.ino() == ino) {
                        inner.handles.put(ino, Arc::new(OwnedFd::from(f)));
                    }
                }
            }
        }
        Some(ino)
    }

    /// A handle on namespace `ino`: one kept from a process seen in it, else
    /// one found by searching /proc (at most every couple of seconds per
    /// namespace). None when no live process is in it: the caller then
    /// says it does not know rather than look elsewhere.
    pub fn get(&self, ino: u64) -> Option<Arc<OwnedFd>> {
        let mut inner = self.lock();
        if let Some(h) = inner.handles.get(&ino) {
            return Some(h.clone());
        }
        let rx = match inner.pending.remove(&ino) {
            Some(rx) => rx,
            None => {
                if inner
                    .searched
                    .get(&ino)
                    .is_some_and(|t| t.elapsed() < SEARCH_EVERY)
                {
                    return None;
                }
                if inner.searched.len() >= MAX_SEARCHED {
                    inner.searched.clear();
                }
                inner.searched.insert(ino, Instant::now());
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(find(ino));
                });
                rx
            }
        };
        let found = match rx.recv_timeout(SEARCH_WAIT) {
            Ok(found) => found?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if inner.pending.len() < MAX_SEARCHED {
                    inner.pending.insert(ino, rx);
                }
                return None;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        };
        let h = Arc::new(found);
        inner.handles.put(ino, h.clone());
        Some(h)
    }

    /// How many handles are open (for tests of the bound).
    pub fn open_handles(&self) -> usize {
        self.lock().handles.len()
    }
}

/// Opens `/proc/PID/ns/net` of some process in namespace `ino`, or of a
/// namespace `ip netns` pinned under /run/netns.
fn find(ino: u64) -> Option<OwnedFd> {
    let open_if = |path: std::path::PathBuf| -> Option<OwnedFd> {
        if std::fs::metadata(&path).ok()?.ino() != ino {
            return None;
        }
        let f = std::fs::File::open(&path).ok()?;
        f.metadata()
            .is_ok_and(|m| m.ino() == ino)
            .then(|| OwnedFd::from(f))
    };
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        if let Some(fd) = open_if(entry.path().join("ns/net")) {
            return Some(fd);
        }
    }
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .find_map(|e| open_if(e.path()))
}

/// `--netns` for the subcommands that look into a namespace (`who`,
/// `doctor`): a pid in it, the path of a namespace file (`/proc/PID/ns/net`,
/// `/run/netns/NAME`), or its inode (a process in it is then looked for).
/// Returns the inode and an open handle.
pub fn open(spec: &str) -> Result<(u64, Arc<OwnedFd>), String> {
    // Pids stay below 2^22 (pid_max's ceiling); namespace inodes are far above.
    const PID_MAX_LIMIT: u64 = 1 << 22;
    let path = match spec.parse::<u64>() {
        Ok(ino) if ino >= PID_MAX_LIMIT => {
            return Netns::new()
                .get(ino)
                .map(|fd| (ino, fd))
                .ok_or_else(|| format!("--netns {spec}: no process is in a network namespace with that inode; give a pid in it or a path such as /run/netns/NAME"));
        }
        Ok(pid) => format!("/proc/{pid}/ns/net"),
        Err(_) => spec.to_owned(),
    };
    let f = std::fs::File::open(&path).map_err(|e| {
        format!("--netns {spec}: cannot open {path} ({e}); give a pid in the namespace, its inode (ls -iL /proc/PID/ns/net), or a path such as /run/netns/NAME")
    })?;
    let ino = f
        .metadata()
        .map_err(|e| format!("--netns {spec}: {e}"))?
        .ino();
    Ok((ino, Arc::new(OwnedFd::from(f))))
}

/// Runs `f` on a short-lived thread that has joined namespace `ns` (setns
/// affects one thread only), or on this one when `ns` is None: for
/// /proc/sys/net, which shows the namespace of whoever opens it.
pub fn run_in<T: Send>(
    ns: Option<&OwnedFd>,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let Some(ns) = ns else {
        return f();
    };
    let raw = ns.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: a valid namespace fd, borrowed for the call.
                if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the netns helper thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_namespace_by_inode_and_says_none_for_an_unknown_one() {
        let ns = Netns::new();
        let own = ns.own().expect("own namespace");
        // Our own namespace is found through /proc like any other.
        let h = ns.get(own).expect("own namespace found");
        let ino = std::fs::File::from(h.try_clone().expect("dup"))
            .metadata()
            .expect("stat")
            .ino();
        assert_eq!(ino, own);
        assert!(ns.get(1).is_none(), "no namespace has inode 1");
        // Asked again at once: not searched again, still none.
        assert!(ns.get(1).is_none());
    }
}
