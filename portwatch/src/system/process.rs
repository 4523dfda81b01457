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
    fn cgroup_path(&mut self, id: u64) -> Option<crate::model::SmolStr> {
        self.cgroups.path(id)
    }

    /// /proc/PID/stat's starttime: clock ticks since boot (CLOCK_BOOTTIME,
    /// the clock the eBPF programs stamp events with).
    fn start_ns(&mut self, pid: u32) -> Option<u64> {
        let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
            .ok()?
            .stat()
            .ok()?;
        let hz = procfs::ticks_per_second().max(1);
        Some(stat.starttime.saturating_mul(1_000_000_000) / hz)
    }

    fn lookup(&mut self, pid: u32) -> Option<ProcessInfo> {
        let netns = self.netns.register(pid);
        let process = i32::try_from(pid)
            .ok()
            .and_then(|pid| procfs::process::Process::new(pid).ok());
        let cmdline = process.as_ref().and_then(|p| match p.cmdline() {
            Ok(args) => Some(args.join(" ")),
            // procfs refuses a command line that is not UTF-8; a process
            // must not hide from portwatch that way.
            Err(_) => std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ")),
        });
        let cgroup = process
            .as_ref()
            .and_then(|p| p.cgroups().ok())
            .and_then(|groups| cgroup_path(&groups));
        if cmdline.is_none() && cgroup.is_none() && netns.is_none() {
            return None;
        }
        Some(ProcessInfo {
            cmdline: cmdline.filter(|c| !c.is_empty()),
            cgroup,
            netns,
            container_pid: container_pid(pid),
        })
    }
}

/// The pid in the process's innermost pid namespace (the last of NSpid),
/// when it differs from the host's.
fn container_pid(pid: u32) -> Option<u32> {
    let status = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .status()
        .ok()?;
    let inner = u32::try_from(*status.nspid?.last()?).ok()?;
    (inner != pid).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_that_is_not_utf8_is_still_shown() {
        use std::os::unix::ffi::OsStrExt as _;
        let arg = std::ffi::OsStr::from_bytes(b"caf\xe9");
        // sh ignores its $0; sleep would refuse the word and exit.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5"])
            .arg(arg)
            .spawn()
            .expect("sleep");
        // exec may not have happened yet: wait for the new command line.
        let mut info = None;
        for _ in 0..100 {
            info = LiveProcesses::default().lookup(child.id());
            if info
                .as_ref()
                .and_then(|i| i.cmdline.as_deref())
                .is_some_and(|c| c.starts_with("sh"))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        let cmdline = info.and_then(|i| i.cmdline).expect("a command line");
        assert_eq!(cmdline.trim_end(), "sh -c sleep 5 caf\u{fffd}");
    }

    #[test]
    fn looks_up_this_process() {
        let info = LiveProcesses::default()
            .lookup(std::process::id())
            .expect("own /proc entry");
        assert!(info.cmdline.is_some_and(|c| !c.is_empty()));
        assert_eq!(info.netns, super::super::netns::inode_of("self"));
        assert_eq!(
            info.container_pid, None,
            "the test runs in the host's pid namespace"
        );
    }

    #[test]
    fn names_the_pid_a_container_sees() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: a pid namespace needs root");
            return;
        }
        // `unshare --pid --fork` runs sleep as pid 1 of a new pid namespace.
        let mut child = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "sleep", "5"])
            .spawn()
            .expect("unshare");
        let host = (0..100)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let kids =
                    std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
                        .ok()?;
                kids.split_whitespace().next()?.parse::<u32>().ok()
            })
            .expect("sleep started");
        let info = LiveProcesses::default()
            .lookup(host)
            .expect("sleep's /proc");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(info.container_pid, Some(1));
    }
}
