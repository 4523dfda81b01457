//! The live view's state, shared by `top` and `serve`: per process and per
//! destination figures kept up to date from attributed [`Event`]s and from
//! censuses of each namespace's socket table. Platform-free and free of
//! any terminal or HTTP code, so that it is tested from recorded events.
//!
//! TIME_WAIT "now" is entries minus exits. The kernel reports a socket
//! entering TIME_WAIT but no hook here reports it leaving, so exits are
//! found by census: a 4-tuple that entered during the view and is no longer
//! in its namespace's table has left ([`Exits`] counts how each was seen).

mod snapshot;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

pub use snapshot::{DestRow, DestSort, FailureRow, ProcRow, ProcSort, Snapshot, SnapshotOpts};

use crate::aggregate::{LostByReason, ProcKey, TIMEWAIT_NS};
use crate::attribution::Tuple;
use crate::model::{Counted, Dest, Event, EventKind, LostReason, PoolUse, Side, TcpState};
use crate::sysctl::PortSet;
use crate::workload::Workload;
use smol_str::SmolStr;

const S: i128 = 1_000_000_000;
/// Rates are taken over this much of the recent past.
pub const RATE_WINDOW_NS: i128 = 5 * S;
/// A pool's growth, for the time to exhaustion, over this much.
pub const GROWTH_WINDOW_NS: i128 = 10 * S;
/// Upper bounds, so that a long view stays small.
pub const MAX_PROCS: usize = 4096;
pub const MAX_DESTS: usize = 1024;
/// TIME_WAIT sockets followed one by one; past this, entries are counted
/// per second and expire by the TIME_WAIT length.
pub const MAX_LIVE_TW: usize = 1 << 18;
pub const MAX_FAILURES: usize = 200;
/// A process or destination with nothing held is forgotten after this.
const IDLE_NS: i128 = 60 * S;

/// One namespace's socket table, as a census reads it.
#[derive(Clone, Debug, Default)]
pub struct NsTable {
    pub netns: Option<u64>,
    /// That namespace's net.ipv4.ip_local_port_range and reserved ports.
    pub low: u16,
    pub high: u16,
    pub reserved: PortSet,
    pub sockets: Vec<(TcpState, Tuple)>,
}

impl NsTable {
    fn capacity(&self) -> u64 {
        u64::from(
            (u32::from(self.high) + 1)
                .saturating_sub(u32::from(self.low))
                .saturating_sub(self.reserved.count_within(self.low, self.high)),
        )
    }
}

/// How TIME_WAIT exits were seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Exits {
    /// Gone from the namespace's table (sock_diag, per 4-tuple).
    pub sock_diag: u64,
    /// Assumed gone after the TIME_WAIT length: the table could not be
    /// read, or the socket was beyond what is followed one by one.
    pub timer: u64,
}

#[derive(Clone, Debug)]
struct ProcView {
    key: ProcKey,
    workload: Workload,
    timewait_now: u64,
    timewait_entries: u64,
    connects: u64,
    bind_failures: u64,
    connect_failures: u64,
    last_active: i128,
    /// (time, TIME_WAIT entries, connects) at each tick, for rates.
    samples: VecDeque<(i128, u64, u64)>,
}

#[derive(Clone, Debug, Default)]
struct DestView {
    pool: Option<PoolUse>,
    error: Option<String>,
    /// (time, in use) at each census, for the growth rate.
    samples: VecDeque<(i128, u64)>,
    last_used: i128,
}

/// A failed bind() or connect(), with what was found about it.
#[derive(Clone, Debug)]
struct Failure {
    event: Event,
}

#[derive(Debug, Default)]
pub struct ViewState {
    started: i128,
    now: i128,
    events: u64,
    lost: LostByReason,
    /// Process ids by pid, then command name: looked up by reference on
    /// every event, so that no key is built for it.
    ids: HashMap<Option<u32>, Vec<(Option<SmolStr>, u32)>>,
    procs: HashMap<u32, ProcView>,
    next_id: u32,
    dests: HashMap<Dest, DestView>,
    /// TIME_WAIT sockets that entered during the view: owner and entry time.
    live_tw: HashMap<(Option<u64>, Tuple), (u32, i128)>,
    /// Entries past [`MAX_LIVE_TW`]: (entry time, owner), oldest first.
    untracked_tw: VecDeque<(i128, u32)>,
    exits: Exits,
    failures: VecDeque<Failure>,
    /// The kernel counts every event and successful connect (aggregate
    /// mode, [`ViewState::add_counted`]): events that cross the ring are
    /// not counted again.
    kernel_counts: bool,
}

/// The same address however the socket was opened: an IPv4-mapped IPv6
/// address is the IPv4 one.
fn canonical(a: IpAddr) -> IpAddr {
    a.to_canonical()
}

impl ViewState {
    /// A view that begins at `now` (wall-clock ns).
    pub fn new(now: i128) -> Self {
        ViewState {
            started: now,
            now,
            ..Default::default()
        }
    }

    /// Events and successful connects come from the kernel's counts
    /// ([`ViewState::add_counted`]), not from the events received.
    pub fn counted_in_kernel(&mut self, on: bool) {
        self.kernel_counts = on;
    }

    /// What the kernel counted instead of sending (aggregate mode).
    pub fn add_counted(&mut self, c: &Counted) {
        self.events += c.events;
        self.lost.add(Some(LostReason::Overflow), c.uncounted);
        self.lost.add(Some(LostReason::Inferred), c.gaps);
        let now = self.now;
        for cc in &c.connects {
            let id = self.proc_id_of(cc.pid, cc.comm.as_ref(), || cc.workload.clone(), now);
            if let Some(p) = self.procs.get_mut(&id) {
                p.connects += cc.n;
                p.last_active = now;
            }
            self.touch_dest(Some((cc.netns, canonical(cc.daddr), cc.dport)));
        }
    }

    /// The view begins now (wall-clock ns): after attaching, which takes
    /// a while, so that the first rates are not diluted by it.
    pub fn begin(&mut self, now: i128) {
        self.started = now;
        self.now = now;
        for p in self.procs.values_mut() {
            p.samples.clear();
            p.samples.push_back((now, p.timewait_entries, p.connects));
        }
    }

    /// An attributed event.
    pub fn add(&mut self, ev: &Event) {
        if ev.event == EventKind::Lost {
            self.lost.add(ev.lost_reason, ev.lost.unwrap_or(0));
            return;
        }
        if !self.kernel_counts {
            self.events += 1;
        }
        let id = self.proc_id_of(ev.pid, ev.comm.as_ref(), || ev.workload(), ev.time);
        let client = ev.side == Some(Side::Client);
        let dest = match (ev.daddr, ev.dport) {
            (Some(a), Some(p)) if p != 0 => Some((ev.netns, canonical(a), p)),
            _ => None,
        };
        let time = ev.time;
        let p = self.procs.get_mut(&id);
        match ev.event {
            EventKind::Timewait => {
                if let Some(p) = p {
                    p.timewait_now += 1;
                    p.timewait_entries += 1;
                    p.last_active = time;
                }
                self.track_tw(ev, id);
                if client {
                    self.touch_dest(dest);
                }
            }
            EventKind::Connect => {
                if let Some(p) = p {
                    p.connects += 1;
                    p.connect_failures += u64::from(ev.is_failure());
                    p.last_active = time;
                }
                self.touch_dest(dest);
            }
            EventKind::Bind => {
                let failed = ev.is_failure() || (ev.ret.is_none() && ev.inferred.is_some());
                if let Some(p) = p.filter(|_| failed) {
                    p.bind_failures += 1;
                    p.last_active = time;
                }
            }
            EventKind::State
                if client
                    && ev.old_state == Some(TcpState::SynSent)
                    && ev.new_state == Some(TcpState::Established) =>
            {
                self.touch_dest(dest);
            }
            _ => {}
        }
        let failed_bind = ev.event == EventKind::Bind
            && (ev.is_failure() || (ev.ret.is_none() && ev.inferred.is_some()));
        if failed_bind || (ev.event == EventKind::Connect && ev.is_failure()) {
            if self.failures.len() == MAX_FAILURES {
                self.failures.pop_front();
            }
            self.failures.push_back(Failure { event: ev.clone() });
        }
    }

    /// The id of a process, created (with a rate baseline at the last
    /// tick) on first sight at `time`.
    fn proc_id_of(
        &mut self,
        pid: Option<u32>,
        comm: Option<&SmolStr>,
        workload: impl FnOnce() -> Workload,
        time: i128,
    ) -> u32 {
        let known = self
            .ids
            .get(&pid)
            .and_then(|v| v.iter().find(|(c, _)| c.as_ref() == comm));
        if let Some((_, id)) = known {
            return *id;
        }
        if self.procs.len() >= MAX_PROCS {
            self.evict_proc();
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let key = ProcKey {
            pid,
            comm: comm.cloned(),
        };
        self.ids.entry(pid).or_default().push((comm.cloned(), id));
        let mut samples = VecDeque::new();
        samples.push_back((self.now, 0, 0));
        self.procs.insert(
            id,
            ProcView {
                key,
                workload: workload(),
                timewait_now: 0,
                timewait_entries: 0,
                connects: 0,
                bind_failures: 0,
                connect_failures: 0,
                last_active: time,
                samples,
            },
        );
        id
    }

    /// Makes room: the process holding least, idle longest, goes.
    fn evict_proc(&mut self) {
        let victim = self
            .procs
            .iter()
            .min_by_key(|(_, p)| (p.timewait_now, p.last_active))
            .map(|(id, _)| *id);
        if let Some(id) = victim {
            self.forget(id);
        }
    }

    fn forget(&mut self, id: u32) {
        let Some(p) = self.procs.remove(&id) else {
            return;
        };
        if let Some(v) = self.ids.get_mut(&p.key.pid) {
            v.retain(|(_, i)| *i != id);
            if v.is_empty() {
                self.ids.remove(&p.key.pid);
            }
        }
    }

    fn track_tw(&mut self, ev: &Event, id: u32) {
        let (Some(sa), Some(sp), Some(da), Some(dp)) = (ev.saddr, ev.sport, ev.daddr, ev.dport)
        else {
            self.untracked_tw.push_back((ev.time, id));
            return;
        };
        let key = (ev.netns, (canonical(sa), sp, canonical(da), dp));
        if self.live_tw.len() >= MAX_LIVE_TW && !self.live_tw.contains_key(&key) {
            self.untracked_tw.push_back((ev.time, id));
            return;
        }
        // The same 4-tuple again (TIME_WAIT reused): the earlier one is gone.
        if let Some((old, _)) = self.live_tw.insert(key, (id, ev.time)) {
            self.tw_exit(old, true);
        }
    }

    fn tw_exit(&mut self, id: u32, by_table: bool) {
        if let Some(p) = self.procs.get_mut(&id) {
            p.timewait_now = p.timewait_now.saturating_sub(1);
        }
        if by_table {
            self.exits.sock_diag += 1;
        } else {
            self.exits.timer += 1;
        }
    }

    /// A destination clients connect to: its pool is counted from now on.
    fn touch_dest(&mut self, dest: Option<Dest>) {
        let Some(dest) = dest else {
            return;
        };
        if !self.dests.contains_key(&dest) && self.dests.len() >= MAX_DESTS {
            let victim = self
                .dests
                .iter()
                .min_by_key(|(_, d)| (d.pool.as_ref().map_or(0, |p| p.in_use), d.last_used))
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                self.dests.remove(&k);
            }
        }
        self.dests.entry(dest).or_default().last_used = self.now;
    }

    /// The namespaces whose tables a census should read: those of the
    /// destinations shown and of the TIME_WAIT sockets followed.
    pub fn namespaces(&self) -> Vec<Option<u64>> {
        let set: HashSet<Option<u64>> = self
            .dests
            .keys()
            .map(|d| d.0)
            .chain(self.live_tw.keys().map(|k| k.0))
            .collect();
        let mut v: Vec<_> = set.into_iter().collect();
        v.sort();
        v
    }

    /// A census of one namespace's table: the pools of its destinations,
    /// and the exits of TIME_WAIT sockets no longer in it. `seed`: the
    /// first census, which also adds the destinations clients already
    /// hold ports towards, so that what predates the view counts.
    pub fn apply_table(&mut self, table: &NsTable, seed: bool) {
        let ns = table.netns;
        let listening: HashSet<u16> = table
            .sockets
            .iter()
            .filter(|(s, _)| *s == TcpState::Listen)
            .map(|(_, t)| t.1)
            .collect();
        let mut pools: HashMap<Dest, PoolUse> = HashMap::new();
        let mut timewait: HashSet<Tuple> = HashSet::new();
        for &(state, (sa, sp, da, dp)) in &table.sockets {
            let (sa, da) = (canonical(sa), canonical(da));
            if matches!(state, TcpState::TimeWait | TcpState::FinWait2) {
                timewait.insert((sa, sp, da, dp));
            }
            if state == TcpState::Listen
                || da.is_unspecified()
                || sp < table.low
                || sp > table.high
                || table.reserved.contains(sp)
            {
                continue;
            }
            let dest = (ns, da, dp);
            // A server's accepted socket is no client of its peer's port.
            if seed && !self.dests.contains_key(&dest) && !listening.contains(&sp) {
                self.touch_dest(Some(dest));
            }
            if !self.dests.contains_key(&dest) {
                continue;
            }
            let pool = pools.entry(dest).or_insert_with(|| PoolUse {
                in_use: 0,
                by_state: Default::default(),
                capacity: table.capacity(),
                range_low: table.low,
                range_high: table.high,
            });
            pool.in_use += 1;
            *pool.by_state.entry(state.name().to_owned()).or_default() += 1;
        }
        let now = self.now;
        for (dest, d) in self.dests.iter_mut().filter(|(k, _)| k.0 == ns) {
            let pool = pools.remove(dest).unwrap_or_else(|| PoolUse {
                in_use: 0,
                by_state: Default::default(),
                capacity: table.capacity(),
                range_low: table.low,
                range_high: table.high,
            });
            if pool.in_use > 0 {
                d.last_used = now;
            }
            d.samples.push_back((now, pool.in_use));
            while d
                .samples
                .front()
                .is_some_and(|(t, _)| *t < now - GROWTH_WINDOW_NS)
            {
                d.samples.pop_front();
            }
            d.pool = Some(pool);
            d.error = None;
        }
        let gone: Vec<_> = self
            .live_tw
            .keys()
            .filter(|(n, t)| *n == ns && !timewait.contains(t))
            .copied()
            .collect();
        for k in gone {
            if let Some((id, _)) = self.live_tw.remove(&k) {
                self.tw_exit(id, true);
            }
        }
    }

    /// A namespace's table could not be read: its pools are unknown, and
    /// its TIME_WAIT sockets leave by the clock.
    pub fn table_failed(&mut self, netns: Option<u64>, why: &str) {
        for (_, d) in self.dests.iter_mut().filter(|(k, _)| k.0 == netns) {
            d.pool = None;
            d.error = Some(why.to_owned());
        }
        let cutoff = self.now - TIMEWAIT_NS;
        self.expire_tw(|(n, _), t| *n == netns && t <= cutoff);
    }

    fn expire_tw(&mut self, gone: impl Fn(&(Option<u64>, Tuple), i128) -> bool) {
        let expired: Vec<_> = self
            .live_tw
            .iter()
            .filter(|(k, (_, t))| gone(k, *t))
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some((id, _)) = self.live_tw.remove(&k) {
                self.tw_exit(id, false);
            }
        }
    }

    /// Time moves on to `now`: rate samples, expiries, forgetting idle
    /// processes and destinations. Call it once per refresh, then take
    /// the censuses, which are stamped with this time.
    pub fn tick(&mut self, now: i128) {
        self.now = now;
        let cutoff = now - TIMEWAIT_NS;
        while let Some(&(t, id)) = self.untracked_tw.front() {
            if t > cutoff {
                break;
            }
            self.untracked_tw.pop_front();
            self.tw_exit(id, false);
        }
        // A socket followed one by one but missed by every census (its
        // namespace never read): gone after twice the TIME_WAIT length.
        let stale = now - 2 * TIMEWAIT_NS;
        self.expire_tw(|_, t| t <= stale);
        for p in self.procs.values_mut() {
            p.samples.push_back((now, p.timewait_entries, p.connects));
            while p.samples.len() > 2
                && p.samples
                    .get(1)
                    .is_some_and(|(t, ..)| *t <= now - RATE_WINDOW_NS)
            {
                p.samples.pop_front();
            }
        }
        let idle = now - IDLE_NS;
        let forget: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.timewait_now == 0 && p.last_active < idle)
            .map(|(id, _)| *id)
            .collect();
        for id in forget {
            self.forget(id);
        }
        self.dests.retain(|_, d| d.last_used >= idle);
    }

    /// Lost events by reason.
    pub fn lost(&self) -> &LostByReason {
        &self.lost
    }

    pub fn exits(&self) -> Exits {
        self.exits
    }

    /// TIME_WAIT sockets held now, per process: (key, workload, count).
    pub fn timewait_by_process(&self) -> impl Iterator<Item = (&ProcKey, &Workload, u64)> {
        self.procs
            .values()
            .map(|p| (&p.key, &p.workload, p.timewait_now))
    }

    /// Each destination's pool as last counted (None where it could not be).
    pub fn pools(&self) -> impl Iterator<Item = (&Dest, Option<&PoolUse>)> {
        self.dests.iter().map(|(k, d)| (k, d.pool.as_ref()))
    }
}

#[cfg(test)]
mod tests;
