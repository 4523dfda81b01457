//! Userspace filters. `--pid` and `--port` also run in the kernel for live
//! traces; applying them here too keeps replays and every collector honest.

use crate::model::{Event, EventKind};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub pid: Option<u32>,
    pub ports: Vec<u16>,
    pub comm: Option<String>,
    /// Only failed bind()/connect() calls.
    pub errors_only: bool,
}

impl EventFilter {
    /// Whether the event belongs to what the user asked about (pid, port,
    /// comm). Lost events always do: a gap must never be hidden.
    pub fn selects(&self, ev: &Event) -> bool {
        if ev.event == EventKind::Lost {
            return true;
        }
        if let Some(pid) = self.pid {
            if ev.pid != Some(pid) {
                return false;
            }
        }
        if !self.ports.is_empty() {
            let hit = |p: Option<u16>| p.is_some_and(|p| self.ports.contains(&p));
            if !hit(ev.sport) && !hit(ev.dport) {
                return false;
            }
        }
        if let Some(comm) = &self.comm {
            if ev.comm.as_deref() != Some(comm.as_str()) {
                return false;
            }
        }
        true
    }

    /// Whether the event is printed (`--errors` narrows the stream, not the summary).
    pub fn shows(&self, ev: &Event) -> bool {
        self.selects(ev) && (!self.errors_only || ev.event == EventKind::Lost || ev.is_failure())
    }
}
