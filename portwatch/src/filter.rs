//! Userspace filters. `--pid` and `--port` also run in the kernel for live
//! traces; applying them here too keeps replays and every collector honest.

use crate::model::{Event, EventKind};

/// What a run selects; the summary's `watched` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventFilter {
    pub pid: Option<u32>,
    pub ports: Vec<u16>,
    pub comm: Option<String>,
    /// Only failed bind()/connect() calls.
    pub errors_only: bool,
}

impl EventFilter {
    /// What a run with this filter watches, in words: `port 1433 of every
    /// process`, `ports 80 and 443 of process 12`, `every port of
    /// processes named nginx`.
    pub fn describe(&self) -> String {
        let ports = match self.ports.as_slice() {
            [] => "every port".to_owned(),
            [p] => format!("port {p}"),
            [rest @ .., last] => format!(
                "ports {} and {last}",
                rest.iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let who = match (self.pid, &self.comm) {
            (Some(pid), Some(comm)) => format!("process {pid} if named {comm}"),
            (Some(pid), None) => format!("process {pid}"),
            (None, Some(comm)) => format!("processes named {comm}"),
            (None, None) => "every process".to_owned(),
        };
        format!("{ports} of {who}")
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, pid: u32, comm: &str, sport: u16, dport: u16) -> Event {
        let mut e = Event::new(0, kind);
        e.pid = Some(pid);
        e.comm = Some(comm.into());
        e.sport = Some(sport);
        e.dport = Some(dport);
        e
    }

    #[test]
    fn ports_match_either_end_and_pid_and_comm_must_match() {
        let f = EventFilter {
            ports: vec![1433, 80],
            ..Default::default()
        };
        assert!(f.selects(&ev(EventKind::State, 1, "a", 1433, 50000)));
        assert!(f.selects(&ev(EventKind::State, 1, "a", 50000, 80)));
        assert!(!f.selects(&ev(EventKind::State, 1, "a", 50000, 443)));
        let f = EventFilter {
            pid: Some(7),
            comm: Some("nginx".into()),
            ..Default::default()
        };
        assert!(f.selects(&ev(EventKind::Bind, 7, "nginx", 80, 0)));
        assert!(!f.selects(&ev(EventKind::Bind, 8, "nginx", 80, 0)));
        assert!(!f.selects(&ev(EventKind::Bind, 7, "nginx-worker", 80, 0)));
        let mut unknown = ev(EventKind::State, 0, "", 1, 2);
        unknown.pid = None;
        assert!(!f.selects(&unknown), "an unattributed event is not pid 7's");
    }

    #[test]
    fn describes_what_it_watches() {
        assert_eq!(
            EventFilter::default().describe(),
            "every port of every process"
        );
        let f = EventFilter {
            ports: vec![80, 443, 8080],
            pid: Some(12),
            ..Default::default()
        };
        assert_eq!(f.describe(), "ports 80, 443 and 8080 of process 12");
        let f = EventFilter {
            ports: vec![9999],
            comm: Some("nginx".into()),
            ..Default::default()
        };
        assert_eq!(f.describe(), "port 9999 of processes named nginx");
    }

    #[test]
    fn lost_events_always_pass_and_errors_narrow_only_what_is_shown() {
        let f = EventFilter {
            pid: Some(7),
            ports: vec![1],
            comm: Some("x".into()),
            errors_only: true,
        };
        assert!(f.shows(&Event::lost(0, 5, crate::model::LostReason::RingBuffer)));
        let mut bind = ev(EventKind::Bind, 7, "x", 1, 0);
        bind.set_ret(0);
        assert!(f.selects(&bind) && !f.shows(&bind));
        bind.set_ret(-98);
        assert!(f.shows(&bind));
        let mut pending = ev(EventKind::Connect, 7, "x", 0, 1);
        pending.set_ret(-115);
        assert!(!f.shows(&pending), "EINPROGRESS is not a failure");
    }
}
