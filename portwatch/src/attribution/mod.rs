//! Attribution: turns what a collector saw into answers. Adds each process's
//! command line and cgroup, confirms TIME_WAIT entries, and names the holder
//! of a port that a bind() could not get.
//!
//! Every table here is keyed by network namespace: the same port, address
//! or 4-tuple in two containers is two different things. Each socket's
//! chain of states is followed ([`chain`]), so that transitions the kernel
//! lost without counting are reported as inferred losses, and an owner
//! remembered for a socket address never passes to another socket that
//! reused it.
//!
//! The system is reached only through [`SocketProbe`] and [`ProcessLookup`],
//! so this module is tested from recorded events without root.

#[cfg(test)]
mod capacity_tests;
mod chain;
#[cfg(test)]
pub(crate) mod fixtures;
mod holder;
mod inferred;
mod keys;
mod listeners;
mod procs;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;

use crate::errno;
use crate::model::{
    Attribution, Dest, Event, EventKind, Family, Hints, LostReason, PoolUse, Protocol, Side,
    SmolStr, SourceMsg, TcpState,
};
pub use holder::overlaps;
use keys::NsKey;
use listeners::{ChildOwner, ListenerKey, Listeners};

/// A socket bound to a port, as a snapshot shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSocket {
    pub protocol: Protocol,
    /// TCP state; None for UDP.
    pub state: Option<TcpState>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// The owning process, when the socket has one (TIME_WAIT sockets do not).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// IPV6_V6ONLY of an IPv6 socket.
    pub v6only: bool,
}

/// Live socket state: sock_diag on Linux, a fake in tests. `netns` is the
/// network namespace to look in (the event owner's), when known.
pub trait SocketProbe {
    /// The state of the TCP socket with this 4-tuple, if it exists.
    fn tcp_state(&mut self, netns: Option<u64>, tuple: Tuple) -> Option<TcpState>;
    /// Every TCP and UDP socket whose local port is `port`; why not, when
    /// the table could not be read.
    fn on_port(&mut self, netns: Option<u64>, port: u16) -> Result<Vec<PortSocket>, String>;
    /// The sockets holding ports of destination `daddr:dport`'s ephemeral
    /// pool in namespace `netns`, with that namespace's range.
    fn pool(
        &mut self,
        _netns: Option<u64>,
        _daddr: IpAddr,
        _dport: u16,
    ) -> Result<PoolUse, String> {
        Err("no live socket table to count in".to_owned())
    }
    /// [`SocketProbe::tcp_state`] for many sockets of one namespace,
    /// appended to `out` in order: one round trip where the probe can
    /// batch, into a buffer the caller reuses.
    fn tcp_states(
        &mut self,
        netns: Option<u64>,
        tuples: &[Tuple],
        out: &mut Vec<Option<TcpState>>,
    ) {
        out.extend(tuples.iter().map(|&t| self.tcp_state(netns, t)));
    }
}

/// What portwatch adds about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// Inode of its network namespace.
    pub netns: Option<u64>,
    /// Its pid in its own (innermost) pid namespace, when not the host's.
    pub container_pid: Option<u32>,
}

pub trait ProcessLookup {
    fn lookup(&mut self, pid: u32) -> Option<ProcessInfo>;
    /// When the process holding `pid` now started (CLOCK_BOOTTIME ns, to
    /// the kernel's clock tick; None when it cannot tell), so that an
    /// identity is never given to an event of an earlier process that had
    /// the same pid.
    fn start_ns(&mut self, _pid: u32) -> Option<u64> {
        None
    }
    /// The path of a cgroup v2 id, for processes that are gone by the time
    /// their event is read; asked for every such event, so shared, not
    /// copied.
    fn cgroup_path(&mut self, _id: u64) -> Option<SmolStr> {
        None
    }
}

/// For replays: nothing live to ask.
pub struct Offline;

impl SocketProbe for Offline {
    fn tcp_state(&mut self, _: Option<u64>, _: Tuple) -> Option<TcpState> {
        None
    }
    fn on_port(&mut self, _: Option<u64>, _: u16) -> Result<Vec<PortSocket>, String> {
        Err("no live socket table in a replay".to_owned())
    }
}

impl ProcessLookup for Offline {
    fn lookup(&mut self, _: u32) -> Option<ProcessInfo> {
        None
    }
}

/// A TCP connection's (saddr, sport, daddr, dport).
pub type Tuple = (IpAddr, u16, IpAddr, u16);

/// What attribution remembers about a socket's or listener's owner.
#[derive(Clone, Debug, PartialEq)]
pub struct Known {
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<SmolStr>,
    pub family: Option<Family>,
    pub time: i128,
    /// The last state this trace saw the socket in.
    pub state: Option<TcpState>,
    pub side: Option<Side>,
}

impl Known {
    fn of(ev: &Event) -> Known {
        Known {
            pid: ev.pid,
            tid: ev.tid,
            uid: ev.uid,
            comm: ev.comm.clone(),
            family: ev.family,
            time: ev.time,
            state: ev.new_state,
            side: ev.side,
        }
    }

    /// An owner found in a snapshot of what existed before the trace.
    pub fn seeded(pid: u32, comm: String, uid: u32, side: Option<Side>) -> Known {
        Known {
            pid: Some(pid),
            tid: Some(pid),
            uid: Some(uid),
            comm: Some(comm.into()),
            family: None,
            time: 0,
            state: None,
            side,
        }
    }
}

/// Whether `ev` is a FIN_WAIT2/CLOSING -> CLOSE that only the socket table
/// can confirm as TIME_WAIT.
fn needs_socket_check(ev: &Event, hints: Hints) -> bool {
    ev.event == EventKind::State
        && !hints.timewait_confirmed
        && !hints.replayed
        && matches!(ev.old_state, Some(TcpState::FinWait2 | TcpState::Closing))
        && ev.new_state == Some(TcpState::Close)
}

fn tuple(ev: &Event) -> Option<Tuple> {
    Some((ev.saddr?, ev.sport?, ev.daddr?, ev.dport?))
}

fn listener_key(ev: &Event) -> Option<ListenerKey> {
    Some(ListenerKey {
        netns: ev.netns,
        family: ev.family?,
        port: ev.sport?,
        addr: ev.saddr?,
    })
}

/// Upper bounds on what attribution remembers, so a long trace stays small.
/// 7/8 of a power of two: a hash table that reached 65536 entries would
/// double to 131072 buckets (19 MB more for origins, at the benchmark's churn).
const MAX_ORIGINS: usize = TABLE_CAP;
/// TIME_WAIT lasts TCP_TIMEWAIT_LEN (60 s); when the table is full, forget
/// origins older than that and a margin first.
const ORIGIN_TTL_NS: i128 = 90 * 1_000_000_000;
/// How long a timewait socket may sit in its FIN_WAIT2 sub-state before we
/// stop waiting for the peer's FIN: net.ipv4.tcp_fin_timeout's default.
const FW2_WAIT_NS: i128 = 60 * 1_000_000_000;
const MAX_FW2_PENDING: usize = TABLE_CAP;
/// Connections from the start-up snapshot kept for attribution.
const MAX_PREEXISTING: usize = TABLE_CAP;
/// The most entries a table of 65536 buckets holds (hashbrown keeps 1/8 free).
pub(crate) const TABLE_CAP: usize = 65536 / 8 * 7;

/// A 4-tuple in a network namespace.
type NsTuple = (Option<u64>, Tuple);
/// A table keyed by it (see [`keys`]).
type ByTuple<V> = HashMap<NsKey, V>;

pub struct Attributor<S, P> {
    sockets: S,
    processes: P,
    procs: procs::Procs,
    /// Listening sockets seen during the trace.
    listeners: Listeners,
    /// Each socket's last state and owner.
    chains: chain::Chains<Known>,
    /// Who made each connection, for the sockets that outlive their owner:
    /// TIME_WAIT and orphans have no process the kernel knows.
    origins: ByTuple<Known>,
    /// Socket states fetched ahead for the batch being processed; an answer
    /// is taken (set to `None`) rather than removed: removing would leave
    /// the map empty, and `clear` skips an empty map, so its tombstones
    /// would pile up until a batch made it grow at a time that depends on
    /// the hash seed.
    prefetched: ByTuple<Option<Option<TcpState>>>,
    /// Buffers [`Attributor::prefetch`] reuses batch after batch.
    prefetch_scratch: (Vec<NsTuple>, Vec<Tuple>, Vec<Option<TcpState>>),
    /// Closes that left a timewait socket in its FIN_WAIT2 sub-state (an
    /// orphan whose FIN was acked before the peer's FIN came): it becomes
    /// TIME_WAIT when that FIN arrives. [`Attributor::poll`] re-checks them.
    fw2_pending: ByTuple<Event>,
    /// Whether `fw2_pending` has overflowed yet (warned about once).
    fw2_overflowed: bool,
    /// Connections that existed before the trace, with their owners from
    /// the start-up snapshot; each is used (and forgotten) when the socket
    /// is first seen.
    preexisting: ByTuple<Known>,
    /// bind() attempts from cgroup hooks waiting for their confirmation.
    pending_binds: inferred::PendingBinds,
    /// Synthesize connect() outcomes from the state tracepoint (when no
    /// hook reports them).
    infer_connects: bool,
    /// Only some transitions arrive (the kernel aggregates the rest): a
    /// chain with holes is expected, not a loss.
    sparse: bool,
}

/// What the socket table says about a FIN_WAIT2/CLOSING -> CLOSE.
enum Closed {
    TimeWait,
    /// A timewait socket still waiting for the peer's FIN.
    Fw2,
    Gone,
}

impl<S: SocketProbe, P: ProcessLookup> Attributor<S, P> {
    pub fn new(sockets: S, processes: P) -> Self {
        Attributor {
            sockets,
            processes,
            procs: procs::Procs::default(),
            listeners: Listeners::default(),
            chains: chain::Chains::default(),
            origins: ByTuple::default(),
            prefetched: ByTuple::default(),
            prefetch_scratch: Default::default(),
            fw2_pending: ByTuple::default(),
            fw2_overflowed: false,
            preexisting: ByTuple::default(),
            pending_binds: inferred::PendingBinds::default(),
            infer_connects: false,
            sparse: false,
        }
    }

    /// The path of a cgroup id, from the same index events are named with.
    pub fn cgroup_path(&mut self, id: u64) -> Option<SmolStr> {
        self.processes.cgroup_path(id)
    }

    /// The kernel sends only the rare transitions (aggregate mode): chains
    /// are not followed for gaps, and owners are the kernel's.
    pub fn sparse(mut self, on: bool) -> Self {
        self.sparse = on;
        self
    }

    /// Report connect() outcomes read from the state tracepoint (the
    /// collector serves connect that way).
    pub fn infer_connects(mut self, on: bool) -> Self {
        self.infer_connects = on;
        self
    }

    /// A listener that existed before the trace; `owner` None when it is
    /// unclear which of several processes accepts on it.
    pub fn seed_listener(
        &mut self,
        netns: Option<u64>,
        port: u16,
        addr: IpAddr,
        owner: Option<Known>,
    ) {
        let family = match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        };
        let key = ListenerKey {
            netns,
            family,
            port,
            addr,
        };
        self.listeners.seed(key, owner);
    }

    /// A connection that existed before the trace, and its owner.
    pub fn seed_connection(&mut self, netns: Option<u64>, tuple: Tuple, owner: Known) {
        if self.preexisting.len() < MAX_PREEXISTING {
            self.preexisting.insert(NsKey::new(netns, tuple), owner);
        }
    }

    /// The ephemeral pools of `dests` as the live socket tables show them.
    pub fn pools(&mut self, dests: &[Dest]) -> Vec<(Dest, Result<PoolUse, String>)> {
        dests
            .iter()
            .map(|&(ns, a, p)| ((ns, a, p), self.sockets.pool(ns, a, p)))
            .collect()
    }

    /// Looks up, in one batch per namespace, every socket that the TIME_WAIT
    /// check of these messages will ask about; [`Attributor::process`] then
    /// uses the answers instead of one round trip per event.
    pub fn prefetch(&mut self, msgs: &[SourceMsg]) {
        self.prefetched.clear();
        let (mut keys, mut tuples, mut states) = std::mem::take(&mut self.prefetch_scratch);
        keys.clear();
        for m in msgs {
            if let SourceMsg::Event(ev, hints) = m {
                if needs_socket_check(ev, *hints) {
                    if let Some(t) = tuple(ev) {
                        keys.push((self.netns_of(ev), t));
                    }
                }
            }
        }
        // One lookup per namespace.
        keys.sort_unstable_by_key(|(netns, _)| *netns);
        for group in keys.chunk_by(|a, b| a.0 == b.0) {
            let netns = group[0].0;
            tuples.clear();
            tuples.extend(group.iter().map(|(_, t)| *t));
            states.clear();
            self.sockets.tcp_states(netns, &tuples, &mut states);
            self.prefetched.extend(
                group
                    .iter()
                    .map(|&k| NsKey(k))
                    .zip(states.iter().map(|&s| Some(s))),
            );
        }
        self.prefetch_scratch = (keys, tuples, states);
    }

    /// Re-checks closes that were waiting in the FIN_WAIT2 sub-state; returns
    /// a timewait event for each that has reached TIME_WAIT, timed like the
    /// close (when the kernel hashed the timewait socket), not when it was
    /// seen.
    /// `final_check`: the trace ends, so forget the ones still waiting.
    pub fn poll(&mut self, now: i128, final_check: bool) -> Vec<Event> {
        let mut out = Vec::new();
        self.expire_binds(now, final_check, &mut out);
        if self.fw2_pending.is_empty() {
            return out;
        }
        let mut by_netns: HashMap<Option<u64>, Vec<Tuple>> = HashMap::new();
        for NsKey((netns, t)) in self.fw2_pending.keys() {
            by_netns.entry(*netns).or_default().push(*t);
        }
        let mut states = Vec::new();
        for (netns, tuples) in by_netns {
            states.clear();
            self.sockets.tcp_states(netns, &tuples, &mut states);
            for (t, &state) in tuples.into_iter().zip(&states) {
                let key = NsKey::new(netns, t);
                let expired = self
                    .fw2_pending
                    .get(&key)
                    .is_some_and(|ev| now - ev.time > FW2_WAIT_NS);
                match state {
                    Some(TcpState::TimeWait) => {
                        if let Some(ev) = self.fw2_pending.remove(&key) {
                            let tw = Event {
                                event: EventKind::Timewait,
                                new_state: Some(TcpState::TimeWait),
                                ..ev
                            };
                            self.remember_origin(&tw);
                            out.push(tw);
                        }
                    }
                    Some(TcpState::FinWait2) if !final_check && !expired => {}
                    _ => {
                        self.fw2_pending.remove(&key);
                    }
                }
            }
        }
        out
    }

    /// The table of closes waiting in FIN_WAIT2 is full: gives up the
    /// oldest eighth of them (so that this is rare and cheap, not once per
    /// close) and says so, as lost events with reason `overflow`: their
    /// TIME_WAIT entries, if they reach it, go unreported.
    fn give_up_oldest_fw2(&mut self, now: i128, out: &mut Vec<Event>) {
        let mut times: Vec<i128> = self.fw2_pending.values().map(|ev| ev.time).collect();
        let n = (MAX_FW2_PENDING / 8).min(times.len().saturating_sub(1));
        let (_, &mut cutoff, _) = times.select_nth_unstable(n);
        let before = self.fw2_pending.len();
        self.fw2_pending.retain(|_, ev| ev.time > cutoff);
        let given_up = before - self.fw2_pending.len();
        if !std::mem::replace(&mut self.fw2_overflowed, true) {
            log::warn!(
                "more than {MAX_FW2_PENDING} closes waiting in FIN_WAIT2 at once: the oldest \
                 are given up and counted as lost (reason overflow)"
            );
        }
        out.push(Event::lost(now, given_up as u64, LostReason::Overflow));
    }

    /// Whether [`Attributor::poll`] has anything to re-check.
    pub fn has_pending(&self) -> bool {
        !self.fw2_pending.is_empty() || !self.pending_binds.is_empty()
    }

    /// The time of the oldest close still waiting in the FIN_WAIT2
    /// sub-state: a timewait event [`Attributor::poll`] returns is never
    /// older than this.
    pub fn oldest_pending(&self) -> Option<i128> {
        self.fw2_pending
            .values()
            .map(|ev| ev.time)
            .chain(self.pending_binds.oldest())
            .min()
    }

    /// One message in, zero or more answers out.
    pub fn process(&mut self, msg: SourceMsg) -> Vec<Event> {
        let mut out = Vec::new();
        self.process_into(msg, &mut out);
        out
    }

    /// [`Attributor::process`] appending to `out`, so that a caller can
    /// reuse one buffer instead of allocating per event.
    pub fn process_into(&mut self, msg: SourceMsg, out: &mut Vec<Event>) {
        match msg {
            SourceMsg::Lost {
                time,
                count,
                reason,
            } => out.push(Event::lost(time, count, reason)),
            SourceMsg::Event(ev, hints) => self.event(ev, hints, out),
        }
    }

    /// What /proc says about the event's process, read once per process.
    /// An event the kernel stamped (`boot_ns`) gets an identity only from a
    /// process that started no later than the event.
    fn info(&mut self, ev: &Event) -> Option<&procs::Shared> {
        self.procs
            .get(&mut self.processes, ev.pid?, &ev.comm, ev.boot_ns)
    }

    /// The socket's namespace: from the kernel when it could read it, else
    /// the owner's as /proc shows it.
    fn netns_of(&mut self, ev: &Event) -> Option<u64> {
        if ev.netns.is_some() {
            return ev.netns;
        }
        self.info(ev).and_then(|i| i.netns)
    }

    fn enrich(&mut self, ev: &mut Event) {
        if let Some(info) = self.info(ev) {
            ev.cmdline.clone_from(&info.cmdline);
            ev.cgroup.clone_from(&info.cgroup);
            ev.container_pid = info.container_pid;
            if ev.netns.is_none() {
                ev.netns = info.netns;
            }
        }
        if ev.cgroup.is_none() {
            if let Some(id) = ev.cgroup_id {
                ev.cgroup = self.processes.cgroup_path(id);
            }
        }
        ev.set_workload();
    }

    /// Gives `ev` the owner `k` remembered, or none at all.
    fn set_owner(ev: &mut Event, k: Option<&Known>) {
        match k {
            Some(k) if k.pid.is_some() => {
                ev.pid = k.pid;
                ev.tid = k.tid;
                ev.uid = k.uid;
                ev.comm.clone_from(&k.comm);
                ev.attribution = Attribution::Remembered;
            }
            _ => {
                ev.pid = None;
                ev.tid = None;
                ev.uid = None;
                ev.comm = None;
                ev.cgroup_id = None;
                ev.attribution = Attribution::Unknown;
            }
        }
    }

    /// Follows the socket's chain of states: reports transitions that went
    /// missing as inferred losses (pushed to `out` before the event), and
    /// corrects the owner the kernel remembered where the chain shows it
    /// belongs to another socket, or where this run knows better (an
    /// accepted child takes its listener's owner).
    fn follow_chain(&mut self, ev: &mut Event, hints: Hints, out: &mut Vec<Event>) {
        let (Some(sock), Some(old), Some(new)) = (ev.sock, ev.old_state, ev.new_state) else {
            return;
        };
        if self.sparse {
            return;
        }
        let birth = chain::is_birth(old, new);
        if birth {
            // A connect()'s socket is a client; a listener and the children
            // it accepts are the server's.
            ev.side = Some(if new == TcpState::SynSent {
                Side::Client
            } else {
                Side::Server
            });
        }
        let (verdict, remembered) = self.chains.step(sock, old, new);
        if let Some(k) = remembered {
            ev.side = ev.side.or(k.side);
        }
        // First sight of a socket that predates the trace: its owner and
        // side from the start-up snapshot.
        let first_sight = remembered.is_none() && !birth && verdict == chain::Verdict::Fits;
        // The chain's owner (learnt in process context this run) wins over
        // one the kernel remembered; only the pid is compared, and the owner
        // cloned only where the two differ.
        let kept_pid = remembered.map(|k| k.pid);
        let new_life = matches!(verdict, chain::Verdict::NewLife { .. });
        let fill = match remembered {
            Some(k)
                if ev.attribution != Attribution::Current && k.pid.is_some() && k.pid != ev.pid =>
            {
                Some(k.clone())
            }
            _ => None,
        };
        let mut missing = verdict.missing();
        // The kernel saw a chain break this run did not (its earlier events
        // were filtered out, say): at least one transition is missing.
        if hints.stale_owner && missing == 0 {
            missing = 1;
        }
        if missing > 0 {
            let mut lost = Event::lost(ev.time, missing, LostReason::Inferred);
            lost.sock = ev.sock;
            lost.netns = ev.netns;
            out.push(lost);
        }
        if ev.attribution != Attribution::Current {
            if birth && old == TcpState::Listen {
                // An accepted child: its listener's owner, or nobody.
                match listener_key(ev)
                    .as_ref()
                    .map(|k| self.listeners.of_child(k))
                {
                    Some(ChildOwner::Known(k)) => {
                        let k = k.clone();
                        Self::set_owner(ev, Some(&k));
                    }
                    Some(ChildOwner::Ambiguous) => Self::set_owner(ev, None),
                    _ if hints.ambiguous_listener => Self::set_owner(ev, None),
                    _ => {}
                }
            } else if new_life {
                Self::set_owner(ev, None);
            } else if fill.is_some() {
                Self::set_owner(ev, fill.as_ref());
            }
        }
        if first_sight {
            if let Some(k) =
                tuple(ev).and_then(|t| self.preexisting.remove(&NsKey::new(ev.netns, t)))
            {
                ev.side = k.side;
                if ev.attribution != Attribution::Current && ev.pid.is_none() {
                    Self::set_owner(ev, Some(&k));
                }
            }
        }
        if new == TcpState::Close {
            self.chains.close(sock);
        } else if kept_pid != Some(ev.pid) {
            // First sight, a new life, or a new owner (a close by another
            // process than the one that connected): remember it. An owner
            // already remembered was moved on by `step` without a copy.
            self.chains.set(sock, new, Known::of(ev));
        }
    }

    fn event(&mut self, mut ev: Event, hints: Hints, out: &mut Vec<Event>) {
        if ev.netns.is_none() {
            // Without the kernel's BTF: the owner's namespace, from /proc.
            ev.netns = self.netns_of(&ev);
        }
        if !hints.replayed && self.pair_bind(&ev, hints, out) {
            return;
        }
        if matches!(ev.event, EventKind::State | EventKind::Listen) {
            self.follow_chain(&mut ev, hints, out);
        } else if ev.event == EventKind::Timewait && ev.side.is_none() {
            // A recorded TIME_WAIT (replay): its socket's side, from its chain.
            ev.side = ev
                .sock
                .and_then(|s| self.chains.peek(s))
                .and_then(|k| k.side);
        }
        self.enrich(&mut ev);
        if hints.replayed {
            // Already attributed once: keep the tables up to date, derive
            // nothing again.
            self.learn(&ev);
            out.push(ev);
            return;
        }
        match ev.event {
            EventKind::Listen => {
                self.learn(&ev);
                out.push(ev);
            }
            EventKind::State => {
                self.learn(&ev);
                if self.infer_connects {
                    self.infer_connect(&ev, out);
                }
                let closing = matches!(ev.old_state, Some(TcpState::FinWait2 | TcpState::Closing))
                    && ev.new_state == Some(TcpState::Close);
                if !closing {
                    out.push(ev);
                    return;
                }
                match self.closed(&ev, hints) {
                    Closed::TimeWait => {
                        let tw = Event {
                            event: EventKind::Timewait,
                            new_state: Some(TcpState::TimeWait),
                            ..ev.clone()
                        };
                        self.remember_origin(&tw);
                        out.push(ev);
                        out.push(tw);
                    }
                    Closed::Fw2 => {
                        if let Some(t) = tuple(&ev) {
                            if self.fw2_pending.len() >= MAX_FW2_PENDING {
                                self.give_up_oldest_fw2(ev.time, out);
                            }
                            self.fw2_pending.insert(NsKey::new(ev.netns, t), ev.clone());
                        }
                        out.push(ev);
                    }
                    Closed::Gone => out.push(ev),
                }
            }
            EventKind::Bind => {
                if ev.errno_value() == Some(errno::EADDRINUSE) {
                    match self.holder(&ev) {
                        Ok(h) => ev.holder = h.map(Box::new),
                        Err(why) => ev.lookup_error = Some(why),
                    }
                }
                out.push(ev);
            }
            EventKind::Connect if ev.errno_value() == Some(errno::EADDRNOTAVAIL) => {
                self.add_pool(&mut ev);
                out.push(ev);
            }
            _ => out.push(ev),
        }
    }

    /// The destination's pool as it stands, on a connect() that found it
    /// exhausted.
    fn add_pool(&mut self, ev: &mut Event) {
        let (Some(daddr), Some(dport)) = (ev.daddr, ev.dport) else {
            return;
        };
        match self.sockets.pool(ev.netns, daddr, dport) {
            Ok(pool) => ev.pool = Some(Box::new(pool)),
            Err(why) => ev.lookup_error = Some(why),
        }
    }

    /// Updates listeners and connection origins from a transition.
    fn learn(&mut self, ev: &Event) {
        let (old, new) = (ev.old_state, ev.new_state);
        if ev.event == EventKind::Listen {
            if let Some(key) = listener_key(ev) {
                self.listeners.listen(key, Known::of(ev));
            }
            return;
        }
        if ev.event != EventKind::State {
            return;
        }
        if old == Some(TcpState::Listen) && new == Some(TcpState::Close) {
            if let Some(key) = listener_key(ev) {
                self.listeners.close(&key);
            }
        }
        if new == Some(TcpState::Established) {
            self.remember_origin(ev);
        } else if let Some(t) = tuple(ev) {
            // Events arrive in order, so this is the state the socket was in
            // when any later event (a bind) happened.
            if let Some(k) = self.origins.get_mut(&NsKey::new(ev.netns, t)) {
                k.state = new;
            }
        }
    }

    /// FIN_WAIT2/CLOSING -> CLOSE is TIME_WAIT only if the kernel swapped in a
    /// timewait socket; resets and orphan timeouts look the same on the
    /// tracepoint. A kernel hook says so directly; otherwise ask the live
    /// socket table, where the timewait socket is already hashed by now. An
    /// orphan whose FIN was acked before the peer's FIN came is hashed in the
    /// FIN_WAIT2 sub-state (tcp_time_wait(sk, TCP_FIN_WAIT2)) and turns
    /// TIME_WAIT only when that FIN arrives, which no hook reports.
    fn closed(&mut self, ev: &Event, hints: Hints) -> Closed {
        if hints.timewait_confirmed {
            return Closed::TimeWait;
        }
        let Some(t) = tuple(ev) else {
            return Closed::Gone;
        };
        let prefetched = self
            .prefetched
            .get_mut(&NsKey::new(ev.netns, t))
            .and_then(Option::take);
        let state = match prefetched {
            Some(state) => state,
            None => self.sockets.tcp_state(ev.netns, t),
        };
        match state {
            Some(TcpState::TimeWait) => Closed::TimeWait,
            Some(TcpState::FinWait2) => Closed::Fw2,
            _ => Closed::Gone,
        }
    }

    fn remember_origin(&mut self, ev: &Event) {
        let Some(t) = tuple(ev) else {
            return;
        };
        if ev.pid.is_none() {
            return;
        }
        if self.origins.len() >= MAX_ORIGINS {
            let cutoff = ev.time - ORIGIN_TTL_NS;
            self.origins.retain(|_, k| k.time >= cutoff);
            if self.origins.len() >= MAX_ORIGINS {
                self.origins.clear();
            }
        }
        self.origins.insert(NsKey::new(ev.netns, t), Known::of(ev));
    }
}
