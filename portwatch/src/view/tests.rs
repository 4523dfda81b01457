use super::*;
use crate::model::Holder;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

const NS: Option<u64> = Some(4026532000);

/// A client's TIME_WAIT entry towards 10.0.0.9:5432 from local port `sport`.
fn tw(time: i128, pid: u32, sport: u16) -> Event {
    let mut ev = Event::new(time, EventKind::Timewait);
    ev.pid = Some(pid);
    ev.comm = Some(format!("client{pid}").into());
    ev.side = Some(Side::Client);
    ev.netns = NS;
    ev.saddr = Some(ip("10.0.0.1"));
    ev.sport = Some(sport);
    ev.daddr = Some(ip("10.0.0.9"));
    ev.dport = Some(5432);
    ev.old_state = Some(TcpState::FinWait2);
    ev.new_state = Some(TcpState::TimeWait);
    ev
}

fn connect(time: i128, pid: u32, ret: i32) -> Event {
    let mut ev = Event::new(time, EventKind::Connect);
    ev.pid = Some(pid);
    ev.comm = Some(format!("client{pid}").into());
    ev.netns = NS;
    ev.daddr = Some(ip("10.0.0.9"));
    ev.dport = Some(5432);
    ev.set_ret(ret);
    ev
}

/// The namespace's table: TIME_WAIT sockets from `sports` towards
/// 10.0.0.9:5432, and a listener on 8080 with one accepted connection.
fn table(sports: &[u16]) -> NsTable {
    let mut sockets = vec![
        (TcpState::Listen, (ip("0.0.0.0"), 8080, ip("0.0.0.0"), 0)),
        (
            TcpState::Established,
            (ip("10.0.0.1"), 8080, ip("10.0.0.7"), 40500),
        ),
    ];
    sockets.extend(sports.iter().map(|&p| {
        (
            TcpState::TimeWait,
            (ip("10.0.0.1"), p, ip("10.0.0.9"), 5432),
        )
    }));
    NsTable {
        netns: NS,
        low: 40000,
        high: 40009,
        reserved: PortSet::parse("40009").expect("ports"),
        sockets,
    }
}

fn proc_row(s: &Snapshot, pid: u32) -> &ProcRow {
    s.processes
        .iter()
        .find(|p| p.pid == Some(pid))
        .expect("process row")
}

#[test]
fn timewait_now_is_entries_minus_the_exits_the_table_shows() {
    let mut v = ViewState::new(0);
    for sport in [40001, 40002, 40003] {
        v.add(&tw(S, 7, sport));
    }
    v.apply_table(&table(&[40001, 40002, 40003]), false);
    v.tick(2 * S);
    assert_eq!(
        proc_row(&v.snapshot(&Default::default()), 7).timewait_now,
        3
    );
    // 40002 has left TIME_WAIT.
    v.apply_table(&table(&[40001, 40003]), false);
    v.tick(3 * S);
    let s = v.snapshot(&Default::default());
    let p = proc_row(&s, 7);
    assert_eq!((p.timewait_now, p.timewait_entries), (2, 3));
    assert_eq!(
        s.exits,
        Exits {
            sock_diag: 1,
            timer: 0
        }
    );
    assert_eq!(s.timewait_exits, "sock_diag");
}

#[test]
fn an_unreadable_table_lets_timewait_leave_by_the_clock() {
    let mut v = ViewState::new(0);
    v.add(&tw(S, 7, 40001));
    v.tick(30 * S);
    v.table_failed(NS, "no live process left in network namespace");
    assert_eq!(
        proc_row(&v.snapshot(&Default::default()), 7).timewait_now,
        1
    );
    let d = &v.snapshot(&Default::default()).destinations[0];
    assert!(d.pool.pool.is_none() && d.pool.error.is_some(), "{d:?}");
    v.tick(61 * S + 1);
    v.table_failed(NS, "still gone");
    let s = v.snapshot(&Default::default());
    assert_eq!(proc_row(&s, 7).timewait_now, 0);
    assert_eq!(
        s.exits,
        Exits {
            sock_diag: 0,
            timer: 1
        }
    );
}

#[test]
fn the_first_census_seeds_the_client_pools_that_predate_the_view() {
    let mut v = ViewState::new(0);
    v.apply_table(&table(&[40001, 40002, 40009, 39000]), true);
    v.tick(S);
    let s = v.snapshot(&Default::default());
    // The accepted connection (local port 8080, listening) is no pool; the
    // reserved port and the one below the range hold none.
    assert_eq!(s.destinations.len(), 1, "{:?}", s.destinations);
    let d = &s.destinations[0];
    let d = &d.pool;
    assert_eq!((d.netns, d.daddr, d.dport), (NS, ip("10.0.0.9"), 5432));
    let pool = d.pool.as_ref().expect("counted");
    assert_eq!((pool.in_use, pool.capacity), (2, 9));
    assert_eq!(pool.by_state.get("TIME_WAIT"), Some(&2));
    // Predating TIME_WAIT belongs to no process of the view.
    assert!(s.processes.is_empty());
}

#[test]
fn time_to_exhaustion_follows_the_growth_of_the_pool() {
    let mut v = ViewState::new(0);
    v.add(&connect(0, 7, 0));
    v.apply_table(&table(&[40001, 40002]), false);
    v.tick(5 * S);
    v.apply_table(&table(&[40001, 40002, 40003, 40004]), false);
    let d = v.snapshot(&Default::default()).destinations[0].clone();
    // 2 ports more in 5 s: 0.4/s; 5 of 9 ports left: 12.5 s.
    assert_eq!(d.growth_per_s, Some(0.4));
    assert_eq!(d.exhaustion_s, Some(12.5));
    assert!((d.pool.pressure.expect("pressure") - 4.0 / 9.0).abs() < 1e-9);
    // A full pool is exhausted now; one that shrinks is never.
    v.tick(6 * S);
    v.apply_table(
        &table(&[
            40000, 40001, 40002, 40003, 40004, 40005, 40006, 40007, 40008,
        ]),
        false,
    );
    assert_eq!(
        v.snapshot(&Default::default()).destinations[0].exhaustion_s,
        Some(0.0)
    );
    v.tick(20 * S);
    v.apply_table(&table(&[40001]), false);
    v.tick(21 * S);
    v.apply_table(&table(&[40001]), false);
    assert_eq!(
        v.snapshot(&Default::default()).destinations[0].exhaustion_s,
        None
    );
}

#[test]
fn rates_are_over_the_last_seconds_and_failures_are_kept_newest_first() {
    let mut v = ViewState::new(0);
    for i in 0..10 {
        v.add(&connect(i * S / 10, 7, 0));
    }
    v.tick(S);
    let s = v.snapshot(&Default::default());
    assert_eq!(proc_row(&s, 7).connects_per_s, 10.0);
    // Quiet for 5 s: the rate falls to nothing, the total stays.
    for t in 2..=7 {
        v.tick(t * S);
    }
    let p = proc_row(&v.snapshot(&Default::default()), 7).clone();
    assert_eq!((p.connects, p.connects_per_s), (10, 0.0));

    v.add(&connect(8 * S, 8, -99));
    let mut bind = Event::new(9 * S, EventKind::Bind);
    bind.pid = Some(9);
    bind.comm = Some("server".into());
    bind.sport = Some(1433);
    bind.set_ret(-98);
    bind.holder = Some(Box::new(Holder {
        pid: Some(10),
        comm: Some("squatter".into()),
        state: Some(TcpState::Established),
        protocol: None,
        saddr: ip("127.0.0.1"),
        sport: 1433,
        daddr: ip("127.0.0.1"),
        dport: 8080,
    }));
    v.add(&bind);
    v.tick(10 * S);
    let s = v.snapshot(&Default::default());
    let kinds: Vec<_> = s.failures.iter().map(|f| f.errno.as_deref()).collect();
    assert_eq!(kinds, vec![Some("EADDRINUSE"), Some("EADDRNOTAVAIL")]);
    assert_eq!(s.failures[0].holder.as_ref().and_then(|h| h.pid), Some(10));
    assert_eq!(proc_row(&s, 8).connect_failures, 1);
    assert_eq!(proc_row(&s, 9).bind_failures, 1);
}

#[test]
fn sorting_and_filtering() {
    let mut v = ViewState::new(0);
    v.add(&tw(0, 7, 40001));
    v.add(&tw(0, 7, 40002));
    for i in 0..5 {
        v.add(&connect(i, 8, 0));
    }
    v.tick(S);
    let pids = |o: &SnapshotOpts| -> Vec<Option<u32>> {
        v.snapshot(o).processes.iter().map(|p| p.pid).collect()
    };
    assert_eq!(pids(&SnapshotOpts::default()), vec![Some(7), Some(8)]);
    let by_connects = SnapshotOpts {
        proc_sort: ProcSort::ConnectRate,
        ..Default::default()
    };
    assert_eq!(pids(&by_connects), vec![Some(8), Some(7)]);
    let filtered = SnapshotOpts {
        filter: Some("CLIENT8".into()),
        ..Default::default()
    };
    assert_eq!(pids(&filtered), vec![Some(8)]);
}

#[test]
fn idle_processes_and_destinations_are_forgotten() {
    let mut v = ViewState::new(0);
    v.add(&connect(0, 7, 0));
    v.add(&tw(0, 8, 40001));
    v.tick(30 * S);
    v.apply_table(&table(&[40001]), false);
    v.tick(61 * S);
    v.apply_table(&table(&[40001]), false);
    let s = v.snapshot(&Default::default());
    // 7 did nothing for a minute; 8 still holds a TIME_WAIT socket.
    let pids: Vec<_> = s.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![Some(8)]);
    assert_eq!(s.destinations.len(), 1);
    v.tick(62 * S);
    v.apply_table(&table(&[]), false);
    v.tick(130 * S);
    let s = v.snapshot(&Default::default());
    assert!(s.processes.is_empty() && s.destinations.is_empty(), "{s:?}");
}

/// Aggregate mode: a process's connects are the kernel's count plus the
/// failures that crossed the ring; the destination they went to is shown;
/// connects the kernel could not count per destination are lost, overflow;
/// chains it found broken, inferred.
#[test]
fn kernel_counts_give_connects_destinations_and_events() {
    let mut v = ViewState::new(0);
    v.counted_in_kernel(true);
    v.add(&connect(S, 7, -99));
    v.tick(2 * S);
    v.add_counted(&crate::model::Counted {
        events: 10,
        transitions: vec![],
        connects: vec![crate::model::CountedConnects {
            netns: NS,
            pid: Some(7),
            comm: Some("client7".into()),
            workload: Workload::default(),
            daddr: ip("::ffff:10.0.0.9"),
            dport: 5432,
            n: 4,
        }],
        uncounted: 2,
        gaps: 3,
    });
    let s = v.snapshot(&Default::default());
    let p = proc_row(&s, 7);
    assert_eq!((p.connects, p.connect_failures), (5, 1));
    assert_eq!(s.events, 10, "the failure is among the kernel's events");
    assert_eq!(
        (s.lost_by_reason.overflow, s.lost_by_reason.inferred),
        (2, 3)
    );
    assert_eq!(v.namespaces(), vec![NS], "the destination is followed");
}
