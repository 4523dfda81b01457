//! The view as rows: sorted, filtered, with rates and times to exhaustion
//! worked out. `top` draws it; `top --once --json` prints it.

use std::net::IpAddr;

use serde::Serialize;
use smol_str::SmolStr;

use super::{Exits, ViewState, S};
use crate::aggregate::{LostByReason, PoolSummary};
use crate::model::{EventKind, Holder, PoolUse};

/// How the process rows are ordered, largest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProcSort {
    #[default]
    TimewaitNow,
    TimewaitRate,
    ConnectRate,
    Failures,
}

impl ProcSort {
    pub fn next(self) -> Self {
        match self {
            ProcSort::TimewaitNow => ProcSort::TimewaitRate,
            ProcSort::TimewaitRate => ProcSort::ConnectRate,
            ProcSort::ConnectRate => ProcSort::Failures,
            ProcSort::Failures => ProcSort::TimewaitNow,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProcSort::TimewaitNow => "TIME_WAIT now",
            ProcSort::TimewaitRate => "TIME_WAIT/s",
            ProcSort::ConnectRate => "connects/s",
            ProcSort::Failures => "failures",
        }
    }
}

/// How the destination rows are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DestSort {
    /// Fullest pool first.
    #[default]
    Pressure,
    /// Soonest exhausted first.
    Exhaustion,
    InUse,
}

impl DestSort {
    pub fn next(self) -> Self {
        match self {
            DestSort::Pressure => DestSort::Exhaustion,
            DestSort::Exhaustion => DestSort::InUse,
            DestSort::InUse => DestSort::Pressure,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DestSort::Pressure => "use %",
            DestSort::Exhaustion => "time to exhaustion",
            DestSort::InUse => "ports in use",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SnapshotOpts {
    pub proc_sort: ProcSort,
    pub dest_sort: DestSort,
    /// Only rows whose command, pid, unit, container or address contains it.
    pub filter: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcRow {
    pub pid: Option<u32>,
    pub comm: Option<SmolStr>,
    pub unit: Option<SmolStr>,
    pub container_runtime: Option<SmolStr>,
    pub container_id: Option<SmolStr>,
    pub pod_uid: Option<SmolStr>,
    pub timewait_now: u64,
    pub timewait_entries: u64,
    pub timewait_entries_per_s: f64,
    pub connects: u64,
    pub connects_per_s: f64,
    pub bind_failures: u64,
    pub connect_failures: u64,
}

/// A destination's pool, as the summary's `pools` has it, and how fast it
/// fills.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestRow {
    #[serde(flatten)]
    pub pool: PoolSummary,
    /// How fast in_use grew over the last ten seconds (ports per second).
    pub growth_per_s: Option<f64>,
    /// Seconds until in_use reaches capacity at that growth; null when it
    /// does not grow.
    pub exhaustion_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureRow {
    #[serde(with = "crate::timefmt::rfc3339_ns")]
    pub time: i128,
    pub event: EventKind,
    pub pid: Option<u32>,
    pub comm: Option<SmolStr>,
    pub errno: Option<SmolStr>,
    pub saddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    pub holder: Option<Box<Holder>>,
    pub pool: Option<Box<PoolUse>>,
    pub lookup_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    #[serde(with = "crate::timefmt::rfc3339_ns")]
    pub time: i128,
    pub duration_s: f64,
    /// How TIME_WAIT exits are found: `sock_diag` (no kernel hook reports
    /// them); `exits` counts them by how they were seen.
    pub timewait_exits: &'static str,
    pub exits: Exits,
    pub events: u64,
    pub lost_by_reason: LostByReason,
    pub processes: Vec<ProcRow>,
    pub destinations: Vec<DestRow>,
    /// Most recent first.
    pub failures: Vec<FailureRow>,
}

/// (now - then) in seconds, at least a millisecond.
fn secs(now: i128, then: i128) -> f64 {
    ((now - then) as f64 / S as f64).max(0.001)
}

fn matches(filter: Option<&str>, fields: &[Option<&str>]) -> bool {
    let Some(f) = filter.filter(|f| !f.is_empty()) else {
        return true;
    };
    let f = f.to_lowercase();
    fields
        .iter()
        .flatten()
        .any(|s| s.to_lowercase().contains(&f))
}

impl ViewState {
    /// The view as rows, as of the last tick.
    pub fn snapshot(&self, opts: &SnapshotOpts) -> Snapshot {
        let now = self.now;
        let filter = opts.filter.as_deref();
        let mut processes: Vec<ProcRow> = self
            .procs
            .values()
            .filter_map(|p| {
                let &(t0, tw0, c0) = p.samples.front()?;
                let dt = secs(now, t0);
                let w = &p.workload;
                let pid = p.key.pid.map(|x| x.to_string());
                let label = w.label();
                let keep = matches(
                    filter,
                    &[
                        p.key.comm.as_deref(),
                        pid.as_deref(),
                        label.as_deref(),
                        w.pod_uid.as_deref(),
                    ],
                );
                keep.then(|| ProcRow {
                    pid: p.key.pid,
                    comm: p.key.comm.clone(),
                    unit: w.unit.clone(),
                    container_runtime: w.container_runtime.clone(),
                    container_id: w.container_id.clone(),
                    pod_uid: w.pod_uid.clone(),
                    timewait_now: p.timewait_now,
                    timewait_entries: p.timewait_entries,
                    timewait_entries_per_s: p.timewait_entries.saturating_sub(tw0) as f64 / dt,
                    connects: p.connects,
                    connects_per_s: p.connects.saturating_sub(c0) as f64 / dt,
                    bind_failures: p.bind_failures,
                    connect_failures: p.connect_failures,
                })
            })
            .collect();
        let key = |r: &ProcRow| -> f64 {
            match opts.proc_sort {
                ProcSort::TimewaitNow => r.timewait_now as f64,
                ProcSort::TimewaitRate => r.timewait_entries_per_s,
                ProcSort::ConnectRate => r.connects_per_s,
                ProcSort::Failures => (r.bind_failures + r.connect_failures) as f64,
            }
        };
        processes.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then(b.timewait_entries.cmp(&a.timewait_entries))
                .then(a.pid.cmp(&b.pid))
        });

        let mut destinations: Vec<DestRow> = self
            .dests
            .iter()
            .filter(|((_, a, p), _)| matches(filter, &[Some(&format!("{a}:{p}"))]))
            .map(|(&(netns, daddr, dport), d)| {
                let growth = match (d.samples.front(), d.samples.back()) {
                    (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
                        Some((n1 as f64 - n0 as f64) / secs(t1, t0))
                    }
                    _ => None,
                };
                let exhaustion_s = d.pool.as_ref().and_then(|p| {
                    if p.in_use >= p.capacity {
                        Some(0.0)
                    } else {
                        growth
                            .filter(|g| *g > 0.0)
                            .map(|g| (p.capacity - p.in_use) as f64 / g)
                    }
                });
                DestRow {
                    pool: PoolSummary {
                        netns,
                        daddr,
                        dport,
                        pressure: d.pool.as_ref().map(PoolUse::pressure),
                        pool: d.pool.clone(),
                        error: d.error.clone(),
                    },
                    growth_per_s: growth,
                    exhaustion_s,
                }
            })
            .collect();
        let in_use = |r: &DestRow| r.pool.pool.as_ref().map_or(0, |p| p.in_use);
        destinations.sort_by(|a, b| {
            let order = match opts.dest_sort {
                DestSort::Pressure => b
                    .pool
                    .pressure
                    .unwrap_or(-1.0)
                    .total_cmp(&a.pool.pressure.unwrap_or(-1.0)),
                DestSort::Exhaustion => a
                    .exhaustion_s
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.exhaustion_s.unwrap_or(f64::INFINITY)),
                DestSort::InUse => in_use(b).cmp(&in_use(a)),
            };
            order.then(in_use(b).cmp(&in_use(a))).then(
                (a.pool.netns, a.pool.daddr, a.pool.dport).cmp(&(
                    b.pool.netns,
                    b.pool.daddr,
                    b.pool.dport,
                )),
            )
        });

        let failures = self
            .failures
            .iter()
            .rev()
            .map(|f| &f.event)
            .filter(|e| {
                let pid = e.pid.map(|x| x.to_string());
                let (a, p) = if e.event == EventKind::Bind {
                    e.local()
                } else {
                    e.remote()
                };
                let addr = format!("{a}:{p}");
                matches(filter, &[e.comm.as_deref(), pid.as_deref(), Some(&addr)])
            })
            .map(|e| FailureRow {
                time: e.time,
                event: e.event,
                pid: e.pid,
                comm: e.comm.clone(),
                errno: e.errno.clone(),
                saddr: e.saddr,
                sport: e.sport,
                daddr: e.daddr,
                dport: e.dport,
                holder: e.holder.clone(),
                pool: e.pool.clone(),
                lookup_error: e.lookup_error.clone(),
            })
            .collect();
        Snapshot {
            time: now,
            duration_s: secs(now, self.started),
            timewait_exits: "sock_diag",
            exits: self.exits,
            events: self.events,
            lost_by_reason: self.lost.clone(),
            processes,
            destinations,
            failures,
        }
    }
}
