//! Aggregation: per-process and per-destination totals, the shape `trace`'s
//! summary, a live `top` view and a metrics exporter all read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

use serde::Serialize;

use crate::model::{Event, EventKind, LostReason};

/// TIME_WAIT lasts TCP_TIMEWAIT_LEN = 60 s on Linux (not tunable there).
pub const TIMEWAIT_NS: i128 = 60 * 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ProcKey {
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    pub events: u64,
    pub timewait: u64,
    /// By (network namespace, address, port): fifty pods each talking to
    /// their own 127.0.0.1:5432 are fifty destinations.
    pub timewait_by_dest: BTreeMap<Dest, u64>,
    pub connect_failures: BTreeMap<String, u64>,
    pub bind_failures: BTreeMap<(String, u16), u64>,
}

/// The local port range outgoing connections draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn size(&self) -> u32 {
        u32::from(self.high.saturating_sub(self.low)) + 1
    }
}

/// A destination as the kernel's port allocator sees it: in one network
/// namespace.
pub type Dest = (Option<u64>, IpAddr, u16);

/// Lost events by reason, every reason always present.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostByReason {
    pub ring_buffer: u64,
    pub recursion: u64,
    pub inferred: u64,
}

impl LostByReason {
    fn add(&mut self, reason: Option<LostReason>, n: u64) {
        match reason {
            Some(LostReason::Recursion) => self.recursion += n,
            Some(LostReason::Inferred) => self.inferred += n,
            // A recording from before reasons were kept: the ring buffer
            // was the only reason then.
            Some(LostReason::RingBuffer) | None => self.ring_buffer += n,
        }
    }
}

#[derive(Debug, Default)]
pub struct Aggregator {
    procs: HashMap<ProcKey, ProcStats>,
    events: u64,
    lost: u64,
    lost_by_reason: LostByReason,
    /// TIME_WAIT entries of the last 60 s, oldest first, to estimate how many
    /// are still in the table per destination.
    recent_tw: VecDeque<(i128, Dest)>,
    range: Option<PortRange>,
    first: Option<i128>,
    last: Option<i128>,
    /// When the run began (wall-clock ns), for the summary's duration.
    started: Option<i128>,
}

impl Aggregator {
    pub fn new(range: Option<PortRange>) -> Self {
        Aggregator {
            range,
            ..Default::default()
        }
    }

    /// The run began at `t` (wall-clock ns): the summary's duration is the
    /// time from then, not the span between the first and last event.
    pub fn started_at(&mut self, t: i128) {
        self.started = Some(t);
    }

    pub fn add(&mut self, ev: &Event) {
        self.first.get_or_insert(ev.time);
        self.last = Some(self.last.map_or(ev.time, |l| l.max(ev.time)));
        if ev.event == EventKind::Lost {
            let n = ev.lost.unwrap_or(0);
            self.lost += n;
            self.lost_by_reason.add(ev.lost_reason, n);
            return;
        }
        self.events += 1;
        let stats = self
            .procs
            .entry(ProcKey {
                pid: ev.pid,
                comm: ev.comm.clone(),
            })
            .or_default();
        stats.events += 1;
        match ev.event {
            EventKind::Timewait => {
                stats.timewait += 1;
                let (daddr, dport) = ev.remote();
                let dest = (ev.netns, daddr, dport);
                *stats.timewait_by_dest.entry(dest).or_default() += 1;
                self.recent_tw.push_back((ev.time, dest));
                self.expire(ev.time);
            }
            EventKind::Connect if ev.is_failure() => {
                if let Some(e) = &ev.errno {
                    *stats.connect_failures.entry(e.clone()).or_default() += 1;
                }
            }
            EventKind::Bind if ev.is_failure() => {
                if let Some(e) = &ev.errno {
                    let port = ev.sport.unwrap_or(0);
                    *stats.bind_failures.entry((e.clone(), port)).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    fn expire(&mut self, now: i128) {
        while self
            .recent_tw
            .front()
            .is_some_and(|(t, _)| *t <= now - TIMEWAIT_NS)
        {
            self.recent_tw.pop_front();
        }
    }

    pub fn lost(&self) -> u64 {
        self.lost
    }

    pub fn process_stats(&self) -> &HashMap<ProcKey, ProcStats> {
        &self.procs
    }

    /// The summary as of `now` (wall-clock ns).
    pub fn summary(&mut self, now: i128) -> Summary {
        self.expire(now);
        let mut active: BTreeMap<Dest, u64> = BTreeMap::new();
        for (_, dest) in &self.recent_tw {
            *active.entry(*dest).or_default() += 1;
        }
        let capacity = self.range.map(|r| r.size());
        let mut destinations: Vec<DestSummary> = active
            .into_iter()
            .map(|((netns, daddr, dport), n)| DestSummary {
                netns,
                daddr,
                dport,
                timewait_active: n,
                capacity,
                pressure: capacity.map(|c| n as f64 / f64::from(c)),
            })
            .collect();
        destinations.sort_by_key(|d| std::cmp::Reverse(d.timewait_active));

        let mut processes: Vec<ProcSummary> = self
            .procs
            .iter()
            .map(|(k, s)| ProcSummary {
                pid: k.pid,
                comm: k.comm.clone(),
                events: s.events,
                timewait: s.timewait,
                timewait_destinations: s
                    .timewait_by_dest
                    .iter()
                    .map(|((netns, daddr, dport), count)| DestCount {
                        netns: *netns,
                        daddr: *daddr,
                        dport: *dport,
                        count: *count,
                    })
                    .collect(),
                connect_failures: s.connect_failures.clone(),
                bind_failures: s
                    .bind_failures
                    .iter()
                    .map(|((errno, port), count)| BindFailure {
                        errno: errno.clone(),
                        port: *port,
                        count: *count,
                    })
                    .collect(),
            })
            .collect();
        processes.sort_by(|a, b| {
            let fails = |p: &ProcSummary| {
                p.connect_failures.values().sum::<u64>()
                    + p.bind_failures.iter().map(|b| b.count).sum::<u64>()
            };
            (b.timewait, fails(b), b.events, &a.pid).cmp(&(a.timewait, fails(a), a.events, &b.pid))
        });
        Summary {
            event: "summary",
            schema_version: crate::model::SCHEMA_VERSION,
            time: now,
            duration_s: match (self.started, self.first, self.last) {
                (Some(s), _, _) => (now - s).max(0) as f64 / 1e9,
                (None, Some(f), Some(l)) => (l - f) as f64 / 1e9,
                _ => 0.0,
            },
            events: self.events,
            lost: self.lost,
            lost_by_reason: self.lost_by_reason.clone(),
            ephemeral_range: self.range,
            timewait_destinations: destinations,
            processes,
            watched: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestCount {
    pub netns: Option<u64>,
    pub daddr: IpAddr,
    pub dport: u16,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BindFailure {
    pub errno: String,
    pub port: u16,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcSummary {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub events: u64,
    pub timewait: u64,
    pub timewait_destinations: Vec<DestCount>,
    pub connect_failures: BTreeMap<String, u64>,
    pub bind_failures: Vec<BindFailure>,
}

/// TIME_WAIT sockets still (by the 60 s rule) in the table for one
/// destination, against the ports the ephemeral range offers it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestSummary {
    pub netns: Option<u64>,
    pub daddr: IpAddr,
    pub dport: u16,
    pub timewait_active: u64,
    pub capacity: Option<u32>,
    /// timewait_active / capacity: 1.0 means the next connect() to this
    /// destination from the same source address fails with EADDRNOTAVAIL.
    pub pressure: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub event: &'static str,
    pub schema_version: u32,
    #[serde(with = "crate::timefmt::rfc3339_ns")]
    pub time: i128,
    /// How long the run lasted (wall time), whether or not anything happened.
    pub duration_s: f64,
    pub events: u64,
    /// Every lost event, whatever the reason; `lost_by_reason` splits it.
    pub lost: u64,
    pub lost_by_reason: LostByReason,
    pub ephemeral_range: Option<PortRange>,
    pub timewait_destinations: Vec<DestSummary>,
    pub processes: Vec<ProcSummary>,
    /// What the run selected (set by the pipeline).
    pub watched: Option<crate::filter::EventFilter>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    fn tw(time: i128, pid: u32, dport: u16) -> Event {
        let mut ev = Event::new(time, EventKind::Timewait);
        ev.pid = Some(pid);
        ev.comm = Some("client".into());
        ev.daddr = Some("10.0.0.9".parse().expect("ip"));
        ev.dport = Some(dport);
        ev
    }

    #[test]
    fn timewait_pressure_counts_only_the_last_sixty_seconds() {
        let mut agg = Aggregator::new(Some(PortRange {
            low: 40000,
            high: 40009,
        }));
        for t in 0..4 {
            agg.add(&tw(t * S, 1, 80));
        }
        agg.add(&tw(30 * S, 2, 443));
        let s = agg.summary(59 * S);
        assert_eq!(s.timewait_destinations[0].timewait_active, 4);
        assert_eq!(s.timewait_destinations[0].pressure, Some(0.4));
        // At 62 s the first three have left TIME_WAIT.
        let s = agg.summary(62 * S);
        let d80 = s
            .timewait_destinations
            .iter()
            .find(|d| d.dport == 80)
            .expect("80");
        assert_eq!(d80.timewait_active, 1);
        // Totals per process never expire.
        let p1 = s
            .processes
            .iter()
            .find(|p| p.pid == Some(1))
            .expect("pid 1");
        assert_eq!(p1.timewait, 4);
        assert_eq!(s.processes[0].pid, Some(1), "most TIME_WAIT first");
    }

    #[test]
    fn the_duration_is_the_wall_time_of_the_run_not_the_span_of_events() {
        let mut agg = Aggregator::new(None);
        agg.started_at(10 * S);
        assert_eq!(agg.summary(13 * S).duration_s, 3.0, "nothing happened");
        agg.add(&tw(11 * S, 1, 80));
        agg.add(&tw(11 * S + 300_000_000, 1, 80));
        assert_eq!(agg.summary(18 * S).duration_s, 8.0);
        // Without a start (a bare aggregator), the span of the events.
        let mut agg = Aggregator::new(None);
        agg.add(&tw(S, 1, 80));
        agg.add(&tw(3 * S, 1, 80));
        assert_eq!(agg.summary(9 * S).duration_s, 2.0);
    }

    #[test]
    fn failures_are_counted_by_errno_and_port_and_einprogress_is_not_one() {
        let mut agg = Aggregator::new(None);
        let mut c = Event::new(0, EventKind::Connect);
        c.pid = Some(3);
        c.set_ret(-99);
        agg.add(&c);
        c.set_ret(-115);
        agg.add(&c);
        let mut b = Event::new(0, EventKind::Bind);
        b.pid = Some(3);
        b.sport = Some(1433);
        b.set_ret(-98);
        agg.add(&b);
        agg.add(&b);
        agg.add(&Event::lost(1, 7, LostReason::RingBuffer));
        agg.add(&Event::lost(1, 2, LostReason::Inferred));
        let s = agg.summary(2);
        let p = &s.processes[0];
        assert_eq!(p.connect_failures.get("EADDRNOTAVAIL"), Some(&1));
        assert_eq!(p.connect_failures.len(), 1);
        assert_eq!(
            p.bind_failures,
            vec![BindFailure {
                errno: "EADDRINUSE".into(),
                port: 1433,
                count: 2
            }]
        );
        assert_eq!(s.lost, 9);
        assert_eq!(
            s.lost_by_reason,
            LostByReason {
                ring_buffer: 7,
                recursion: 0,
                inferred: 2
            }
        );
        assert_eq!(s.events, 4);
    }
}
