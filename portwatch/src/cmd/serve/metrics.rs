//! The Prometheus metrics `serve` exposes, named as node_exporter names
//! its own (`portwatch_<what>_total` counters, base units, `_ratio`), built
//! afresh at each scrape from counters kept here and the [`ViewState`].
//!
//! Label cardinality is bounded by `top_k`. A process series is labelled
//! by what a fleet recognises (command, unit, container, pod), not by pid.
//! Counters must never go down, so a process keeps its series once it has
//! one: the first `top_k` to count get one each, later ones count in the
//! `other` series, and a series idle for [`RETIRE_NS`] is folded into
//! `other` to make room. The sum over a counter's series is always the
//! exact total. Gauges have no such constraint: each scrape names the
//! `top_k` largest and sums the rest into `other`.

use smol_str::SmolStr;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::model::{Counted, Event, EventKind, TcpState};
use crate::view::ViewState;
use crate::workload::Workload;

/// A process series idle this long gives its place up.
pub const RETIRE_NS: i128 = 120 * 1_000_000_000;
/// The label value of the series that sums the rest.
pub const OTHER: &str = "other";

pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

/// Who a process series is: its command and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Identity {
    comm: String,
    workload: Workload,
}

impl Identity {
    fn of(ev: &Event) -> Identity {
        Identity {
            comm: ev.comm.as_deref().unwrap_or("unknown").to_owned(),
            workload: ev.workload(),
        }
    }

    fn other() -> Identity {
        Identity {
            comm: OTHER.to_owned(),
            workload: Workload::default(),
        }
    }

    fn labels(&self) -> Labels {
        let w = &self.workload;
        let s = |v: &Option<SmolStr>| v.as_deref().unwrap_or_default().to_owned();
        vec![
            ("comm", self.comm.clone()),
            ("unit", s(&w.unit)),
            ("container_runtime", s(&w.container_runtime)),
            ("container_id", s(&w.container_id)),
            ("pod_uid", s(&w.pod_uid)),
        ]
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counts {
    timewait_entries: u64,
    connects: u64,
    bind_failures: BTreeMap<String, u64>,
    connect_failures: BTreeMap<String, u64>,
    last_active: i128,
}

impl Counts {
    fn fold_into(self, other: &mut Counts) {
        other.timewait_entries += self.timewait_entries;
        other.connects += self.connects;
        for (e, n) in self.bind_failures {
            *other.bind_failures.entry(e).or_default() += n;
        }
        for (e, n) in self.connect_failures {
            *other.connect_failures.entry(e).or_default() += n;
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    top_k: usize,
    events: u64,
    transitions: BTreeMap<(TcpState, TcpState), u64>,
    named: HashMap<Identity, Counts>,
    other: Counts,
    /// Events, transitions and successful connects come from the kernel's
    /// counts ([`Metrics::add_counted`]), not from the events received.
    kernel_counts: bool,
}

impl Metrics {
    pub fn new(top_k: usize) -> Self {
        Metrics {
            top_k: top_k.max(1),
            events: 0,
            transitions: BTreeMap::new(),
            named: HashMap::new(),
            other: Counts::default(),
            kernel_counts: false,
        }
    }

    /// See [`ViewState::counted_in_kernel`].
    pub fn counted_in_kernel(&mut self, on: bool) {
        self.kernel_counts = on;
    }

    /// What the kernel counted instead of sending (aggregate mode), as of `now`.
    pub fn add_counted(&mut self, c: &Counted, now: i128) {
        self.events += c.events;
        for (old, new, n) in &c.transitions {
            *self.transitions.entry((*old, *new)).or_default() += n;
        }
        for cc in &c.connects {
            let id = Identity {
                comm: cc.comm.as_deref().unwrap_or("unknown").to_owned(),
                workload: cc.workload.clone(),
            };
            let counts = self.counts_of(id);
            counts.connects += cc.n;
            counts.last_active = now;
        }
    }

    fn counts(&mut self, ev: &Event) -> &mut Counts {
        self.counts_of(Identity::of(ev))
    }

    /// A process's counts: its own series, a new one while there is room,
    /// else `other`.
    fn counts_of(&mut self, id: Identity) -> &mut Counts {
        // A process really named `other` cannot have a series of its own:
        // it would share the aggregate's labels.
        if id == Identity::other() {
            return &mut self.other;
        }
        if !self.named.contains_key(&id) && self.named.len() >= self.top_k {
            return &mut self.other;
        }
        self.named.entry(id).or_default()
    }

    pub fn add(&mut self, ev: &Event) {
        if ev.event == EventKind::Lost {
            return;
        }
        if !self.kernel_counts {
            self.events += 1;
            if let (EventKind::State | EventKind::Listen, Some(old), Some(new)) =
                (ev.event, ev.old_state, ev.new_state)
            {
                *self.transitions.entry((old, new)).or_default() += 1;
            }
        }
        let time = ev.time;
        match ev.event {
            EventKind::Timewait => self.counts(ev).timewait_entries += 1,
            EventKind::Connect => {
                let failed = ev
                    .is_failure()
                    .then(|| ev.errno.as_deref().map(str::to_owned))
                    .flatten();
                let c = self.counts(ev);
                c.connects += 1;
                if let Some(e) = failed {
                    *c.connect_failures.entry(e).or_default() += 1;
                }
            }
            EventKind::Bind => {
                let errno = match (&ev.errno, ev.is_failure(), ev.inferred.is_some()) {
                    (Some(e), true, _) => e.to_string(),
                    (None, _, true) if ev.ret.is_none() => "unknown".to_owned(),
                    _ => return,
                };
                *self.counts(ev).bind_failures.entry(errno).or_default() += 1;
            }
            _ => return,
        }
        self.counts(ev).last_active = time;
    }

    /// Folds series idle since before `now` - [`RETIRE_NS`] into `other`.
    pub fn retire(&mut self, now: i128) {
        let idle: Vec<Identity> = self
            .named
            .iter()
            .filter(|(_, c)| c.last_active < now - RETIRE_NS)
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            if let Some(c) = self.named.remove(&id) {
                c.fold_into(&mut self.other);
            }
        }
    }

    /// The exposition, Prometheus text format 0.0.4.
    pub fn encode(&self, view: &ViewState) -> Result<String, std::fmt::Error> {
        let mut reg = Registry::with_prefix("portwatch");
        self.counters(&mut reg, view);
        gauges(&mut reg, view, self.top_k);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &reg)?;
        Ok(out)
    }

    fn counters(&self, reg: &mut Registry, view: &ViewState) {
        let events = Counter::<u64>::default();
        events.inc_by(self.events);
        reg.register("events", "Socket events seen (all kinds)", events);

        let transitions = Family::<Labels, Counter>::default();
        for ((old, new), n) in &self.transitions {
            let l = vec![
                ("old_state", old.name().into()),
                ("new_state", new.name().into()),
            ];
            transitions.get_or_create(&l).inc_by(*n);
        }
        reg.register(
            "tcp_transitions",
            "TCP state transitions, by old and new state",
            transitions,
        );

        let series = || {
            self.named
                .iter()
                .map(|(id, c)| (id.labels(), c))
                .chain(std::iter::once((Identity::other().labels(), &self.other)))
        };
        let timewait = Family::<Labels, Counter>::default();
        let connects = Family::<Labels, Counter>::default();
        let bind = Family::<Labels, Counter>::default();
        let connect = Family::<Labels, Counter>::default();
        for (labels, c) in series() {
            timewait.get_or_create(&labels).inc_by(c.timewait_entries);
            connects.get_or_create(&labels).inc_by(c.connects);
            for (family, failures) in [(&bind, &c.bind_failures), (&connect, &c.connect_failures)] {
                for (errno, n) in failures {
                    let mut l = vec![("errno", errno.clone())];
                    l.extend(labels.iter().cloned());
                    family.get_or_create(&l).inc_by(*n);
                }
            }
        }
        reg.register(
            "tcp_timewait_entries",
            "Sockets that entered TIME_WAIT, by process",
            timewait,
        );
        reg.register("tcp_connects", "connect() calls, by process", connects);
        reg.register(
            "bind_failures",
            "Failed bind() calls, by errno and process",
            bind,
        );
        reg.register(
            "connect_failures",
            "Failed connect() calls, by errno and process",
            connect,
        );

        let lost = Family::<Labels, Counter>::default();
        let l = view.lost();
        for (reason, n) in [
            ("ring_buffer", l.ring_buffer),
            ("recursion", l.recursion),
            ("inferred", l.inferred),
            ("overflow", l.overflow),
        ] {
            lost.get_or_create(&vec![("reason", reason.into())])
                .inc_by(n);
        }
        reg.register("lost_events", "Events lost, by reason", lost);

        let exits = Family::<Labels, Counter>::default();
        let e = view.exits();
        for (how, n) in [("sock_diag", e.sock_diag), ("timer", e.timer)] {
            exits.get_or_create(&vec![("how", how.into())]).inc_by(n);
        }
        reg.register(
            "tcp_timewait_exits",
            "TIME_WAIT sockets seen to leave, by how: gone from the socket table (sock_diag) or assumed gone after 60 s (timer)",
            exits,
        );
    }
}

/// The `k` largest of `values` by label set, and `other` summing the rest.
fn top_k(mut values: Vec<(Labels, f64)>, k: usize, other: Labels) -> Vec<(Labels, f64)> {
    values.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if values.len() <= k {
        return values;
    }
    let rest: f64 = values.drain(k..).map(|(_, v)| v).sum();
    values.push((other, rest));
    values
}

/// Counts as an integer gauge family.
fn count_family(values: Vec<(Labels, f64)>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (l, v) in values {
        // Sums of counts: whole numbers well inside i64.
        family.get_or_create(&l).set(v as i64);
    }
    family
}

fn ratio_family(values: Vec<(Labels, f64)>) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (l, v) in values {
        family.get_or_create(&l).set(v);
    }
    family
}

fn gauges(reg: &mut Registry, view: &ViewState, k: usize) {
    let mut by_proc: BTreeMap<Identity, u64> = BTreeMap::new();
    for (key, workload, n) in view.timewait_by_process() {
        let id = Identity {
            comm: key.comm.as_deref().unwrap_or("unknown").to_owned(),
            workload: workload.clone(),
        };
        *by_proc.entry(id).or_default() += n;
    }
    let procs = by_proc
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| (id.labels(), n as f64))
        .collect();
    reg.register(
        "tcp_timewait_sockets",
        "TIME_WAIT sockets held now, by process (entries less exits)",
        count_family(top_k(procs, k, Identity::other().labels())),
    );

    // Destinations ranked by pressure, the same ones in every gauge.
    let mut dests: Vec<_> = view
        .pools()
        .filter_map(|((ns, addr, port), pool)| {
            let pool = pool?;
            let labels = vec![
                ("netns", ns.map(|n| n.to_string()).unwrap_or_default()),
                ("daddr", addr.to_string()),
                ("dport", port.to_string()),
            ];
            Some((labels, pool))
        })
        .collect();
    dests.sort_by(|a, b| {
        b.1.pressure()
            .total_cmp(&a.1.pressure())
            .then_with(|| a.0.cmp(&b.0))
    });
    let other: Labels = vec![
        ("netns", String::new()),
        ("daddr", OTHER.into()),
        ("dport", String::new()),
    ];
    let named = dests.len().min(k);
    let figure = |f: &dyn Fn(&crate::model::PoolUse) -> f64| -> Vec<(Labels, f64)> {
        let mut v: Vec<(Labels, f64)> = dests[..named]
            .iter()
            .map(|(l, p)| (l.clone(), f(p)))
            .collect();
        if dests.len() > named {
            v.push((
                other.clone(),
                dests[named..].iter().map(|(_, p)| f(p)).sum(),
            ));
        }
        v
    };
    let timewait =
        |p: &crate::model::PoolUse| p.by_state.get("TIME_WAIT").copied().unwrap_or(0) as f64;
    reg.register(
        "destination_timewait_sockets",
        "Client TIME_WAIT sockets towards a destination, in its namespace's table",
        count_family(figure(&timewait)),
    );
    reg.register(
        "ephemeral_ports_in_use",
        "Ephemeral ports held towards a destination, in every state, in its namespace",
        count_family(figure(&|p| p.in_use as f64)),
    );
    reg.register(
        "ephemeral_ports_capacity",
        "Ephemeral ports a destination can have: the namespace's range less reserved ports",
        count_family(figure(&|p| p.capacity as f64)),
    );
    let ratio = dests[..named]
        .iter()
        .map(|(l, p)| (l.clone(), p.pressure()))
        .collect();
    reg.register(
        "ephemeral_ports_used_ratio",
        "Ephemeral ports in use over capacity, per destination (1 = the next connect fails)",
        ratio_family(ratio),
    );
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
