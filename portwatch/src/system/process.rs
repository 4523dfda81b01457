//! What /proc says about a process: command line, cgroup, network namespace.

use super::cgroup::{cgroup_path, CgroupIndex};
use super::netns::Netns;
use crate::attribution::{ProcessInfo, ProcessLookup};

/// Command line, cgroup and network namespace from /proc.
#[derive(Clone, Default)]
pub struct LiveProcesses {
    netns: Netns,
    cgroups: CgroupIndex,
}

impl LiveProcesses {
    /// Namespaces found here are registered in `netns` for the socket probe.
    pub fn new(netns: Netns) -> Self {
        LiveProcesses {
            netns,
            cgroups: CgroupIndex::default(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_this_process() {
        let info = LiveProcesses::default()
            .lookup(std::process::id())
            .expect("own /proc entry");
        assert!(info.cmdline.is_some_and(|c| !c.is_empty()));
        assert_eq!(info.netns, super::super::netns::inode_of("self"));
    }
}
