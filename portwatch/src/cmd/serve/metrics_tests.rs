use std::net::IpAddr;

use prometheus_parse::{Sample, Scrape, Value};

use super::*;
use crate::model::Side;
use crate::sysctl::PortSet;
use crate::view::NsTable;

const S: i128 = 1_000_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn tw(time: i128, pid: u32, comm: &str, sport: u16) -> Event {
    let mut ev = Event::new(time, EventKind::Timewait);
    ev.pid = Some(pid);
    ev.comm = Some(comm.into());
    ev.side = Some(Side::Client);
    ev.saddr = Some(ip("127.0.0.1"));
    ev.sport = Some(sport);
    ev.daddr = Some(ip("127.0.0.1"));
    ev.dport = Some(8080);
    ev.old_state = Some(TcpState::FinWait2);
    ev.new_state = Some(TcpState::TimeWait);
    ev
}

/// The exposition as a Prometheus text parser reads it.
fn encode(m: &Metrics, v: &ViewState) -> Vec<Sample> {
    let text = m.encode(v).expect("encode");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Scrape::parse(lines).expect("exposition").samples
}

fn number(s: &Sample) -> f64 {
    let (Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x)) = s.value else {
        panic!("{} is not a number: {:?}", s.metric, s.value)
    };
    x
}

/// (sum, number of series) of `name`.
fn sum(s: &[Sample], name: &str) -> (f64, usize) {
    let of_name = s.iter().filter(|x| x.metric == name);
    of_name.fold((0.0, 0), |(t, n), x| (t + number(x), n + 1))
}

/// The value of the `name` series that has every one of `labels`.
fn get(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let has = |x: &&Sample| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v));
    s.iter().filter(|x| x.metric == name).find(has).map(number)
}

#[test]
fn counters_count_what_happened_by_process_and_errno() {
    let mut m = Metrics::new(20);
    let v = ViewState::new(0);
    for i in 0..3 {
        m.add(&tw(i, 7, "client", 40000 + i as u16));
    }
    let mut c = Event::new(5, EventKind::Connect);
    c.comm = Some("client".into());
    c.set_ret(-99);
    m.add(&c);
    let mut b = Event::new(6, EventKind::Bind);
    b.comm = Some("server".into());
    b.set_ret(-98);
    m.add(&b);
    b.set_ret(0);
    m.add(&b);
    let mut st = Event::new(7, EventKind::State);
    st.old_state = Some(TcpState::SynSent);
    st.new_state = Some(TcpState::Established);
    m.add(&st);
    let s = encode(&m, &v);
    let client = [
        ("comm", "client"),
        ("unit", ""),
        ("container_runtime", ""),
        ("container_id", ""),
        ("pod_uid", ""),
    ];
    assert_eq!(
        get(&s, "portwatch_tcp_timewait_entries_total", &client),
        Some(3.0)
    );
    let failed = [&client[..], &[("errno", "EADDRNOTAVAIL")]].concat();
    assert_eq!(
        get(&s, "portwatch_connect_failures_total", &failed),
        Some(1.0)
    );
    assert_eq!(sum(&s, "portwatch_bind_failures_total"), (1.0, 1));
    let established = [("old_state", "SYN_SENT"), ("new_state", "ESTABLISHED")];
    assert_eq!(
        get(&s, "portwatch_tcp_transitions_total", &established),
        Some(1.0)
    );
    assert_eq!(sum(&s, "portwatch_events_total").0, 7.0);
    assert_eq!(
        sum(&s, "portwatch_lost_events_total"),
        (0.0, 4),
        "one per reason"
    );
}

#[test]
fn many_short_lived_processes_stay_within_k_series_and_sum_exactly() {
    let mut m = Metrics::new(5);
    for i in 0..30u32 {
        for j in 0..=i % 3 {
            m.add(&tw(S, 1000 + i, &format!("job{i}"), 40000 + j as u16));
        }
    }
    let s = encode(&m, &ViewState::new(0));
    let want: f64 = (0..30).map(|i| f64::from(i % 3 + 1)).sum();
    let (total, series) = sum(&s, "portwatch_tcp_timewait_entries_total");
    assert_eq!(total, want);
    assert_eq!(series, 6, "five named and other");
    let other = [("comm", "other"), ("unit", ""), ("pod_uid", "")];
    assert!(get(&s, "portwatch_tcp_timewait_entries_total", &other).is_some());

    // Idle series are folded into other: the sum stays, the place frees.
    let before = sum(
        &encode(&m, &ViewState::new(0)),
        "portwatch_tcp_timewait_entries_total",
    )
    .0;
    m.retire(S + RETIRE_NS + 1);
    m.add(&tw(S + RETIRE_NS + 2, 5000, "late", 40001));
    let s = encode(&m, &ViewState::new(0));
    let (total, series) = sum(&s, "portwatch_tcp_timewait_entries_total");
    assert_eq!((total, series), (before + 1.0, 2));
    let late = [("comm", "late")];
    assert!(get(&s, "portwatch_tcp_timewait_entries_total", &late).is_some());
}

#[test]
fn a_process_named_other_is_the_aggregate_and_labels_are_escaped() {
    let mut m = Metrics::new(5);
    m.add(&tw(0, 1, "other", 40000));
    m.add(&tw(0, 2, "a\"b\\c\nd", 40001));
    let text = m.encode(&ViewState::new(0)).expect("encode");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("portwatch_tcp_timewait_entries_total"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(text.contains(r#"comm="a\"b\\c\nd""#), "{text}");
}

#[test]
fn gauges_name_the_largest_and_sum_the_rest() {
    let mut v = ViewState::new(0);
    let mut sockets = Vec::new();
    let mut n = 0u16;
    for pid in 0..6u32 {
        for _ in 0..=pid {
            let ev = tw(0, pid, &format!("p{pid}"), 40000 + n);
            v.add(&ev);
            sockets.push((
                TcpState::TimeWait,
                (ip("127.0.0.1"), 40000 + n, ip("127.0.0.1"), 8080),
            ));
            n += 1;
        }
    }
    // A second destination, with one port in use.
    sockets.push((
        TcpState::Established,
        (ip("127.0.0.1"), 40900, ip("127.0.0.2"), 5432),
    ));
    v.tick(S);
    v.apply_table(
        &NsTable {
            netns: None,
            low: 40000,
            high: 40999,
            reserved: PortSet::default(),
            sockets,
        },
        true,
    );
    let s = encode(&Metrics::new(2), &v);
    let (total, series) = sum(&s, "portwatch_tcp_timewait_sockets");
    assert_eq!((total, series), (21.0, 3));
    let held = |comm| get(&s, "portwatch_tcp_timewait_sockets", &[("comm", comm)]);
    assert_eq!(held("p5"), Some(6.0));
    assert_eq!(held("p4"), Some(5.0));
    assert_eq!(held("other"), Some(10.0));
    assert_eq!(sum(&s, "portwatch_ephemeral_ports_in_use"), (22.0, 2));
    assert_eq!(sum(&s, "portwatch_destination_timewait_sockets"), (21.0, 2));
    let d8080 = [("netns", ""), ("daddr", "127.0.0.1"), ("dport", "8080")];
    assert_eq!(
        get(&s, "portwatch_ephemeral_ports_capacity", &d8080),
        Some(1000.0)
    );
    // Only one destination fits in k=1: the rest become other.
    let s = encode(&Metrics::new(1), &v);
    assert_eq!(sum(&s, "portwatch_ephemeral_ports_in_use"), (22.0, 2));
    let other = [("netns", ""), ("daddr", "other"), ("dport", "")];
    assert!(get(&s, "portwatch_ephemeral_ports_in_use", &other).is_some());
}

/// Aggregate mode: events, transitions and successful connects come from
/// the kernel's counts; the events that still cross the ring (a failed
/// connect, a TIME_WAIT) add only what the kernel does not count.
#[test]
fn kernel_counts_are_added_once_and_sent_events_are_not_counted_again() {
    let mut m = Metrics::new(20);
    m.counted_in_kernel(true);
    let v = ViewState::new(0);
    m.add(&tw(1, 7, "client", 40000));
    let mut c = Event::new(2, EventKind::Connect);
    c.comm = Some("client".into());
    c.set_ret(-99);
    m.add(&c);
    // Two reads: `events` in all, `n` connects (each one established).
    let counted = |events, n| Counted {
        events,
        transitions: vec![(TcpState::SynSent, TcpState::Established, n)],
        connects: vec![crate::model::CountedConnects {
            netns: None,
            pid: Some(7),
            comm: Some("client".into()),
            workload: Workload::default(),
            daddr: ip("127.0.0.1"),
            dport: 8080,
            n,
        }],
        uncounted: 0,
        gaps: 0,
    };
    m.add_counted(&counted(30, 12), 3);
    m.add_counted(&counted(5, 2), 4);
    let s = encode(&m, &v);
    let client = [("comm", "client")];
    // 14 counted, and the failed one that crossed the ring.
    assert_eq!(get(&s, "portwatch_tcp_connects_total", &client), Some(15.0));
    assert_eq!(
        get(&s, "portwatch_tcp_timewait_entries_total", &client),
        Some(1.0)
    );
    let established = [("old_state", "SYN_SENT"), ("new_state", "ESTABLISHED")];
    assert_eq!(
        get(&s, "portwatch_tcp_transitions_total", &established),
        Some(14.0)
    );
    // The kernel counted the sent ones too.
    assert_eq!(sum(&s, "portwatch_events_total").0, 35.0);
}
