//! Attribution of TCB state changes through the connection object.
//!
//! TcpTcbStateChange (1051) names only the TCB pointer: no process, no
//! addresses, and it is logged from whatever context moved the TCB (often a
//! DPC). The events that do name a process and both ends for a TCB (connect
//! complete/failure, accept, close, abort, disconnect, rundown) may come
//! before or after its first state changes: a connect's CLOSED -> SYN_SENT
//! -> ESTABLISHED precede TcpConnectTcbComplete. So this table remembers
//! each TCB's owner, holds back the state changes of TCBs it does not know
//! yet (bounded, for [`PENDING_NS`]), and releases them once an owner event
//! arrives: as the Linux collector remembers a socket's owner from the
//! transitions in process context. Held-back changes whose TCB never gets
//! an owner are released unattributed, never dropped.

use std::collections::HashMap;

use super::payload::SockAddr;
use super::{tcb_id, Decoded, FlowKind, Reservation};
use crate::model::{Attribution, Event, EventKind, Family, Hints, Protocol, SourceMsg, TcpState};

/// How long state changes of an unknown TCB wait for its owner.
pub const PENDING_NS: i128 = 2_000_000_000;
const MAX_OWNERS: usize = 65536;
const MAX_PENDING_TCBS: usize = 16384;
const MAX_PENDING_PER_TCB: usize = 16;
const MAX_FLOWS: usize = 65536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    pid: u32,
    local: SockAddr,
    remote: SockAddr,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    time: i128,
    old: TcpState,
    new: TcpState,
}

/// What the collector learnt beyond events: shown at the end of a trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// TcpGlobalParameters' TcpTimedWaitDelay, per family, in seconds.
    pub time_wait_delay: Vec<(Family, u32)>,
    /// Port reservations that succeeded (failures are bind events).
    pub reservations: Vec<Reservation>,
}

#[derive(Default)]
pub struct ConnTable {
    owners: HashMap<u64, Owner>,
    pending: HashMap<u64, Vec<Pending>>,
    /// Kernel-Network's pid per (local, remote), for owner events that
    /// carry pid 0 (logged outside any process).
    flows: HashMap<(SockAddr, SockAddr), u32>,
    pub notes: Notes,
}

impl ConnTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// One decoded event at `time`; what it yields is appended to `out`.
    pub fn push(&mut self, decoded: Decoded, time: i128, out: &mut Vec<SourceMsg>) {
        match decoded {
            Decoded::Event { event, tcb } => {
                if let (Some(tcb), Some(pid), Some(sa), Some(sp), Some(da), Some(dp)) = (
                    tcb,
                    event.pid,
                    event.saddr,
                    event.sport,
                    event.daddr,
                    event.dport,
                ) {
                    let family = event.family.unwrap_or(Family::Ipv4);
                    let owner = Owner {
                        pid,
                        local: SockAddr {
                            family,
                            addr: sa,
                            port: sp,
                        },
                        remote: SockAddr {
                            family,
                            addr: da,
                            port: dp,
                        },
                    };
                    self.learn(tcb, owner, out);
                }
                out.push(SourceMsg::Event(*event, Hints::default()));
            }
            Decoded::Owner {
                tcb,
                pid,
                local,
                remote,
            } => {
                let pid = if pid == 0 {
                    self.flows.get(&(local, remote)).copied().unwrap_or(0)
                } else {
                    pid
                };
                self.learn(tcb, Owner { pid, local, remote }, out);
            }
            Decoded::Flow {
                pid,
                local,
                remote,
                what,
            } => {
                if what == FlowKind::Disconnected {
                    self.flows.remove(&(local, remote));
                } else {
                    if self.flows.len() >= MAX_FLOWS {
                        self.flows.clear();
                    }
                    self.flows.insert((local, remote), pid);
                }
            }
            Decoded::TcbState { tcb, old, new } => match self.owners.get(&tcb).copied() {
                Some(owner) => {
                    out.push(state_msg(tcb, Some(owner), time, old, new));
                    if matches!(new, TcpState::Close | TcpState::TimeWait) {
                        // The TCB is freed (a TIME_WAIT one is replaced by
                        // a timewait TCB); its address may be reused.
                        self.owners.remove(&tcb);
                    }
                }
                None => {
                    if self.pending.len() >= MAX_PENDING_TCBS && !self.pending.contains_key(&tcb) {
                        self.release_expired(i128::MAX, out);
                    }
                    let list = self.pending.entry(tcb).or_default();
                    if list.len() >= MAX_PENDING_PER_TCB {
                        let p = list.remove(0);
                        out.push(state_msg(tcb, None, p.time, p.old, p.new));
                    }
                    list.push(Pending { time, old, new });
                }
            },
            Decoded::TimeWaitDelay { family, seconds } => {
                self.notes.time_wait_delay.retain(|(f, _)| *f != family);
                self.notes.time_wait_delay.push((family, seconds));
            }
            Decoded::PortReservation(r) => {
                if r.ret < 0 {
                    let mut ev = Event::new(time, EventKind::Bind);
                    ev.pid = Some(r.pid);
                    ev.protocol = Some(Protocol::Tcp);
                    ev.sport = Some(r.start);
                    ev.attribution = Attribution::Current;
                    ev.set_ret(r.ret);
                    out.push(SourceMsg::Event(ev, Hints::default()));
                } else {
                    self.notes.reservations.push(r);
                }
            }
            Decoded::Ignored => {}
        }
    }

    fn learn(&mut self, tcb: u64, owner: Owner, out: &mut Vec<SourceMsg>) {
        if let Some(list) = self.pending.remove(&tcb) {
            let mut gone = false;
            for p in list {
                out.push(state_msg(tcb, Some(owner), p.time, p.old, p.new));
                gone = matches!(p.new, TcpState::Close | TcpState::TimeWait);
            }
            if gone {
                return;
            }
        }
        if self.owners.len() >= MAX_OWNERS {
            self.owners.clear();
        }
        self.owners.insert(tcb, owner);
    }

    /// Releases, unattributed, the held-back changes older than
    /// [`PENDING_NS`] at `now` (all of them with `i128::MAX`, at the end).
    pub fn release_expired(&mut self, now: i128, out: &mut Vec<SourceMsg>) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, l)| {
                l.first()
                    .is_some_and(|p| now.saturating_sub(p.time) > PENDING_NS)
            })
            .map(|(t, _)| *t)
            .collect();
        let mut msgs = Vec::new();
        for tcb in expired {
            for p in self.pending.remove(&tcb).unwrap_or_default() {
                msgs.push((p.time, state_msg(tcb, None, p.time, p.old, p.new)));
            }
        }
        msgs.sort_by_key(|(t, _)| *t);
        out.extend(msgs.into_iter().map(|(_, m)| m));
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// A TCB transition as a model event: TIME_WAIT entries as `timewait`
/// (Windows reports them directly; no socket-table check is needed).
fn state_msg(
    tcb: u64,
    owner: Option<Owner>,
    time: i128,
    old: TcpState,
    new: TcpState,
) -> SourceMsg {
    let timewait = new == TcpState::TimeWait;
    let mut ev = Event::new(
        time,
        if timewait {
            EventKind::Timewait
        } else {
            EventKind::State
        },
    );
    ev.protocol = Some(Protocol::Tcp);
    ev.old_state = Some(old);
    ev.new_state = Some(new);
    ev.sock = Some(tcb_id(tcb));
    if let Some(o) = owner {
        ev.pid = (o.pid != 0).then_some(o.pid);
        ev.family = Some(o.local.family);
        ev.saddr = Some(o.local.addr);
        ev.sport = Some(o.local.port);
        ev.daddr = Some(o.remote.addr);
        ev.dport = Some(o.remote.port);
        ev.attribution = if ev.pid.is_some() {
            Attribution::Remembered
        } else {
            Attribution::Unknown
        };
    }
    SourceMsg::Event(
        ev,
        Hints {
            timewait_confirmed: timewait,
            ..Hints::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn sa(s: &str) -> SockAddr {
        let a: std::net::SocketAddr = s.parse().unwrap();
        SockAddr {
            family: if a.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            addr: a.ip(),
            port: a.port(),
        }
    }

    fn events(out: &[SourceMsg]) -> Vec<&Event> {
        out.iter()
            .filter_map(|m| match m {
                SourceMsg::Event(e, _) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn st(tcb: u64, old: TcpState, new: TcpState) -> Decoded {
        Decoded::TcbState { tcb, old, new }
    }

    #[test]
    fn state_changes_before_the_owner_event_are_released_with_its_pid() {
        use TcpState::*;
        let mut t = ConnTable::new();
        let mut out = Vec::new();
        t.push(st(0xa0, Close, SynSent), 10, &mut out);
        t.push(st(0xa0, SynSent, Established), 20, &mut out);
        assert!(out.is_empty(), "held back until the owner is known");
        let mut connect = Event::new(30, EventKind::Connect);
        connect.pid = Some(4242);
        connect.family = Some(Family::Ipv4);
        connect.saddr = Some("10.0.0.5".parse().unwrap());
        connect.sport = Some(50123);
        connect.daddr = Some("10.0.0.9".parse().unwrap());
        connect.dport = Some(1433);
        connect.set_ret(0);
        t.push(
            Decoded::Event {
                event: Box::new(connect),
                tcb: Some(0xa0),
            },
            30,
            &mut out,
        );
        let ev = events(&out);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].new_state, Some(SynSent));
        assert_eq!(ev[1].new_state, Some(Established));
        assert!(ev[..2].iter().all(|e| e.pid == Some(4242)
            && e.attribution == Attribution::Remembered
            && e.dport == Some(1433)
            && e.sock == Some(tcb_id(0xa0))));
        assert_eq!(ev[2].event, EventKind::Connect);
        // Later changes of the same TCB come out at once, attributed.
        out.clear();
        t.push(st(0xa0, Established, FinWait1), 40, &mut out);
        t.push(st(0xa0, FinWait1, FinWait2), 41, &mut out);
        t.push(st(0xa0, FinWait2, TimeWait), 42, &mut out);
        let ev = events(&out);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[2].event, EventKind::Timewait);
        assert_eq!(ev[2].pid, Some(4242));
        assert!(matches!(out[2], SourceMsg::Event(_, h) if h.timewait_confirmed));
        // The TCB is gone after TIME_WAIT: a reused address starts unknown.
        out.clear();
        t.push(st(0xa0, Close, SynSent), 50, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn accepted_connections_take_the_accepting_process() {
        use TcpState::*;
        let mut t = ConnTable::new();
        let mut out = Vec::new();
        t.push(st(0xb0, Listen, SynRecv), 1, &mut out);
        t.push(st(0xb0, SynRecv, Established), 2, &mut out);
        t.push(
            Decoded::Owner {
                tcb: 0xb0,
                pid: 900,
                local: sa("[::1]:1433"),
                remote: sa("[::1]:50000"),
            },
            3,
            &mut out,
        );
        let ev = events(&out);
        assert_eq!(ev.len(), 2);
        assert!(ev
            .iter()
            .all(|e| e.pid == Some(900) && e.sport == Some(1433)));
        assert_eq!(ev[0].saddr, Some("::1".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn unowned_changes_are_released_unattributed_after_the_wait() {
        use TcpState::*;
        let mut t = ConnTable::new();
        let mut out = Vec::new();
        t.push(st(0xc0, Established, CloseWait), 0, &mut out);
        t.release_expired(PENDING_NS - 1, &mut out);
        assert!(out.is_empty() && t.has_pending());
        t.release_expired(PENDING_NS + 1, &mut out);
        let ev = events(&out);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].attribution, Attribution::Unknown);
        assert_eq!(ev[0].pid, None);
        assert!(!t.has_pending());
    }

    #[test]
    fn pid_zero_owners_borrow_the_kernel_network_flow_pid() {
        let mut t = ConnTable::new();
        let mut out = Vec::new();
        let (l, r) = (sa("10.0.0.5:50000"), sa("10.0.0.9:80"));
        t.push(
            Decoded::Flow {
                pid: 77,
                local: l,
                remote: r,
                what: FlowKind::Connected,
            },
            0,
            &mut out,
        );
        t.push(
            Decoded::Owner {
                tcb: 1,
                pid: 0,
                local: l,
                remote: r,
            },
            1,
            &mut out,
        );
        t.push(
            st(1, TcpState::Established, TcpState::FinWait1),
            2,
            &mut out,
        );
        assert_eq!(events(&out)[0].pid, Some(77));
    }

    #[test]
    fn notes_and_failed_reservations() {
        let mut t = ConnTable::new();
        let mut out = Vec::new();
        t.push(
            Decoded::TimeWaitDelay {
                family: Family::Ipv4,
                seconds: 30,
            },
            0,
            &mut out,
        );
        let r = |ret| Reservation {
            pid: 5,
            ret,
            start: 50000,
            count: 10,
            scope: "endpoint",
        };
        t.push(Decoded::PortReservation(r(0)), 0, &mut out);
        t.push(Decoded::PortReservation(r(-98)), 0, &mut out);
        assert_eq!(t.notes.time_wait_delay, vec![(Family::Ipv4, 30)]);
        assert_eq!(t.notes.reservations.len(), 1);
        let ev = events(&out);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].errno.as_deref(), Some("EADDRINUSE"));
    }
}
