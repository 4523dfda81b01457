//! Attribution: turns what a collector saw into answers. Adds each process's
//! command line and cgroup, confirms TIME_WAIT entries, and names the holder
//! of a port that a bind() could not get.
//!
//! The system is reached only through [`SocketProbe`] and [`ProcessLookup`],
//! so this module is tested from recorded events without root.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::errno;
use crate::model::{Event, EventKind, Family, Hints, Holder, Protocol, SourceMsg, TcpState};

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
}

/// Live socket state: sock_diag on Linux, a fake in tests. `netns` is the
/// network namespace to look in (the event owner's), when known.
pub trait SocketProbe {
    /// The state of the TCP socket with this 4-tuple, if it exists.
    fn tcp_state(
        &mut self,
        netns: Option<u64>,
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
    ) -> Option<TcpState>;
    /// Every TCP and UDP socket whose local port is `port`.
    fn on_port(&mut self, netns: Option<u64>, port: u16) -> Vec<PortSocket>;
    /// [`SocketProbe::tcp_state`] for many sockets of one namespace, in
    /// order: one round trip where the probe can batch.
    fn tcp_states(&mut self, netns: Option<u64>, tuples: &[Tuple]) -> Vec<Option<TcpState>> {
        tuples
            .iter()
            .map(|&(sa, sp, da, dp)| self.tcp_state(netns, sa, sp, da, dp))
            .collect()
    }
}

/// What portwatch adds about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// Inode of its network namespace.
    pub netns: Option<u64>,
}

pub trait ProcessLookup {
    fn lookup(&mut self, pid: u32) -> Option<ProcessInfo>;
    /// The path of a cgroup v2 id, for processes that are gone by the time
    /// their event is read.
    fn cgroup_path(&mut self, _id: u64) -> Option<String> {
        None
    }
}

/// For replays: nothing live to ask.
pub struct Offline;

impl SocketProbe for Offline {
    fn tcp_state(
        &mut self,
        _: Option<u64>,
        _: IpAddr,
        _: u16,
        _: IpAddr,
        _: u16,
    ) -> Option<TcpState> {
        None
    }
    fn on_port(&mut self, _: Option<u64>, _: u16) -> Vec<PortSocket> {
        Vec::new()
    }
}

impl ProcessLookup for Offline {
    fn lookup(&mut self, _: u32) -> Option<ProcessInfo> {
        None
    }
}

/// A TCP connection's (saddr, sport, daddr, dport).
pub type Tuple = (IpAddr, u16, IpAddr, u16);

#[derive(Clone, Debug)]
struct Known {
    pid: Option<u32>,
    comm: Option<String>,
    family: Option<Family>,
    time: i128,
    /// The last state this trace saw the socket in.
    state: Option<TcpState>,
}

/// Whether `ev` is a FIN_WAIT2/CLOSING -> CLOSE that only the socket table
/// can confirm as TIME_WAIT.
fn needs_socket_check(ev: &Event, hints: Hints) -> bool {
    ev.event == EventKind::State
        && !hints.timewait_confirmed
        && matches!(ev.old_state, Some(TcpState::FinWait2 | TcpState::Closing))
        && ev.new_state == Some(TcpState::Close)
}

fn tuple(ev: &Event) -> Option<Tuple> {
    Some((ev.saddr?, ev.sport?, ev.daddr?, ev.dport?))
}

/// Upper bounds on what attribution remembers, so a long trace stays small.
const MAX_PROCS: usize = 16384;
const MAX_ORIGINS: usize = 65536;
/// TIME_WAIT lasts TCP_TIMEWAIT_LEN (60 s); when the table is full, forget
/// origins older than that and a margin first.
const ORIGIN_TTL_NS: i128 = 90 * 1_000_000_000;
/// How long a timewait socket may sit in its FIN_WAIT2 sub-state before we
/// stop waiting for the peer's FIN: net.ipv4.tcp_fin_timeout's default.
const FW2_WAIT_NS: i128 = 60 * 1_000_000_000;
const MAX_FW2_PENDING: usize = 65536;

pub struct Attributor<S, P> {
    sockets: S,
    processes: P,
    proc_cache: HashMap<u32, (Option<String>, Option<ProcessInfo>)>,
    /// Listening sockets seen during the trace, by port.
    listeners: HashMap<u16, Known>,
    /// Who made each connection (by 4-tuple), for the sockets that outlive
    /// their owner: TIME_WAIT and orphans have no process the kernel knows.
    origins: HashMap<Tuple, Known>,
    /// Socket states fetched ahead for the batch being processed, by
    /// namespace and 4-tuple.
    prefetched: HashMap<(Option<u64>, Tuple), Option<TcpState>>,
    /// Closes that left a timewait socket in its FIN_WAIT2 sub-state (an
    /// orphan whose FIN was acked before the peer's FIN came): it becomes
    /// TIME_WAIT when that FIN arrives. [`Attributor::poll`] re-checks them.
    fw2_pending: HashMap<(Option<u64>, Tuple), Event>,
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
            proc_cache: HashMap::new(),
            listeners: HashMap::new(),
            origins: HashMap::new(),
            prefetched: HashMap::new(),
            fw2_pending: HashMap::new(),
        }
    }

    /// Looks up, in one batch, every socket that the TIME_WAIT check of
    /// these messages will ask about; [`Attributor::process`] then uses the
    /// answers instead of one round trip per event.
    pub fn prefetch(&mut self, msgs: &[SourceMsg]) {
        self.prefetched.clear();
        let mut by_netns: HashMap<Option<u64>, Vec<Tuple>> = HashMap::new();
        for m in msgs {
            if let SourceMsg::Event(ev, hints) = m {
                if needs_socket_check(ev, *hints) {
                    if let Some(t) = tuple(ev) {
                        let netns = self.netns_of(ev);
                        by_netns.entry(netns).or_default().push(t);
                    }
                }
            }
        }
        for (netns, tuples) in by_netns {
            let states = self.sockets.tcp_states(netns, &tuples);
            self.prefetched
                .extend(tuples.into_iter().map(|t| (netns, t)).zip(states));
        }
    }

    /// Re-checks closes that were waiting in the FIN_WAIT2 sub-state; returns
    /// a timewait event (timed `now`) for each that has reached TIME_WAIT.
    /// `final_check`: the trace ends, so forget the ones still waiting.
    pub fn poll(&mut self, now: i128, final_check: bool) -> Vec<Event> {
        let mut out = Vec::new();
        if self.fw2_pending.is_empty() {
            return out;
        }
        let mut by_netns: HashMap<Option<u64>, Vec<Tuple>> = HashMap::new();
        for (netns, t) in self.fw2_pending.keys() {
            by_netns.entry(*netns).or_default().push(*t);
        }
        for (netns, tuples) in by_netns {
            let states = self.sockets.tcp_states(netns, &tuples);
            for (t, state) in tuples.into_iter().zip(states) {
                let key = (netns, t);
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
                                time: now.max(ev.time),
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

    /// Whether [`Attributor::poll`] has anything to re-check.
    pub fn has_pending(&self) -> bool {
        !self.fw2_pending.is_empty()
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
            SourceMsg::Lost { time, count } => out.push(Event::lost(time, count)),
            SourceMsg::Event(ev, hints) => self.event(ev, hints, out),
        }
    }

    /// What /proc says about the event's process, read once per process.
    fn info(&mut self, ev: &Event) -> Option<&ProcessInfo> {
        let pid = ev.pid?;
        // A pid can be reused: the cached entry is valid only for the same comm.
        let fresh = match self.proc_cache.get(&pid) {
            Some((comm, _)) => comm != &ev.comm,
            None => true,
        };
        if fresh {
            if self.proc_cache.len() >= MAX_PROCS {
                self.proc_cache.clear();
            }
            let info = self.processes.lookup(pid);
            self.proc_cache.insert(pid, (ev.comm.clone(), info));
        }
        self.proc_cache
            .get(&pid)
            .and_then(|(_, info)| info.as_ref())
    }

    fn netns_of(&mut self, ev: &Event) -> Option<u64> {
        self.info(ev).and_then(|i| i.netns)
    }

    fn enrich(&mut self, ev: &mut Event) {
        if self.info(ev).is_some() {
            if let Some((_, Some(info))) = ev.pid.and_then(|p| self.proc_cache.get(&p)) {
                ev.cmdline.clone_from(&info.cmdline);
                ev.cgroup.clone_from(&info.cgroup);
                ev.netns = info.netns;
            }
        }
        if ev.cgroup.is_none() {
            if let Some(id) = ev.cgroup_id {
                ev.cgroup = self.processes.cgroup_path(id);
            }
        }
    }

    fn known(ev: &Event) -> Known {
        Known {
            pid: ev.pid,
            comm: ev.comm.clone(),
            family: ev.family,
            time: ev.time,
            state: ev.new_state,
        }
    }

    fn event(&mut self, mut ev: Event, hints: Hints, out: &mut Vec<Event>) {
        self.enrich(&mut ev);
        match ev.event {
            EventKind::Listen => {
                if let Some(port) = ev.sport {
                    self.listeners.insert(port, Self::known(&ev));
                }
                out.push(ev);
            }
            EventKind::State => {
                let (old, new) = (ev.old_state, ev.new_state);
                if old == Some(TcpState::Listen) && new == Some(TcpState::Close) {
                    if let Some(port) = ev.sport {
                        self.listeners.remove(&port);
                    }
                }
                if new == Some(TcpState::Established) {
                    self.remember_origin(&ev);
                } else if let (Some(sa), Some(sp), Some(da), Some(dp)) =
                    (ev.saddr, ev.sport, ev.daddr, ev.dport)
                {
                    // Events arrive in order, so this is the state the socket
                    // was in when any later event (a bind) happened.
                    if let Some(k) = self.origins.get_mut(&(sa, sp, da, dp)) {
                        k.state = new;
                    }
                }
                let closing = matches!(old, Some(TcpState::FinWait2 | TcpState::Closing))
                    && new == Some(TcpState::Close);
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
                                self.fw2_pending.clear();
                            }
                            self.fw2_pending.insert((ev.netns, t), ev.clone());
                        }
                        out.push(ev);
                    }
                    Closed::Gone => out.push(ev),
                }
            }
            EventKind::Bind => {
                if ev.errno_value() == Some(errno::EADDRINUSE) {
                    if let Some(port) = ev.sport {
                        ev.holder = self.holder(ev.netns, port, ev.family);
                    }
                }
                out.push(ev);
            }
            _ => out.push(ev),
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
        let state = match self.prefetched.remove(&(ev.netns, t)) {
            Some(state) => state,
            None => self.sockets.tcp_state(ev.netns, t.0, t.1, t.2, t.3),
        };
        match state {
            Some(TcpState::TimeWait) => Closed::TimeWait,
            Some(TcpState::FinWait2) => Closed::Fw2,
            _ => Closed::Gone,
        }
    }

    fn remember_origin(&mut self, ev: &Event) {
        let (Some(sa), Some(sp), Some(da), Some(dp)) = (ev.saddr, ev.sport, ev.daddr, ev.dport)
        else {
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
        self.origins.insert((sa, sp, da, dp), Self::known(ev));
    }

    /// Who holds `port`: the live socket table says which sockets are bound
    /// there; the owner comes from the socket's process, or for a TIME_WAIT
    /// remnant from the process this trace saw create it.
    fn holder(&mut self, netns: Option<u64>, port: u16, family: Option<Family>) -> Option<Holder> {
        let sockets = self.sockets.on_port(netns, port);
        let family_of = |a: &IpAddr| match a {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        };
        let rank = |s: &PortSocket| {
            let mut r = 0;
            if s.state == Some(TcpState::Listen) {
                r += 8;
            }
            if s.pid.is_some() {
                r += 4;
            }
            if s.protocol == Protocol::Tcp {
                r += 2;
            }
            if Some(family_of(&s.saddr)) == family {
                r += 1;
            }
            r
        };
        if let Some(best) = sockets.iter().max_by_key(|s| rank(s)) {
            let mut h = Holder {
                pid: best.pid,
                comm: best.comm.clone(),
                state: best.state,
                protocol: Some(best.protocol),
                saddr: best.saddr,
                sport: best.sport,
                daddr: best.daddr,
                dport: best.dport,
            };
            // The snapshot is taken when the bind's event is processed, a
            // little after it happened; what the trace saw of that connection
            // up to the bind is the state it held the port in.
            let seen = self
                .origins
                .get(&(best.saddr, best.sport, best.daddr, best.dport));
            if let Some(k) = seen {
                if k.state.is_some() && k.state != Some(TcpState::Close) {
                    h.state = k.state;
                }
            }
            if h.pid.is_none() {
                let known = seen.or_else(|| {
                    (best.state == Some(TcpState::Listen))
                        .then(|| self.listeners.get(&port))
                        .flatten()
                });
                if let Some(k) = known {
                    h.pid = k.pid;
                    h.comm.clone_from(&k.comm);
                }
            }
            return Some(h);
        }
        // Not in this namespace's table, but this trace saw it start listening.
        self.listeners.get(&port).map(|k| Holder {
            pid: k.pid,
            comm: k.comm.clone(),
            state: Some(TcpState::Listen),
            protocol: Some(Protocol::Tcp),
            saddr: match k.family {
                Some(Family::Ipv6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            },
            sport: port,
            daddr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            dport: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Attribution;
    use std::collections::HashMap as Map;

    #[derive(Default)]
    struct FakeSockets {
        states: Map<Tuple, TcpState>,
        ports: Map<u16, Vec<PortSocket>>,
        lookups: usize,
    }

    impl SocketProbe for FakeSockets {
        fn tcp_state(
            &mut self,
            _: Option<u64>,
            sa: IpAddr,
            sp: u16,
            da: IpAddr,
            dp: u16,
        ) -> Option<TcpState> {
            self.lookups += 1;
            self.states.get(&(sa, sp, da, dp)).copied()
        }
        fn on_port(&mut self, _: Option<u64>, port: u16) -> Vec<PortSocket> {
            self.ports.get(&port).cloned().unwrap_or_default()
        }
    }

    struct FakeProcs(usize);

    impl ProcessLookup for FakeProcs {
        fn lookup(&mut self, pid: u32) -> Option<ProcessInfo> {
            self.0 += 1;
            Some(ProcessInfo {
                cmdline: Some(format!("/usr/bin/app --id {pid}")),
                cgroup: Some("/system.slice/app.service".into()),
                netns: None,
            })
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn state(pid: u32, old: TcpState, new: TcpState, sport: u16, dport: u16) -> Event {
        let mut ev = Event::new(1_000, EventKind::State);
        ev.pid = Some(pid);
        ev.comm = Some(format!("app{pid}"));
        ev.family = Some(Family::Ipv4);
        ev.saddr = Some(ip("10.0.0.1"));
        ev.daddr = Some(ip("10.0.0.2"));
        ev.sport = Some(sport);
        ev.dport = Some(dport);
        ev.old_state = Some(old);
        ev.new_state = Some(new);
        ev.attribution = Attribution::Remembered;
        ev
    }

    fn msg(ev: Event) -> SourceMsg {
        SourceMsg::Event(ev, Hints::default())
    }

    #[test]
    fn fin_wait2_to_close_counts_only_when_the_socket_table_confirms() {
        let mut sockets = FakeSockets::default();
        sockets.states.insert(
            (ip("10.0.0.1"), 40001, ip("10.0.0.2"), 80),
            TcpState::TimeWait,
        );
        let mut a = Attributor::new(sockets, FakeProcs(0));
        let out = a.process(msg(state(
            7,
            TcpState::FinWait2,
            TcpState::Close,
            40001,
            80,
        )));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].event, EventKind::Timewait);
        assert_eq!(out[1].new_state, Some(TcpState::TimeWait));
        assert_eq!(out[1].pid, Some(7));
        // The same transition after a reset: no timewait socket, so no entry.
        let out = a.process(msg(state(
            7,
            TcpState::FinWait2,
            TcpState::Close,
            40002,
            80,
        )));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event, EventKind::State);
    }

    #[test]
    fn a_prefetched_batch_is_confirmed_without_a_lookup_per_event() {
        let mut sockets = FakeSockets::default();
        sockets.states.insert(
            (ip("10.0.0.1"), 40001, ip("10.0.0.2"), 80),
            TcpState::TimeWait,
        );
        let mut a = Attributor::new(sockets, FakeProcs(0));
        let batch = vec![
            msg(state(7, TcpState::FinWait2, TcpState::Close, 40001, 80)),
            msg(state(7, TcpState::FinWait2, TcpState::Close, 40002, 80)),
            msg(state(
                7,
                TcpState::Established,
                TcpState::FinWait1,
                40003,
                80,
            )),
        ];
        a.prefetch(&batch);
        assert_eq!(a.sockets.lookups, 2, "only the two closes need the table");
        let out: Vec<Event> = batch.into_iter().flat_map(|m| a.process(m)).collect();
        assert_eq!(a.sockets.lookups, 2, "answers come from the prefetch");
        let tw: Vec<&Event> = out
            .iter()
            .filter(|e| e.event == EventKind::Timewait)
            .collect();
        assert_eq!(tw.len(), 1);
        assert_eq!(tw[0].sport, Some(40001));
    }

    #[test]
    fn a_kernel_confirmation_needs_no_lookup() {
        let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0));
        let out = a.process(SourceMsg::Event(
            state(9, TcpState::Closing, TcpState::Close, 40003, 443),
            Hints {
                timewait_confirmed: true,
            },
        ));
        assert_eq!(
            out.iter()
                .filter(|e| e.event == EventKind::Timewait)
                .count(),
            1
        );
        assert_eq!(a.sockets.lookups, 0);
        // Other transitions never produce timewait.
        let out = a.process(msg(state(
            9,
            TcpState::Established,
            TcpState::FinWait1,
            1,
            2,
        )));
        assert_eq!(out.len(), 1);
        assert_eq!(a.sockets.lookups, 0);
    }

    fn failed_bind(pid: u32, port: u16) -> Event {
        let mut ev = Event::new(2_000, EventKind::Bind);
        ev.pid = Some(pid);
        ev.comm = Some("sqlservr".into());
        ev.family = Some(Family::Ipv4);
        ev.saddr = Some(ip("0.0.0.0"));
        ev.sport = Some(port);
        ev.set_ret(-98);
        ev
    }

    #[test]
    fn eaddrinuse_names_the_listener_holding_the_port() {
        let mut sockets = FakeSockets::default();
        sockets.ports.insert(
            1433,
            vec![
                PortSocket {
                    protocol: Protocol::Udp,
                    state: None,
                    saddr: ip("0.0.0.0"),
                    sport: 1433,
                    daddr: ip("0.0.0.0"),
                    dport: 0,
                    pid: Some(300),
                    comm: Some("dns".into()),
                },
                PortSocket {
                    protocol: Protocol::Tcp,
                    state: Some(TcpState::Listen),
                    saddr: ip("0.0.0.0"),
                    sport: 1433,
                    daddr: ip("0.0.0.0"),
                    dport: 0,
                    pid: Some(200),
                    comm: Some("squatter".into()),
                },
            ],
        );
        let mut a = Attributor::new(sockets, FakeProcs(0));
        let out = a.process(msg(failed_bind(100, 1433)));
        let h = out[0].holder.as_ref().expect("holder");
        assert_eq!(h.pid, Some(200));
        assert_eq!(h.comm.as_deref(), Some("squatter"));
        assert_eq!(h.state, Some(TcpState::Listen));
        assert_eq!(h.protocol, Some(Protocol::Tcp));
    }

    #[test]
    fn a_timewait_remnant_is_charged_to_the_process_that_created_it() {
        let mut sockets = FakeSockets::default();
        let tuple = (ip("10.0.0.1"), 5000, ip("10.0.0.2"), 80);
        sockets.states.insert(tuple, TcpState::TimeWait);
        sockets.ports.insert(
            5000,
            vec![PortSocket {
                protocol: Protocol::Tcp,
                state: Some(TcpState::TimeWait),
                saddr: tuple.0,
                sport: 5000,
                daddr: tuple.2,
                dport: 80,
                pid: None,
                comm: None,
            }],
        );
        let mut a = Attributor::new(sockets, FakeProcs(0));
        a.process(msg(state(
            55,
            TcpState::FinWait2,
            TcpState::Close,
            5000,
            80,
        )));
        let out = a.process(msg(failed_bind(66, 5000)));
        let h = out[0].holder.as_ref().expect("holder");
        assert_eq!(h.state, Some(TcpState::TimeWait));
        assert_eq!(h.pid, Some(55));
        assert_eq!(h.comm.as_deref(), Some("app55"));
    }

    #[test]
    fn a_remnant_of_a_connection_seen_established_names_its_maker() {
        // The bind's holder lookup can run after the holder's connection
        // closed, before its timewait event: the established one names it.
        let mut sockets = FakeSockets::default();
        sockets.ports.insert(
            1433,
            vec![PortSocket {
                protocol: Protocol::Tcp,
                state: Some(TcpState::TimeWait),
                saddr: ip("10.0.0.1"),
                sport: 1433,
                daddr: ip("10.0.0.2"),
                dport: 8080,
                pid: None,
                comm: None,
            }],
        );
        let mut a = Attributor::new(sockets, FakeProcs(0));
        a.process(msg(state(
            31,
            TcpState::SynSent,
            TcpState::Established,
            1433,
            8080,
        )));
        let out = a.process(msg(failed_bind(32, 1433)));
        let h = out[0].holder.as_ref().expect("holder");
        // It held the port ESTABLISHED when the bind failed, whatever the
        // snapshot taken a moment later says.
        assert_eq!((h.pid, h.state), (Some(31), Some(TcpState::Established)));
        let fin = state(31, TcpState::Established, TcpState::FinWait1, 1433, 8080);
        a.process(msg(fin));
        let out = a.process(msg(failed_bind(32, 1433)));
        let h = out[0].holder.as_ref().expect("holder");
        assert_eq!(h.state, Some(TcpState::FinWait1));
    }

    #[test]
    fn a_listener_seen_by_the_trace_is_the_holder_when_the_table_has_none() {
        let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0));
        let mut listen = state(77, TcpState::Close, TcpState::Listen, 8080, 0);
        listen.event = EventKind::Listen;
        a.process(msg(listen));
        let out = a.process(msg(failed_bind(88, 8080)));
        assert_eq!(out[0].holder.as_ref().and_then(|h| h.pid), Some(77));
        // Once it stops listening, it holds nothing.
        a.process(msg(state(77, TcpState::Listen, TcpState::Close, 8080, 0)));
        let out = a.process(msg(failed_bind(88, 8080)));
        assert_eq!(out[0].holder, None);
    }

    #[test]
    fn other_failures_get_no_holder() {
        let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0));
        let mut ev = failed_bind(1, 80);
        ev.set_ret(-13);
        let out = a.process(msg(ev));
        assert_eq!(out[0].errno.as_deref(), Some("EACCES"));
        assert_eq!(out[0].holder, None);
    }

    #[test]
    fn process_details_are_cached_per_pid_and_refreshed_on_reuse() {
        let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0));
        for _ in 0..3 {
            let out = a.process(msg(state(5, TcpState::Close, TcpState::SynSent, 0, 80)));
            assert_eq!(out[0].cmdline.as_deref(), Some("/usr/bin/app --id 5"));
            assert_eq!(out[0].cgroup.as_deref(), Some("/system.slice/app.service"));
        }
        assert_eq!(a.processes.0, 1);
        let mut reused = state(5, TcpState::Close, TcpState::SynSent, 0, 80);
        reused.comm = Some("other".into());
        a.process(msg(reused));
        assert_eq!(a.processes.0, 2);
    }

    #[test]
    fn lost_messages_become_lost_events() {
        let mut a = Attributor::new(Offline, Offline);
        let out = a.process(SourceMsg::Lost { time: 5, count: 12 });
        assert_eq!(out, vec![Event::lost(5, 12)]);
    }

    /// A socket table holding one 4-tuple in a settable state.
    struct OneSocket(Option<TcpState>);

    impl SocketProbe for OneSocket {
        fn tcp_state(
            &mut self,
            _: Option<u64>,
            _: IpAddr,
            _: u16,
            _: IpAddr,
            _: u16,
        ) -> Option<TcpState> {
            self.0
        }
        fn on_port(&mut self, _: Option<u64>, _: u16) -> Vec<PortSocket> {
            Vec::new()
        }
    }

    fn fin_wait2_close() -> SourceMsg {
        let mut ev = state(42, TcpState::FinWait2, TcpState::Close, 23080, 50000);
        ev.time = 1_000;
        msg(ev)
    }

    #[test]
    fn orphan_fin_wait2_becomes_timewait_when_the_peer_fin_arrives() {
        let mut a = Attributor::new(OneSocket(Some(TcpState::FinWait2)), Offline);
        let out = a.process(fin_wait2_close());
        assert_eq!(out.len(), 1, "no TIME_WAIT yet: {out:?}");
        assert!(a.has_pending());
        assert!(a.poll(2_000, false).is_empty());
        a.sockets.0 = Some(TcpState::TimeWait);
        let tw = a.poll(3_000, false);
        assert_eq!(tw.len(), 1);
        assert_eq!(tw[0].event, EventKind::Timewait);
        assert_eq!(tw[0].pid, Some(42));
        assert_eq!(tw[0].time, 3_000);
        assert!(!a.has_pending());
    }

    #[test]
    fn orphan_fin_wait2_that_times_out_is_not_timewait() {
        let mut a = Attributor::new(OneSocket(Some(TcpState::FinWait2)), Offline);
        a.process(fin_wait2_close());
        a.sockets.0 = None;
        assert!(a.poll(2_000, false).is_empty());
        assert!(!a.has_pending());

        let mut a = Attributor::new(OneSocket(Some(TcpState::FinWait2)), Offline);
        a.process(fin_wait2_close());
        assert!(a.poll(2_000, true).is_empty(), "the final check forgets it");
        assert!(!a.has_pending());
    }
}
