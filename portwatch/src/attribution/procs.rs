//! What /proc says about each process, read once per process and shared
//! by all its events: the command line and cgroup are counted references,
//! so enriching an event allocates nothing.
//!
//! Keyed by pid plus start time: a pid can be reused, and an event of a
//! process that is gone must never get the identity of the process that
//! holds its pid now.

use std::collections::hash_map::{Entry, HashMap};

use super::{ProcessInfo, ProcessLookup};
use crate::model::SmolStr;

/// Upper bound on processes remembered, so a long trace stays small.
const MAX_PROCS: usize = 16384;

/// [`ProcessInfo`] as events carry it.
pub struct Shared {
    pub cmdline: Option<SmolStr>,
    pub cgroup: Option<SmolStr>,
    pub netns: Option<u64>,
    pub container_pid: Option<u32>,
}

impl From<ProcessInfo> for Shared {
    fn from(i: ProcessInfo) -> Self {
        Shared {
            cmdline: i.cmdline.map(SmolStr::from),
            cgroup: i.cgroup.map(SmolStr::from),
            netns: i.netns,
            container_pid: i.container_pid,
        }
    }
}

/// What was read about the process holding a pid, and how long it is known
/// to have held it.
struct Cached {
    /// The command name it was read under.
    comm: Option<SmolStr>,
    /// When it started (CLOCK_BOOTTIME ns); None where the lookup cannot tell.
    start_ns: Option<u64>,
    /// CLOCK_BOOTTIME until which the pid was seen to be this process.
    confirmed_ns: u64,
    info: Option<Shared>,
}

#[derive(Default)]
pub struct Procs {
    by_pid: HashMap<u32, Cached, foldhash::fast::RandomState>,
}

impl Procs {
    /// What `lookup` says about the process that had `pid` at `at` (the
    /// event's CLOCK_BOOTTIME stamp; 0 when unknown), asked once per
    /// process. None when the process holding the pid now started after
    /// the event: the event's process is gone.
    pub fn get<P: ProcessLookup>(
        &mut self,
        lookup: &mut P,
        pid: u32,
        comm: &Option<SmolStr>,
        at: u64,
    ) -> Option<&Shared> {
        if self.by_pid.len() >= MAX_PROCS && self.by_pid.get(&pid).is_none_or(|c| c.comm != *comm) {
            self.by_pid.clear();
        }
        let read = |lookup: &mut P| {
            // The start time on both sides of the reads: a process that
            // exited (and whose pid was reused) meanwhile is not mixed in.
            let before = lookup.start_ns(pid);
            let info = lookup.lookup(pid);
            let start_ns = lookup.start_ns(pid);
            Cached {
                comm: comm.clone(),
                start_ns,
                confirmed_ns: crate::journal::mono_ns(),
                info: info.filter(|_| before == start_ns).map(Shared::from),
            }
        };
        // One table lookup for the common case, a process already read.
        let entry = match self.by_pid.entry(pid) {
            Entry::Occupied(o) => {
                let c = o.into_mut();
                let fresh = match c.start_ns {
                    _ if c.comm != *comm => true,
                    // Nothing to compare with: the command name must do.
                    None => false,
                    _ if at == 0 || at <= c.confirmed_ns => false,
                    // Started after the event: its pid belonged to another
                    // process then, which is gone.
                    Some(start) if start > at => return None,
                    Some(start) => {
                        // Still the same process? Then it held the pid at `at`.
                        if lookup.start_ns(pid) == Some(start) {
                            c.confirmed_ns = crate::journal::mono_ns();
                            false
                        } else {
                            true
                        }
                    }
                };
                if fresh {
                    *c = read(lookup);
                }
                c
            }
            Entry::Vacant(v) => v.insert(read(lookup)),
        };
        if at != 0 && entry.start_ns.is_some_and(|start| start > at) {
            return None;
        }
        entry.info.as_ref()
    }
}
