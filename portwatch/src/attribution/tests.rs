//! Attribution from recorded events, with fake sockets and processes.

use super::fixtures::AnyState;
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
    fn tcp_state(&mut self, _: Option<u64>, t: Tuple) -> Option<TcpState> {
        self.lookups += 1;
        self.states.get(&t).copied()
    }
    fn on_port(&mut self, _: Option<u64>, port: u16) -> Result<Vec<PortSocket>, String> {
        Ok(self.ports.get(&port).cloned().unwrap_or_default())
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
            container_pid: None,
        })
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn state(pid: u32, old: TcpState, new: TcpState, sport: u16, dport: u16) -> Event {
    let mut ev = Event::new(1_000, EventKind::State);
    ev.pid = Some(pid);
    ev.comm = Some(format!("app{pid}").into());
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

/// A socket table per namespace that answers a batch per call.
#[derive(Default)]
struct Namespaces {
    timewait: Vec<(Option<u64>, Tuple)>,
    batches: Vec<(Option<u64>, usize)>,
}

impl SocketProbe for Namespaces {
    fn tcp_state(&mut self, netns: Option<u64>, t: Tuple) -> Option<TcpState> {
        self.timewait
            .contains(&(netns, t))
            .then_some(TcpState::TimeWait)
    }
    fn on_port(&mut self, _: Option<u64>, _: u16) -> Result<Vec<PortSocket>, String> {
        Ok(Vec::new())
    }
    fn tcp_states(
        &mut self,
        netns: Option<u64>,
        tuples: &[Tuple],
        out: &mut Vec<Option<TcpState>>,
    ) {
        self.batches.push((netns, tuples.len()));
        out.extend(tuples.iter().map(|&t| self.tcp_state(netns, t)));
    }
}

#[test]
fn a_prefetch_asks_each_namespace_once_and_keeps_their_answers_apart() {
    let t = (ip("10.0.0.1"), 40001, ip("10.0.0.2"), 80);
    let sockets = Namespaces {
        timewait: vec![(Some(1), t)],
        ..Default::default()
    };
    let mut a = Attributor::new(sockets, FakeProcs(0));
    let close = |netns: u64, sport: u16| {
        let mut ev = state(7, TcpState::FinWait2, TcpState::Close, sport, 80);
        ev.netns = Some(netns);
        msg(ev)
    };
    // The same 4-tuple closes in two namespaces; only namespace 1 has it
    // in TIME_WAIT.
    let batch = vec![close(2, 40001), close(1, 40001), close(2, 40009)];
    a.prefetch(&batch);
    let mut asked = a.sockets.batches.clone();
    asked.sort();
    assert_eq!(asked, vec![(Some(1), 1), (Some(2), 2)]);
    let out: Vec<Event> = batch.into_iter().flat_map(|m| a.process(m)).collect();
    assert_eq!(a.sockets.batches.len(), 2, "answers come from the prefetch");
    let tw: Vec<(Option<u64>, Option<u16>)> = out
        .iter()
        .filter(|e| e.event == EventKind::Timewait)
        .map(|e| (e.netns, e.sport))
        .collect();
    assert_eq!(tw, vec![(Some(1), Some(40001))]);
}

#[test]
fn a_kernel_confirmation_needs_no_lookup() {
    let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0));
    let out = a.process(SourceMsg::Event(
        state(9, TcpState::Closing, TcpState::Close, 40003, 443),
        Hints {
            timewait_confirmed: true,
            ..Hints::default()
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
                v6only: false,
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
                v6only: false,
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
            v6only: false,
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
            v6only: false,
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
    let out = a.process(SourceMsg::Lost {
        time: 5,
        count: 12,
        reason: LostReason::Recursion,
    });
    assert_eq!(out, vec![Event::lost(5, 12, LostReason::Recursion)]);
}

fn fin_wait2_close() -> SourceMsg {
    let mut ev = state(42, TcpState::FinWait2, TcpState::Close, 23080, 50000);
    ev.time = 1_000;
    msg(ev)
}

#[test]
fn orphan_fin_wait2_becomes_timewait_when_the_peer_fin_arrives() {
    let table = AnyState::new(Some(TcpState::FinWait2));
    let mut a = Attributor::new(table.clone(), Offline);
    let out = a.process(fin_wait2_close());
    assert_eq!(out.len(), 1, "no TIME_WAIT yet: {out:?}");
    assert!(a.has_pending());
    assert_eq!(a.oldest_pending(), Some(1_000));
    assert!(a.poll(2_000, false).is_empty());
    table.set(Some(TcpState::TimeWait));
    let tw = a.poll(3_000, false);
    assert_eq!(tw.len(), 1);
    assert_eq!(tw[0].event, EventKind::Timewait);
    assert_eq!(tw[0].pid, Some(42));
    assert_eq!(tw[0].time, 1_000, "the close's time, not the re-check's");
    assert!(!a.has_pending());
}

#[test]
fn orphan_fin_wait2_that_times_out_is_not_timewait() {
    let table = AnyState::new(Some(TcpState::FinWait2));
    let mut a = Attributor::new(table.clone(), Offline);
    a.process(fin_wait2_close());
    table.set(None);
    assert!(a.poll(2_000, false).is_empty());
    assert!(!a.has_pending());

    let mut a = Attributor::new(AnyState::new(Some(TcpState::FinWait2)), Offline);
    a.process(fin_wait2_close());
    assert!(a.poll(2_000, true).is_empty(), "the final check forgets it");
    assert!(!a.has_pending());
}

/// A state event of socket `sock` in namespace 7, as the kernel reported it.
fn sock_state(
    sock: u64,
    pid: u32,
    attribution: Attribution,
    old: TcpState,
    new: TcpState,
    (sport, dport): (u16, u16),
) -> Event {
    let mut ev = state(pid, old, new, sport, dport);
    ev.sock = Some(crate::model::SockId(sock));
    ev.netns = Some(7);
    ev.attribution = attribution;
    ev
}

/// The 6.1 guest's failure, replayed: a client socket's FIN_WAIT1 ->
/// FIN_WAIT2 and FIN_WAIT2 -> CLOSE never arrived (the kernel skipped them
/// without counting), its memory went to an accepted child, and the kernel
/// read the client's stale owner back for it.
#[test]
fn a_child_reusing_a_socket_whose_close_went_missing_takes_its_listener() {
    use crate::model::LostReason;
    use Attribution::{Current, Remembered};
    use TcpState::*;
    let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0));
    let mut listen = sock_state(1, 10, Current, Close, Listen, (8080, 0));
    listen.event = EventKind::Listen;
    listen.daddr = Some(ip("0.0.0.0"));
    listen.saddr = Some(ip("0.0.0.0"));
    let out = a.process(msg(listen));
    assert_eq!(
        out[0].side,
        Some(crate::model::Side::Server),
        "a listener serves"
    );
    let client = [
        (Current, Close, SynSent, (0, 8080)),
        (Remembered, SynSent, Established, (40001, 8080)),
        (Current, Established, FinWait1, (40001, 8080)),
    ];
    for (attr, old, new, ports) in client {
        let out = a.process(msg(sock_state(2, 20, attr, old, new, ports)));
        assert!(out.iter().all(|e| e.event != EventKind::Lost), "{out:?}");
    }
    // The child, at the client's old address, with the client's stale owner.
    let out = a.process(msg(sock_state(
        2,
        20,
        Remembered,
        Listen,
        SynRecv,
        (8080, 40002),
    )));
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(out[0].event, EventKind::Lost);
    assert_eq!(out[0].lost_reason, Some(LostReason::Inferred));
    assert_eq!(out[0].lost, Some(1), "the client's CLOSE, at least");
    assert_eq!(out[1].pid, Some(10), "the listener's: {:?}", out[1]);
    assert_eq!(out[1].comm.as_deref(), Some("app10"));
    // Its next transitions stay the listener's, whatever the kernel kept.
    let out = a.process(msg(sock_state(
        2,
        20,
        Remembered,
        SynRecv,
        Established,
        (8080, 40002),
    )));
    assert_eq!(out.len(), 1, "no gap: {out:#?}");
    assert_eq!(out[0].pid, Some(10));
}

/// A transition whose socket's earlier life the chain knows, but that
/// cannot follow it (its own birth was lost too): nobody, not the old owner.
#[test]
fn a_new_life_whose_birth_was_lost_is_unattributed_and_counted() {
    use Attribution::{Current, Remembered};
    use TcpState::*;
    let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0));
    a.process(msg(sock_state(
        3,
        30,
        Current,
        Established,
        FinWait1,
        (1, 2),
    )));
    let out = a.process(msg(sock_state(
        3,
        30,
        Remembered,
        SynRecv,
        Established,
        (5, 6),
    )));
    assert_eq!(out[0].event, EventKind::Lost);
    assert_eq!(out[0].lost, Some(2), "the old close and the new birth");
    assert_eq!(out[1].pid, None);
    assert_eq!(out[1].attribution, Attribution::Unknown);
    // A gap within one life keeps the owner and counts what is missing.
    let out = a.process(msg(sock_state(
        4,
        40,
        Current,
        Established,
        FinWait1,
        (1, 2),
    )));
    assert_eq!(out.len(), 1);
    let mut unowned = sock_state(4, 0, Attribution::Unknown, FinWait2, Close, (1, 2));
    unowned.pid = None;
    unowned.comm = None;
    let out = a.process(msg(unowned));
    assert_eq!(out[0].lost, Some(1));
    assert_eq!(out[1].pid, Some(40), "filled from the chain: {:?}", out[1]);
}

/// Two namespaces listen on the same port: each child takes its own
/// namespace's listener, and two processes on one key name neither.
#[test]
fn listeners_are_told_apart_by_namespace_and_reuseport_is_ambiguous() {
    use Attribution::{Current, Remembered};
    use TcpState::*;
    let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0));
    for (sock, pid, ns) in [(10, 100, 1), (11, 110, 2)] {
        let mut l = sock_state(sock, pid, Current, Close, Listen, (7000, 0));
        l.event = EventKind::Listen;
        l.netns = Some(ns);
        l.saddr = Some(ip("0.0.0.0"));
        a.process(msg(l));
    }
    for (sock, ns, want) in [(20, 1, 100), (21, 2, 110)] {
        let mut child = sock_state(sock, 999, Remembered, Listen, SynRecv, (7000, 5000));
        child.netns = Some(ns);
        let out = a.process(msg(child));
        assert_eq!(out[0].pid, Some(want), "netns {ns}: {:?}", out[0]);
    }
    // A second process on namespace 1's key (SO_REUSEPORT).
    let mut l = sock_state(12, 120, Current, Close, Listen, (7000, 0));
    l.event = EventKind::Listen;
    l.netns = Some(1);
    l.saddr = Some(ip("0.0.0.0"));
    a.process(msg(l));
    let mut child = sock_state(22, 999, Remembered, Listen, SynRecv, (7000, 5001));
    child.netns = Some(1);
    let out = a.process(msg(child));
    assert_eq!(out[0].pid, None, "{:?}", out[0]);
}

fn bind_hook(pid: u32, time: i128, port: u16, attempt: bool) -> SourceMsg {
    let mut ev = Event::new(time, EventKind::Bind);
    ev.pid = Some(pid);
    ev.tid = Some(pid);
    ev.comm = Some("server".into());
    ev.family = Some(Family::Ipv4);
    ev.protocol = Some(Protocol::Tcp);
    ev.saddr = Some(ip("0.0.0.0"));
    ev.sport = Some(port);
    ev.attribution = Attribution::Current;
    SourceMsg::Event(
        ev,
        Hints {
            bind_attempt: attempt,
            bind_confirmed: !attempt,
            ..Hints::default()
        },
    )
}

/// cgroup hooks see a bind's attempt and, when it succeeds, its
/// confirmation: one bind event either way, the failure marked inferred.
#[test]
fn cgroup_bind_attempts_pair_with_their_confirmations() {
    let mut sockets = FakeSockets::default();
    sockets.ports.insert(
        8080,
        vec![PortSocket {
            protocol: Protocol::Tcp,
            state: Some(TcpState::Listen),
            saddr: ip("0.0.0.0"),
            sport: 8080,
            daddr: ip("0.0.0.0"),
            dport: 0,
            pid: Some(5),
            comm: Some("nginx".into()),
            v6only: false,
        }],
    );
    let mut a = Attributor::new(sockets, FakeProcs(0));
    // Confirmed: ok.
    assert!(a.process(bind_hook(5, 1_000, 8080, true)).is_empty());
    assert!(a.has_pending());
    let out = a.process(bind_hook(5, 1_010, 8080, false));
    assert_eq!((out.len(), out[0].ret), (1, Some(0)));
    assert_eq!(out[0].inferred, None);
    // No confirmation, and the port is held: EADDRINUSE, inferred, with
    // the holder; resolved by the next event stamped well after it.
    assert!(a.process(bind_hook(6, 2_000_000, 8080, true)).is_empty());
    let later = msg(state(7, TcpState::Established, TcpState::FinWait1, 1, 2));
    let out = a.process(SourceMsg::Event(
        Event {
            time: 10_000_000,
            ..match later {
                SourceMsg::Event(e, _) => e,
                _ => unreachable!(),
            }
        },
        Hints::default(),
    ));
    assert_eq!(out[0].event, EventKind::Bind, "{out:#?}");
    assert_eq!(out[0].errno.as_deref(), Some("EADDRINUSE"));
    assert_eq!(out[0].holder.as_ref().and_then(|h| h.pid), Some(5));
    assert!(out[0]
        .inferred
        .as_deref()
        .is_some_and(|i| i.contains("no post_bind")));
    // No confirmation and nothing holds the port: a failure of unknown errno.
    assert!(a.process(bind_hook(8, 20_000_000, 9999, true)).is_empty());
    let out = a.poll(20_000_000 + 300_000_000, false);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].ret, out[0].errno.as_deref()), (None, None));
    assert!(out[0]
        .inferred
        .as_deref()
        .is_some_and(|i| i.contains("errno unknown")));
    assert!(!a.has_pending());
}

/// The holder's process is killed right after the failed bind (the
/// exporter's kernel test did this): its listener's close arrives before
/// the attempt has waited out its confirmation, and the socket is gone
/// from the table by then. The failure still names what held the port.
#[test]
fn a_failed_bind_keeps_its_holder_when_the_listener_closes_right_after() {
    let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0));
    let mut listen = state(5, TcpState::Close, TcpState::Listen, 8080, 0);
    listen.event = EventKind::Listen;
    listen.saddr = Some(ip("0.0.0.0"));
    a.process(msg(listen));
    assert!(a.process(bind_hook(6, 2_000_000, 8080, true)).is_empty());
    // 0.2 ms later, within the confirmation's wait: the listener closes.
    let mut close = state(5, TcpState::Listen, TcpState::Close, 8080, 0);
    close.time = 2_200_000;
    close.saddr = Some(ip("0.0.0.0"));
    a.process(msg(close));
    let out = a.poll(2_000_000 + 300_000_000, false);
    let bind = out
        .iter()
        .find(|e| e.event == EventKind::Bind)
        .expect("the failed bind");
    assert_eq!(bind.errno.as_deref(), Some("EADDRINUSE"), "{bind:#?}");
    assert_eq!(bind.holder.as_ref().and_then(|h| h.pid), Some(5));
}

/// Without a connect hook, outcomes come from the client's transitions.
#[test]
fn connect_outcomes_are_inferred_from_the_state_tracepoint() {
    use TcpState::*;
    let mut a = Attributor::new(FakeSockets::default(), FakeProcs(0)).infer_connects(true);
    let out = a.process(msg(sock_state(
        9,
        1,
        Attribution::Current,
        Close,
        SynSent,
        (0, 443),
    )));
    assert_eq!(out.len(), 1);
    let out = a.process(msg(sock_state(
        9,
        1,
        Attribution::Remembered,
        SynSent,
        Established,
        (40001, 443),
    )));
    let c: Vec<&Event> = out
        .iter()
        .filter(|e| e.event == EventKind::Connect)
        .collect();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].ret, c[0].dport, c[0].pid),
        (Some(0), Some(443), Some(1))
    );
    assert!(c[0].inferred.is_some());
    // The ephemeral range ran out: SYN_SENT -> CLOSE with no local port.
    a.process(msg(sock_state(
        10,
        1,
        Attribution::Current,
        Close,
        SynSent,
        (0, 443),
    )));
    let out = a.process(msg(sock_state(
        10,
        1,
        Attribution::Remembered,
        SynSent,
        Close,
        (0, 443),
    )));
    let c: Vec<&Event> = out
        .iter()
        .filter(|e| e.event == EventKind::Connect)
        .collect();
    assert_eq!(c[0].errno.as_deref(), Some("EADDRNOTAVAIL"));
    // A refused connect (local port set) is not guessed at.
    a.process(msg(sock_state(
        11,
        1,
        Attribution::Current,
        Close,
        SynSent,
        (0, 443),
    )));
    let out = a.process(msg(sock_state(
        11,
        1,
        Attribution::Remembered,
        SynSent,
        Close,
        (40002, 443),
    )));
    assert!(
        out.iter().all(|e| e.event != EventKind::Connect),
        "{out:#?}"
    );
}

/// Processes as /proc shows them now: pid -> (start, command line).
struct ReusedPids(Map<u32, (u64, &'static str)>, usize);

impl ProcessLookup for ReusedPids {
    fn lookup(&mut self, pid: u32) -> Option<ProcessInfo> {
        self.1 += 1;
        self.0.get(&pid).map(|(_, cmd)| ProcessInfo {
            cmdline: Some((*cmd).into()),
            ..ProcessInfo::default()
        })
    }
    fn start_ns(&mut self, pid: u32) -> Option<u64> {
        self.0.get(&pid).map(|(start, _)| *start)
    }
}

#[test]
fn a_reused_pid_never_lends_its_identity_to_an_earlier_process() {
    const S: u64 = 1_000_000_000;
    // Pid 300 now belongs to a process that started at 50 s, with the same
    // command name as the one that had pid 300 before it.
    let procs = ReusedPids([(300, (50 * S, "/usr/bin/newcomer"))].into(), 0);
    let mut a = Attributor::new(FakeSockets::default(), procs);
    let at = |boot_s: u64, sport: u16| {
        let mut ev = state(300, TcpState::SynSent, TcpState::Established, sport, 80);
        ev.boot_ns = boot_s * S;
        ev.attribution = Attribution::Current;
        msg(ev)
    };
    // An event of the earlier process (at 40 s), read only now.
    let old = a.process(at(40, 40001));
    assert_eq!(old.last().and_then(|e| e.cmdline.as_deref()), None);
    // The newcomer's own event gets its identity.
    let new = a.process(at(60, 40002));
    assert_eq!(
        new.last().and_then(|e| e.cmdline.as_deref()),
        Some("/usr/bin/newcomer")
    );
    // Another late event of the earlier process: still none, from the cache.
    let lookups = a.processes.1;
    let old = a.process(at(41, 40003));
    assert_eq!(old.last().and_then(|e| e.cmdline.as_deref()), None);
    assert_eq!(a.processes.1, lookups, "answered from the cache");
}
