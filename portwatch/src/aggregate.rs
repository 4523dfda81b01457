//! Aggregation: per-process and per-destination totals, the shape `trace`'s
//! summary, a live `top` view and a metrics exporter all read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

use serde::Serialize;

use crate::model::{Event, EventKind, LostReason, PoolUse, Side, SmolStr, TcpState};

/// TIME_WAIT lasts TCP_TIMEWAIT_LEN = 60 s on Linux (not tunable there).
pub const TIMEWAIT_NS: i128 = 60 * 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ProcKey {
    pub pid: Option<u32>,
    pub comm: Option<SmolStr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    pub events: u64,
    pub timewait: u64,
    /// By (network namespace, address, port): fifty pods each talking to
    /// their own 127.0.0.1:5432 are fifty destinations.
    pub timewait_by_dest: BTreeMap<Dest, u64>,
    /// By errno and destination (when the hook saw it).
    pub connect_failures: BTreeMap<(String, Dest), u64>,
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

pub use crate::model::Dest;

/// Lost events by reason, every reason always present.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostByReason {
    pub ring_buffer: u64,
    pub recursion: u64,
    pub inferred: u64,
    pub overflow: u64,
}

impl LostByReason {
    pub fn add(&mut self, reason: Option<LostReason>, n: u64) {
        match reason {
            Some(LostReason::Recursion) => self.recursion += n,
            Some(LostReason::Inferred) => self.inferred += n,
            Some(LostReason::Overflow) => self.overflow += n,
            // A recording from before reasons were kept: the ring buffer
            // was the only reason then.
            Some(LostReason::RingBuffer) | None => self.ring_buffer += n,
        }
    }

    pub fn total(&self) -> u64 {
        self.ring_buffer + self.recursion + self.inferred + self.overflow
    }
}

/// Per process: keyed by pid and name, which no remote peer chooses, so
/// hashed with a cheaper seeded hash than SipHash (one lookup per event).
pub type ProcTable = HashMap<ProcKey, ProcStats, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub struct Aggregator {
    procs: ProcTable,
    events: u64,
    lost: u64,
    lost_by_reason: LostByReason,
    /// Client-side TIME_WAIT entries of the last 60 s, oldest first.
    recent_tw: VecDeque<(i128, Dest)>,
    /// Destinations this run saw clients connect to: their ephemeral pools
    /// are what the summary measures.
    client_dests: std::collections::BTreeSet<Dest>,
    range: Option<PortRange>,
    first: Option<i128>,
    last: Option<i128>,
    /// Events counted per process in the kernel (aggregate mode): pid ->
    /// (events, command name). They replace the counts of what crossed the
    /// ring, which is only the rare part.
    kernel_counts: Option<HashMap<u32, (u64, String)>>,
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
        let (daddr, dport) = ev.remote();
        let dest = (ev.netns, daddr, dport);
        let client = ev.side == Some(Side::Client);
        match ev.event {
            EventKind::Timewait => {
                stats.timewait += 1;
                // A server's TIME_WAIT holds its own listening port, not a
                // port of a pool: the remote end is the client's ephemeral
                // port, no destination at all.
                if client {
                    *stats.timewait_by_dest.entry(dest).or_default() += 1;
                    self.recent_tw.push_back((ev.time, dest));
                    self.client_dests.insert(dest);
                }
                self.expire(ev.time);
            }
            EventKind::Connect => {
                if ev.dport.is_some() && ev.daddr.is_some() {
                    self.client_dests.insert(dest);
                }
                if ev.is_failure() {
                    if let Some(e) = &ev.errno {
                        *stats
                            .connect_failures
                            .entry((e.to_string(), dest))
                            .or_default() += 1;
                    }
                }
            }
            EventKind::State
                if client
                    && ev.old_state == Some(TcpState::SynSent)
                    && ev.new_state == Some(TcpState::Established) =>
            {
                self.client_dests.insert(dest);
            }
            EventKind::Bind if ev.is_failure() => {
                if let Some(e) = &ev.errno {
                    let port = ev.sport.unwrap_or(0);
                    *stats
                        .bind_failures
                        .entry((e.to_string(), port))
                        .or_default() += 1;
                }
            }
            // A failure inferred on a hook that cannot see the errno.
            EventKind::Bind if ev.ret.is_none() && ev.inferred.is_some() => {
                let port = ev.sport.unwrap_or(0);
                *stats
                    .bind_failures
                    .entry(("unknown".to_owned(), port))
                    .or_default() += 1;
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

    /// Events the kernel counted per process (aggregate mode).
    pub fn set_kernel_counts(&mut self, counts: HashMap<u32, (u64, String)>) {
        self.kernel_counts = Some(counts);
    }

    /// Destinations clients connected to during the run.
    pub fn client_dests(&self) -> Vec<Dest> {
        self.client_dests.iter().copied().collect()
    }

    pub fn lost(&self) -> u64 {
        self.lost
    }

    pub fn process_stats(&self) -> &ProcTable {
        &self.procs
    }

    /// The summary as of `now` (wall-clock ns).
    pub fn summary(&mut self, now: i128) -> Summary {
        self.expire(now);
        if let Some(counts) = self.kernel_counts.take() {
            self.events = counts.values().map(|(n, _)| n).sum();
            for (pid, (n, comm)) in counts {
                let pid = (pid != 0).then_some(pid);
                let key = self
                    .procs
                    .keys()
                    .find(|k| k.pid == pid)
                    .cloned()
                    .unwrap_or(ProcKey {
                        pid,
                        comm: pid.map(|_| comm.into()),
                    });
                self.procs.entry(key).or_default().events = n;
            }
        }
        let mut active: BTreeMap<Dest, u64> = BTreeMap::new();
        for (_, dest) in &self.recent_tw {
            *active.entry(*dest).or_default() += 1;
        }
        let mut destinations: Vec<DestSummary> = active
            .into_iter()
            .map(|((netns, daddr, dport), n)| DestSummary {
                netns,
                daddr,
                dport,
                timewait_entered_60s: n,
            })
            .collect();
        destinations.sort_by_key(|d| std::cmp::Reverse(d.timewait_entered_60s));

        let mut processes: Vec<ProcSummary> = self
            .procs
            .iter()
            .map(|(k, s)| ProcSummary {
                pid: k.pid,
                comm: k.comm.as_deref().map(String::from),
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
                connect_failures: s
                    .connect_failures
                    .iter()
                    .map(|((errno, (netns, daddr, dport)), count)| ConnectFailure {
                        errno: errno.clone(),
                        netns: *netns,
                        daddr: *daddr,
                        dport: *dport,
                        count: *count,
                    })
                    .collect(),
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
                p.connect_failures.iter().map(|c| c.count).sum::<u64>()
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
            ring_events: None,
            ephemeral_range: self.range,
            timewait_destinations: destinations,
            pools: Vec::new(),
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

/// Failed connect()s of one errno to one destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectFailure {
    pub errno: String,
    pub netns: Option<u64>,
    pub daddr: IpAddr,
    pub dport: u16,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcSummary {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub events: u64,
    pub timewait: u64,
    pub timewait_destinations: Vec<DestCount>,
    pub connect_failures: Vec<ConnectFailure>,
    pub bind_failures: Vec<BindFailure>,
}

/// Client-side TIME_WAIT entries towards one destination in the last 60 s
/// (the TIME_WAIT length): what the trace saw enter, whether or not the
/// kernel recycled some since. The pools say what holds ports now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestSummary {
    pub netns: Option<u64>,
    pub daddr: IpAddr,
    pub dport: u16,
    pub timewait_entered_60s: u64,
}

/// One destination's ephemeral pool at the end of the run, counted in its
/// own namespace's socket table against that namespace's range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolSummary {
    pub netns: Option<u64>,
    pub daddr: IpAddr,
    pub dport: u16,
    #[serde(flatten)]
    pub pool: Option<PoolUse>,
    /// in_use / capacity.
    pub pressure: Option<f64>,
    /// Why the pool could not be counted.
    pub error: Option<String>,
}

impl PoolSummary {
    pub fn new(dest: Dest, pool: Result<PoolUse, String>) -> Self {
        let (netns, daddr, dport) = dest;
        match pool {
            Ok(p) => PoolSummary {
                netns,
                daddr,
                dport,
                pressure: Some(p.pressure()),
                pool: Some(p),
                error: None,
            },
            Err(e) => PoolSummary {
                netns,
                daddr,
                dport,
                pool: None,
                pressure: None,
                error: Some(e),
            },
        }
    }
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
    /// Records that crossed the kernel's ring buffer (null in a replay): in
    /// aggregate mode only the rare ones do, the rest are counted there.
    pub ring_events: Option<u64>,
    pub lost_by_reason: LostByReason,
    /// portwatch's own namespace's range; each pool carries its own.
    pub ephemeral_range: Option<PortRange>,
    pub timewait_destinations: Vec<DestSummary>,
    /// The pools of the destinations clients connected to, busiest first.
    pub pools: Vec<PoolSummary>,
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
        ev.side = Some(Side::Client);
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
        // A server's TIME_WAIT names the client's ephemeral port as its
        // remote end: it is not a destination.
        let mut server = tw(5 * S, 3, 51234);
        server.side = Some(Side::Server);
        agg.add(&server);
        let s = agg.summary(59 * S);
        assert_eq!(s.timewait_destinations[0].timewait_entered_60s, 4);
        assert_eq!(
            s.timewait_destinations.len(),
            2,
            "{:?}",
            s.timewait_destinations
        );
        assert_eq!(agg.client_dests().len(), 2);
        // At 62 s the first three have left TIME_WAIT.
        let s = agg.summary(62 * S);
        let d80 = s
            .timewait_destinations
            .iter()
            .find(|d| d.dport == 80)
            .expect("80");
        assert_eq!(d80.timewait_entered_60s, 1);
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
        c.daddr = Some("10.0.0.9".parse().expect("ip"));
        c.dport = Some(5432);
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
        agg.add(&Event::lost(1, 3, LostReason::Overflow));
        let s = agg.summary(2);
        let p = &s.processes[0];
        assert_eq!(p.connect_failures.len(), 1);
        let f = &p.connect_failures[0];
        assert_eq!(
            (f.errno.as_str(), f.dport, f.count),
            ("EADDRNOTAVAIL", 5432, 1)
        );
        assert_eq!(
            p.bind_failures,
            vec![BindFailure {
                errno: "EADDRINUSE".into(),
                port: 1433,
                count: 2
            }]
        );
        assert_eq!(s.lost, 12);
        assert_eq!(
            s.lost_by_reason,
            LostByReason {
                ring_buffer: 7,
                recursion: 0,
                inferred: 2,
                overflow: 3,
            }
        );
        assert_eq!(s.events, 4);
    }
}
