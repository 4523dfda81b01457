//! What /proc says about each process, read once per process and shared
//! by all its events: the command line and cgroup are counted references,
//! so enriching an event allocates nothing.

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

#[derive(Default)]
pub struct Procs {
    /// By pid: the command name it was read under, and what was read.
    by_pid: HashMap<u32, (Option<SmolStr>, Option<Shared>), foldhash::fast::RandomState>,
}

impl Procs {
    /// What `lookup` says about `pid`, asked once per process. A pid can
    /// be reused: the entry is valid only for the same `comm`.
    pub fn get<P: ProcessLookup>(
        &mut self,
        lookup: &mut P,
        pid: u32,
        comm: &Option<SmolStr>,
    ) -> Option<&Shared> {
        if self.by_pid.len() >= MAX_PROCS && self.by_pid.get(&pid).is_none_or(|(c, _)| c != comm) {
            self.by_pid.clear();
        }
        let mut read = || (comm.clone(), lookup.lookup(pid).map(Shared::from));
        // One table lookup for the common case, a process already read.
        let entry = match self.by_pid.entry(pid) {
            Entry::Occupied(o) => {
                let e = o.into_mut();
                if e.0 != *comm {
                    *e = read();
                }
                e
            }
            Entry::Vacant(v) => v.insert(read()),
        };
        entry.1.as_ref()
    }
}
