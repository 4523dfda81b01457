//! The JSON schema as the README promises it: every key of an event is
//! present whether or not it applies (null when not), the summary carries
//! the schema's version, and every key portwatch writes (events, summary,
//! `who --json`, `history --json`) is documented in the README.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use portwatch::aggregate::{Aggregator, PortRange};
use portwatch::attribution::{ProcessInfo, ProcessLookup};
use portwatch::model::{Attribution, Event, EventKind, Holder, LostReason, SockId, TcpState};
use serde_json::Value;

const README: &str = include_str!("../../README.md");

/// Keys whose object's keys are data (errno and state names), not schema.
const DATA_KEYED: &[&str] = &["connect_failures", "by_state"];

fn keys(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.clone());
                if !DATA_KEYED.contains(&k.as_str()) {
                    keys(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn top_keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// An event with every field set.
fn full_event() -> Event {
    let mut ev = Event::new(1_795_471_262_123_456_789, EventKind::Bind);
    ev.pid = Some(3175);
    ev.tid = Some(3176);
    ev.comm = Some("python3".into());
    ev.uid = Some(1000);
    ev.family = Some(portwatch::model::Family::Ipv4);
    ev.protocol = Some(portwatch::model::Protocol::Tcp);
    ev.saddr = Some(ip("0.0.0.0"));
    ev.sport = Some(1433);
    ev.daddr = Some(ip("10.0.0.5"));
    ev.dport = Some(50000);
    ev.old_state = Some(TcpState::Close);
    ev.new_state = Some(TcpState::Listen);
    ev.set_ret(-98);
    ev.holder = Some(Box::new(Holder {
        pid: Some(3134),
        comm: Some("python3".into()),
        state: Some(TcpState::Listen),
        protocol: Some(portwatch::model::Protocol::Tcp),
        saddr: ip("0.0.0.0"),
        sport: 1433,
        daddr: ip("0.0.0.0"),
        dport: 0,
    }));
    ev.attribution = Attribution::Current;
    ev.cmdline = Some("python3 server.py".into());
    ev.cgroup = Some("/system.slice/app.service".into());
    ev.cgroup_id = Some(4242);
    ev.lost = Some(3);
    ev.lost_reason = Some(LostReason::RingBuffer);
    ev.sock = Some(SockId(0xfeed));
    ev.netns = Some(4026531840);
    ev
}

#[test]
fn every_event_has_every_key_null_when_absent() {
    let full = serde_json::to_value(full_event()).expect("json");
    let bare = serde_json::to_value(Event::new(0, EventKind::State)).expect("json");
    assert_eq!(top_keys(&full), top_keys(&bare));
    let lost = serde_json::to_value(Event::lost(0, 5, LostReason::Recursion)).expect("json");
    assert_eq!(top_keys(&full), top_keys(&lost));
    for (k, v) in bare.as_object().expect("object") {
        if !["time", "event", "attribution"].contains(&k.as_str()) {
            assert!(v.is_null(), "{k} should be null in a bare event: {v}");
        }
    }
}

fn summary() -> Value {
    let mut agg = Aggregator::new(Some(PortRange {
        low: 40000,
        high: 40009,
    }));
    agg.started_at(0);
    let mut tw = full_event();
    tw.event = EventKind::Timewait;
    agg.add(&tw);
    agg.add(&full_event());
    let mut c = full_event();
    c.event = EventKind::Connect;
    c.set_ret(-99);
    agg.add(&c);
    agg.add(&Event::lost(1, 2, LostReason::Inferred));
    let mut s = agg.summary(2_000_000_000_000_000_000);
    s.watched = Some(portwatch::filter::EventFilter::default());
    serde_json::to_value(s).expect("json")
}

#[test]
fn the_summary_names_its_schema_version() {
    let s = summary();
    assert_eq!(s["event"], "summary");
    assert_eq!(s["schema_version"], portwatch::model::SCHEMA_VERSION);
}

struct Procs;
impl ProcessLookup for Procs {
    fn lookup(&mut self, _pid: u32) -> Option<ProcessInfo> {
        Some(ProcessInfo {
            cmdline: Some("nginx: master process".into()),
            cgroup: Some("/system.slice/nginx.service".into()),
            netns: None,
            container_pid: None,
        })
    }
}

fn who() -> Value {
    use portwatch::procfd::SocketOwner;
    use portwatch::sockdiag::{Proto, SocketEntry};
    let entry = |state: u8, inode: u64| SocketEntry {
        proto: Proto::Tcp,
        state,
        saddr: ip("127.0.0.1"),
        sport: 8081,
        daddr: ip("127.0.0.1"),
        dport: 50000,
        inode,
        uid: 0,
        ipv6_only: false,
    };
    let owners = HashMap::from([(
        7,
        vec![
            SocketOwner {
                pid: 10,
                comm: "nginx".into(),
            },
            SocketOwner {
                pid: 11,
                comm: "nginx".into(),
            },
        ],
    )]);
    let mut report = portwatch::cmd::who::report(
        Some(8081),
        vec![entry(10, 7), entry(6, 0)],
        &owners,
        &mut Procs,
        true,
    );
    let mut created = full_event();
    created.sport = Some(8081);
    created.saddr = Some(ip("127.0.0.1"));
    created.daddr = Some(ip("127.0.0.1"));
    created.dport = Some(50000);
    portwatch::cmd::who::add_creators(
        &mut report,
        &[portwatch::journal::Record::event("b".into(), 1, created)],
        "b",
    );
    report.counts = Some(portwatch::cmd::who::counts(&report.sockets));
    report.to = Some(portwatch::cmd::who::towards(
        ("127.0.0.1".parse().expect("ip"), 50000),
        &report.sockets,
        Some(PortRange {
            low: 8000,
            high: 9000,
        }),
        None,
    ));
    serde_json::to_value(&report).expect("json")
}

/// `top --once --json`: a process with TIME_WAIT and failures, a counted
/// pool, failures with a holder and a pool.
fn top_snapshot() -> Value {
    use portwatch::model::PoolUse;
    use portwatch::view::{NsTable, ViewState};
    let mut view = ViewState::new(0);
    let mut tw = full_event();
    tw.event = EventKind::Timewait;
    view.add(&tw);
    view.add(&full_event());
    let mut c = full_event();
    c.event = EventKind::Connect;
    c.set_ret(-99);
    c.pool = Some(Box::new(PoolUse {
        in_use: 1,
        by_state: [("TIME_WAIT".to_owned(), 1)].into(),
        capacity: 10,
        range_low: 40000,
        range_high: 40009,
    }));
    view.add(&c);
    view.tick(1_000_000_000);
    view.apply_table(
        &NsTable {
            netns: c.netns,
            low: 40000,
            high: 60000,
            reserved: Default::default(),
            sockets: vec![(
                TcpState::TimeWait,
                (ip("0.0.0.0"), 50001, ip("10.0.0.5"), 50000),
            )],
        },
        false,
    );
    serde_json::to_value(view.snapshot(&Default::default())).expect("json")
}

#[test]
fn every_key_written_is_documented_in_the_readme() {
    let mut all = BTreeSet::new();
    keys(&serde_json::to_value(full_event()).expect("json"), &mut all);
    keys(&summary(), &mut all);
    keys(&who(), &mut all);
    let top = top_snapshot();
    assert!(
        top["destinations"][0]["in_use"] == 1
            && top["failures"].as_array().is_some_and(|f| f.len() == 2),
        "{top}"
    );
    keys(&top, &mut all);
    // history --json: the event's keys and these.
    all.extend(["boot_id", "mono_ns", "how"].map(str::to_owned));
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| !README.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys written but not documented in README.md (as `key`): {missing:?}"
    );
}
