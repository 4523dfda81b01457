//! Userspace filters. `--pid` and `--port` also run in the kernel for live
//! traces; applying them here too keeps replays and every collector honest.

use std::net::IpAddr;

use serde::Serialize;

use crate::escape::visible;
use crate::model::{Event, EventKind, TcpState};

/// `10.0.0.5`, `10.0.0.5:5432`, `[::1]:5432` or `:5432`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Remote {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
}

impl Remote {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad =
            || format!("`{s}` is not a remote end: give ADDR, ADDR:PORT, [IPv6]:PORT or :PORT");
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Remote {
                addr: Some(addr),
                port: None,
            });
        }
        if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
            return Ok(Remote {
                addr: Some(sa.ip()),
                port: Some(port(&sa.port().to_string())?),
            });
        }
        match s.strip_prefix(':') {
            Some(p) => Ok(Remote {
                addr: None,
                port: Some(port(p)?),
            }),
            None => Err(bad()),
        }
    }

    /// Whether a socket's remote end is this one (an IPv4 address matches
    /// its IPv4-mapped IPv6 form too).
    pub fn matches(&self, addr: IpAddr, port: u16) -> bool {
        self.addr
            .is_none_or(|a| a.to_canonical() == addr.to_canonical())
            && self.port.is_none_or(|p| p == port)
    }
}

/// A state as a user types it (`time-wait`, `ESTAB`, `listen`) as the kernel
/// names it (`TIME_WAIT`, `ESTABLISHED`, `LISTEN`).
pub fn parse_state(s: &str) -> Result<String, String> {
    let up = s.trim().to_ascii_uppercase().replace('-', "_");
    let name = match up.as_str() {
        "ESTAB" => "ESTABLISHED".to_owned(),
        "TIMEWAIT" => "TIME_WAIT".to_owned(),
        "UNCONN" => "UNCONN".to_owned(),
        other => (1..=12)
            .filter_map(TcpState::from_kernel)
            .map(|st| st.name())
            .find(|n| *n == other || n.replace('_', "") == other)
            .map(str::to_owned)
            .ok_or_else(|| {
                format!("`{s}` is not a socket state: use LISTEN, ESTABLISHED, TIME_WAIT, CLOSE_WAIT, SYN_SENT, FIN_WAIT1, FIN_WAIT2, ... or UNCONN (UDP)")
            })?,
    };
    Ok(name)
}

/// The kernel keeps a command name in 16 bytes, NUL included.
pub const COMM_MAX: usize = 15;

/// A `--comm` as the kernel would hold it: at most [`COMM_MAX`] bytes. A
/// longer name can never match as given, so it is cut as the kernel cuts
/// it, and the warning says so.
pub fn comm_as_kernel_keeps_it(comm: &str) -> (String, Option<String>) {
    if comm.len() <= COMM_MAX {
        return (comm.to_owned(), None);
    }
    let cut = String::from_utf8_lossy(&comm.as_bytes()[..COMM_MAX]).into_owned();
    let warning = format!(
        "--comm {} is longer than the {COMM_MAX} bytes the kernel keeps of a command name; matching `{}` instead, as the kernel shows it",
        visible(comm),
        visible(&cut)
    );
    (cut, Some(warning))
}

/// What is wrong with `--pid PID` on this system, if anything: a pid no
/// process has, or a thread's id (the filter selects processes). `tgid_of`
/// says whether PID exists now and its process (thread group) id.
pub fn pid_warning(pid: u32, tgid_of: impl Fn(u32) -> Option<u32>) -> Option<String> {
    match tgid_of(pid) {
        None => Some(format!(
            "no process {pid} is running now: --pid selects the process with that id, so this trace will show nothing unless one appears (check it with `ps -p {pid}` or `pgrep NAME`)"
        )),
        Some(tgid) if tgid != pid => Some(format!(
            "{pid} is a thread of process {tgid}, and --pid selects processes: use --pid {tgid}"
        )),
        Some(_) => None,
    }
}

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
    fn a_comm_longer_than_the_kernel_keeps_is_cut_and_said() {
        assert_eq!(comm_as_kernel_keeps_it("nginx"), ("nginx".to_owned(), None));
        let exact = "a".repeat(15);
        assert_eq!(comm_as_kernel_keeps_it(&exact), (exact.clone(), None));
        let (cut, warning) = comm_as_kernel_keeps_it("verylongprocessname");
        assert_eq!(cut, "verylongprocess");
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("--comm verylongprocessname is longer than the 15 bytes")
                && warning.contains("matching `verylongprocess`"),
            "{warning}"
        );
        // Cut as the kernel cuts: by bytes, a split character shown lossily.
        let (cut, _) = comm_as_kernel_keeps_it("ééééééééé");
        assert_eq!(cut, "ééééééé\u{fffd}");
    }

    #[test]
    fn a_pid_that_is_no_process_is_said() {
        let w = pid_warning(4_000_000, |_| None).expect("warning");
        assert!(w.starts_with("no process 4000000 is running now"), "{w}");
        let w = pid_warning(101, |_| Some(100)).expect("warning");
        assert_eq!(
            w,
            "101 is a thread of process 100, and --pid selects processes: use --pid 100"
        );
        assert_eq!(pid_warning(100, |_| Some(100)), None);
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
