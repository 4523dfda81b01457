//! cgroups: a process's cgroup path, the path of a cgroup id the kernel
//! reported (for processes gone by the time their event is read), and the
//! systemd unit or container a path belongs to.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use procfs::ProcessCGroups;

use crate::model::SmolStr;

/// How long an event waits for a rescan of the cgroup tree: a host with a
/// large tree (thousands of containers) finishes it in the background, and
/// the events after it get the paths.
const SCAN_WAIT: Duration = Duration::from_millis(50);

/// cgroup v2 ids (the inode of the cgroup's directory) to paths, rebuilt
/// when an unknown id turns up, at most once a second, on a thread of its
/// own (a tree walk must not hold up the event thread).
#[derive(Default)]
pub struct CgroupIndex {
    /// Shared: an event of a process that is gone gets a reference.
    paths: HashMap<u64, SmolStr>,
    scanned: Option<Instant>,
    pending: Option<mpsc::Receiver<HashMap<u64, SmolStr>>>,
}

impl Clone for CgroupIndex {
    fn clone(&self) -> Self {
        CgroupIndex {
            paths: self.paths.clone(),
            scanned: self.scanned,
            pending: None,
        }
    }
}

impl CgroupIndex {
    pub fn path(&mut self, id: u64) -> Option<SmolStr> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        if self.pending.is_none() {
            if self
                .scanned
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return None;
            }
            self.scanned = Some(Instant::now());
            let root = cgroup2_mount()?;
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(walk(&root));
            });
            self.pending = Some(rx);
        }
        match self.pending.as_ref()?.recv_timeout(SCAN_WAIT) {
            Ok(paths) => {
                self.paths = paths;
                self.pending = None;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return None,
            Err(mpsc::RecvTimeoutError::Disconnected) => self.pending = None,
        }
        self.paths.get(&id).cloned()
    }
}

/// Every cgroup under `root`, by id.
fn walk(root: &std::path::Path) -> HashMap<u64, SmolStr> {
    let mut paths = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = std::fs::metadata(&dir) {
            let rel = dir
                .strip_prefix(root)
                .map_or_else(|_| "/".to_owned(), |r| format!("/{}", r.display()));
            paths.insert(meta.ino(), rel.into());
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
    paths
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on hybrid systems).
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .ok()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
}

/// The unified (v2) path, else the systemd or first v1 path.
pub fn cgroup_path(groups: &ProcessCGroups) -> Option<String> {
    let mut fallback = None;
    for g in groups {
        if g.hierarchy == 0 && g.controllers.is_empty() {
            return Some(g.pathname.clone());
        }
        if g.controllers.iter().any(|c| c == "name=systemd") || fallback.is_none() {
            fallback = Some(g.pathname.clone());
        }
    }
    fallback
}

/// The systemd unit or container a cgroup path belongs to (platform-free,
/// in [`crate::workload`], so that trace and its replays name it too).
pub use crate::workload::unit_from_cgroup;

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> ProcessCGroups {
        use procfs::FromBufRead as _;
        ProcessCGroups::from_buf_read(text.as_bytes()).expect("cgroup text")
    }

    #[test]
    fn prefers_the_unified_cgroup_path() {
        let s = "12:pids:/user.slice\n1:name=systemd:/system.slice/mssql.service\n0::/system.slice/mssql.service\n";
        assert_eq!(
            cgroup_path(&parsed(s)).as_deref(),
            Some("/system.slice/mssql.service")
        );
        let v1 = "3:cpu:/a\n1:name=systemd:/system.slice/x.service\n";
        assert_eq!(
            cgroup_path(&parsed(v1)).as_deref(),
            Some("/system.slice/x.service")
        );
        assert_eq!(cgroup_path(&parsed("")), None);
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
        // A multi-byte character across byte 12 is not a panic.
        assert_eq!(
            unit_from_cgroup("/docker/ééééééééééééé").as_deref(),
            Some("container éééééééééééé")
        );
    }

    #[test]
    fn maps_a_cgroup_id_back_to_its_path() {
        let Some(root) = cgroup2_mount() else {
            eprintln!("SKIPPED: no cgroup v2 hierarchy mounted");
            return;
        };
        let own = procfs::process::Process::myself()
            .and_then(|p| p.cgroups())
            .ok()
            .and_then(|g| cgroup_path(&g))
            .expect("own cgroup");
        let dir = root.join(own.trim_start_matches('/'));
        let Ok(meta) = std::fs::metadata(&dir) else {
            eprintln!("SKIPPED: own cgroup {own} is not under {}", root.display());
            return;
        };
        let mut index = CgroupIndex::default();
        assert_eq!(index.path(meta.ino()).as_deref(), Some(own.as_str()));
        assert_eq!(index.path(u64::MAX), None);
    }
}
