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

/// Live socket state: sock_diag on Linux, a fake in tests.
pub trait SocketProbe {
    /// The state of the TCP socket with this 4-tuple, if it exists.
    fn tcp_state(
        &mut self,
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
    ) -> Option<TcpState>;
    /// Every TCP and UDP socket whose local port is `port`.
    fn on_port(&mut self, port: u16) -> Vec<PortSocket>;
}

/// What portwatch adds about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
}

pub trait ProcessLookup {
    fn lookup(&mut self, pid: u32) -> Option<ProcessInfo>;
}

/// For replays: nothing live to ask.
pub struct Offline;

impl SocketProbe for Offline {
    fn tcp_state(&mut self, _: IpAddr, _: u16, _: IpAddr, _: u16) -> Option<TcpState> {
        None
    }
    fn on_port(&mut self, _: u16) -> Vec<PortSocket> {
        Vec::new()
    }
}

impl ProcessLookup for Offline {
    fn lookup(&mut self, _: u32) -> Option<ProcessInfo> {
        None
    }
}

type Tuple = (IpAddr, u16, IpAddr, u16);

#[derive(Clone, Debug)]
struct Known {
    pid: Option<u32>,
    comm: Option<String>,
    family: Option<Family>,
    time: i128,
}

/// Upper bounds on what attribution remembers, so a long trace stays small.
const MAX_PROCS: usize = 16384;
const MAX_TW_ORIGINS: usize = 262144;
/// TIME_WAIT lasts TCP_TIMEWAIT_LEN (60 s); keep origins a little longer.
const TW_ORIGIN_TTL_NS: i128 = 90 * 1_000_000_000;
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
    /// Who created each TIME_WAIT socket (the kernel forgets: they have no owner).
    tw_origins: HashMap<Tuple, Known>,
    /// Closes that left a timewait socket in its FIN_WAIT2 sub-state (an
    /// orphan whose FIN was acked before the peer's FIN came): it becomes
    /// TIME_WAIT when that FIN arrives. [`Attributor::poll`] re-checks them.
    fw2_pending: HashMap<Tuple, Event>,
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
            tw_origins: HashMap::new(),
            fw2_pending: HashMap::new(),
        }
    }

    /// Re-checks closes that were waiting in the FIN_WAIT2 sub-state; returns
    /// a timewait event (timed `now`) for each that has reached TIME_WAIT.
    /// `final_check`: the trace ends, so forget the ones still waiting.
    pub fn poll(&mut self, now: i128, final_check: bool) -> Vec<Event> {
        if self.fw2_pending.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let tuples: Vec<Tuple> = self.fw2_pending.keys().copied().collect();
        for t in tuples {
            let state = self.sockets.tcp_state(t.0, t.1, t.2, t.3);
            let expired = self
                .fw2_pending
                .get(&t)
                .is_some_and(|ev| now - ev.time > FW2_WAIT_NS);
            match state {
                Some(TcpState::TimeWait) => {
                    if let Some(ev) = self.fw2_pending.remove(&t) {
                        let tw = Event {
                            event: EventKind::Timewait,
                            new_state: Some(TcpState::TimeWait),
                            time: now.max(ev.time),
                            ..ev
                        };
                        self.remember_tw(&tw);
                        out.push(tw);
                    }
                }
                Some(TcpState::FinWait2) if !final_check && !expired => {}
                _ => {
                    self.fw2_pending.remove(&t);
                }
            }
        }
        out
    }

    /// Whether closes are waiting for [`Attributor::poll`].
    pub fn has_pending(&self) -> bool {
        !self.fw2_pending.is_empty()
    }

    /// One message in, zero or more answers out.
    pub fn process(&mut self, msg: SourceMsg) -> Vec<Event> {
        match msg {
            SourceMsg::Lost { time, count } => vec![Event::lost(time, count)],
            SourceMsg::Event(ev, hints) => self.event(ev, hints),
        }
    }

    fn enrich(&mut self, ev: &mut Event) {
        let Some(pid) = ev.pid else { return };
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
        if let Some((_, Some(info))) = self.proc_cache.get(&pid) {
            ev.cmdline.clone_from(&info.cmdline);
            ev.cgroup.clone_from(&info.cgroup);
        }
    }

    fn known(ev: &Event) -> Known {
        Known {
            pid: ev.pid,
            comm: ev.comm.clone(),
            family: ev.family,
            time: ev.time,
        }
    }

    fn event(&mut self, mut ev: Event, hints: Hints) -> Vec<Event> {
        self.enrich(&mut ev);
        match ev.event {
            EventKind::Listen => {
                if let Some(port) = ev.sport {
                    self.listeners.insert(port, Self::known(&ev));
                }
                vec![ev]
            }
            EventKind::State => {
                let (old, new) = (ev.old_state, ev.new_state);
                if old == Some(TcpState::Listen) && new == Some(TcpState::Close) {
                    if let Some(port) = ev.sport {
                        self.listeners.remove(&port);
                    }
                }
                let closing = matches!(old, Some(TcpState::FinWait2 | TcpState::Closing))
                    && new == Some(TcpState::Close);
                if !closing {
                    return vec![ev];
                }
                match self.closed(&ev, hints) {
                    Closed::TimeWait => {
                        let tw = Event {
                            event: EventKind::Timewait,
                            new_state: Some(TcpState::TimeWait),
                            ..ev.clone()
                        };
                        self.remember_tw(&tw);
                        vec![ev, tw]
                    }
                    Closed::Fw2 => {
                        if let (Some(sa), Some(sp), Some(da), Some(dp)) =
                            (ev.saddr, ev.sport, ev.daddr, ev.dport)
                        {
                            if self.fw2_pending.len() >= MAX_FW2_PENDING {
                                self.fw2_pending.clear();
                            }
                            self.fw2_pending.insert((sa, sp, da, dp), ev.clone());
                        }
                        vec![ev]
                    }
                    Closed::Gone => vec![ev],
                }
            }
            EventKind::Bind => {
                if ev.errno_value() == Some(errno::EADDRINUSE) {
                    if let Some(port) = ev.sport {
                        ev.holder = self.holder(port, ev.family);
                    }
                }
                vec![ev]
            }
            _ => vec![ev],
        }
    }

    /// FIN_WAIT2/CLOSING -> CLOSE is TIME_WAIT only if the kernel swapped in a
    /// timewait socket; resets and orphan timeouts look the same on the
    /// tracepoint. A kernel hook says so directly; otherwise ask the live
    /// socket table, where the timewait socket is already hashed by now. An
    /// orphan whose FIN was acked gets a timewait socket in the FIN_WAIT2
    /// sub-state (tcp_time_wait(sk, TCP_FIN_WAIT2, ...)), which turns into
    /// TIME_WAIT only when the peer's FIN arrives, possibly later.
    fn closed(&mut self, ev: &Event, hints: Hints) -> Closed {
        if hints.timewait_confirmed {
            return Closed::TimeWait;
        }
        let (Some(sa), Some(sp), Some(da), Some(dp)) = (ev.saddr, ev.sport, ev.daddr, ev.dport)
        else {
            return Closed::Gone;
        };
        match self.sockets.tcp_state(sa, sp, da, dp) {
            Some(TcpState::TimeWait) => Closed::TimeWait,
            Some(TcpState::FinWait2) => Closed::Fw2,
            _ => Closed::Gone,
        }
    }

    fn remember_tw(&mut self, tw: &Event) {
        let (Some(sa), Some(sp), Some(da), Some(dp)) = (tw.saddr, tw.sport, tw.daddr, tw.dport)
        else {
            return;
        };
        if self.tw_origins.len() >= MAX_TW_ORIGINS {
            let cutoff = tw.time - TW_ORIGIN_TTL_NS;
            self.tw_origins.retain(|_, k| k.time >= cutoff);
            if self.tw_origins.len() >= MAX_TW_ORIGINS {
                self.tw_origins.clear();
            }
        }
        self.tw_origins.insert((sa, sp, da, dp), Self::known(tw));
    }

    /// Who holds `port`: the live socket table says which sockets are bound
    /// there; the owner comes from the socket's process, or for a TIME_WAIT
    /// remnant from the process this trace saw create it.
    fn holder(&mut self, port: u16, family: Option<Family>) -> Option<Holder> {
        let sockets = self.sockets.on_port(port);
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
            if h.pid.is_none() {
                let known = self
                    .tw_origins
                    .get(&(best.saddr, best.sport, best.daddr, best.dport))
                    .or_else(|| {
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
    use std::net::Ipv4Addr;

    /// A socket table holding one 4-tuple in a settable state.
    struct OneSocket(Option<TcpState>);

    impl SocketProbe for OneSocket {
        fn tcp_state(&mut self, _: IpAddr, _: u16, _: IpAddr, _: u16) -> Option<TcpState> {
            self.0
        }
        fn on_port(&mut self, _: u16) -> Vec<PortSocket> {
            Vec::new()
        }
    }

    fn fin_wait2_close() -> SourceMsg {
        let mut ev = Event::new(1_000, EventKind::State);
        ev.pid = Some(42);
        ev.saddr = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        ev.sport = Some(8080);
        ev.daddr = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        ev.dport = Some(50000);
        ev.old_state = Some(TcpState::FinWait2);
        ev.new_state = Some(TcpState::Close);
        SourceMsg::Event(ev, Hints::default())
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
