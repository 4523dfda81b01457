//! `who` from snapshots built here: owners and sharers, the creator of a
//! TIME_WAIT socket, the filters, the counts, `--to`, and the text at a
//! terminal's width and piped.

use std::collections::HashMap;
use std::net::IpAddr;

use super::*;
use crate::aggregate::PortRange;
use crate::attribution::{ProcessInfo, ProcessLookup};
use crate::journal::Record;
use crate::model::{Event, EventKind};
use crate::procfd::SocketOwner;
use crate::sockdiag::{Proto, SocketEntry};

struct Procs;
impl ProcessLookup for Procs {
    fn lookup(&mut self, pid: u32) -> Option<ProcessInfo> {
        Some(ProcessInfo {
            cmdline: Some(format!("/opt/mssql/bin/sqlservr\n--pid {pid}")),
            cgroup: Some("/system.slice/mssql-server.service".into()),
            netns: None,
            container_pid: None,
        })
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn entry(proto: Proto, state: u8, sport: u16, dport: u16, inode: u64) -> SocketEntry {
    SocketEntry {
        proto,
        state,
        saddr: ip("0.0.0.0"),
        sport,
        daddr: ip("10.0.0.5"),
        dport,
        inode,
        uid: 0,
        ipv6_only: false,
    }
}

fn owner(pid: u32, comm: &str) -> SocketOwner {
    SocketOwner {
        pid,
        comm: comm.into(),
    }
}

fn text(r: &WhoReport, width: Option<usize>) -> String {
    let mut out = Vec::new();
    write_text(r, &mut out, width).expect("write");
    String::from_utf8(out).expect("utf8")
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_TIME_WAIT: u8 = 6;
const UDP_UNCONN: u8 = 7;
const TCP_LISTEN: u8 = 10;

fn sample() -> WhoReport {
    let owners = HashMap::from([(11, vec![owner(900, "sqlservr"), owner(901, "sqlservr")])]);
    report(
        Some(1433),
        vec![
            entry(Proto::Tcp, TCP_TIME_WAIT, 1433, 50000, 0),
            entry(Proto::Udp, UDP_UNCONN, 1433, 0, 12),
            entry(Proto::Tcp, TCP_LISTEN, 1433, 0, 11),
        ],
        &owners,
        &mut Procs,
        false,
    )
}

#[test]
fn owners_units_and_ownerless_sockets_are_explained() {
    let r = sample();
    assert_eq!(r.sockets[0].ends.state, "LISTEN", "listeners first");
    assert_eq!(r.sockets[0].pid, Some(900));
    assert_eq!(r.sockets[0].unit.as_deref(), Some("mssql-server.service"));
    let tw = r
        .sockets
        .iter()
        .find(|s| s.ends.state == "TIME_WAIT")
        .expect("tw");
    assert!(tw.no_owner.as_deref().is_some_and(|w| w.contains("kernel")));
    let udp = r
        .sockets
        .iter()
        .find(|s| s.ends.state == "UNCONN")
        .expect("udp");
    assert_eq!(udp.pid, None);
    assert_eq!(
        r.missing.as_deref(),
        Some("the owners of 1 socket belong to other users: run `sudo portwatch who 1433` to see them")
    );
    let t = text(&r, None);
    assert_eq!(
        t.lines().count(),
        6,
        "header, 3 sockets, the sharer, note; newlines in cmdlines flattened:\n{t}"
    );
    assert!(t.contains("mssql-server.service  /opt/mssql/bin/sqlservr --pid 900"));
}

#[test]
fn every_process_sharing_a_socket_is_listed() {
    let r = sample();
    let listen = &r.sockets[0];
    assert_eq!(listen.also.len(), 1);
    assert_eq!(listen.also[0].pid, 901);
    assert_eq!(listen.also[0].comm, "sqlservr");
    assert_eq!(
        listen.also[0].cmdline.as_deref(),
        Some("/opt/mssql/bin/sqlservr\n--pid 901")
    );
    let t = text(&r, None);
    let row = t
        .lines()
        .find(|l| l.contains(" 901 "))
        .unwrap_or_else(|| panic!("no row for the sharer:\n{t}"));
    assert!(
        row.contains("sqlservr") && row.contains("--pid 901"),
        "{row}"
    );
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["sockets"][0]["also"][0]["pid"], 901);
}

#[test]
fn a_time_wait_socket_has_its_creators_user_not_root() {
    let mut r = sample();
    let tw = r
        .sockets
        .iter()
        .find(|s| s.ends.state == "TIME_WAIT")
        .expect("tw");
    assert_eq!(
        tw.uid, None,
        "the kernel's uid 0 for TIME_WAIT means nothing"
    );
    assert_eq!(tw.user, None);
    let mut created = Event::new(5, EventKind::State);
    created.pid = Some(700);
    created.comm = Some("client".into());
    created.uid = Some(65534);
    created.saddr = Some(ip("0.0.0.0"));
    created.sport = Some(1433);
    created.daddr = Some(ip("10.0.0.5"));
    created.dport = Some(50000);
    let records = [Record::event("b".into(), 5, created)];
    add_creators(&mut r, &records, "b");
    let tw = r
        .sockets
        .iter()
        .find(|s| s.ends.state == "TIME_WAIT")
        .expect("tw");
    assert_eq!(tw.uid, Some(65534));
    assert_eq!(tw.user.as_deref(), Some("nobody"));
    assert_eq!(tw.created_by.as_ref().and_then(|c| c.uid), Some(65534));
    let t = text(&r, None);
    let row = t.lines().find(|l| l.contains("TIME_WAIT")).expect("row");
    assert!(row.contains(" nobody ") && !row.contains(" root "), "{row}");
}

#[test]
fn filters_by_remote_end_state_and_destination_range() {
    let range = Some(PortRange {
        low: 40000,
        high: 40009,
    });
    let e = |state, sport, daddr: &str, dport| SocketEntry {
        daddr: ip(daddr),
        ..entry(Proto::Tcp, state, sport, dport, 0)
    };
    let tw_in = e(TCP_TIME_WAIT, 40001, "10.0.0.5", 5432);
    let est_in = e(TCP_ESTABLISHED, 40002, "10.0.0.5", 5432);
    let out_of_range = e(TCP_TIME_WAIT, 1433, "10.0.0.5", 5432);
    let elsewhere = e(TCP_TIME_WAIT, 40003, "10.0.0.6", 5432);
    let q = Query {
        remote: Some(Remote::parse("10.0.0.5").expect("remote")),
        ..Query::default()
    };
    assert!(selects(&q, &tw_in, range) && !selects(&q, &elsewhere, range));
    let q = Query {
        remote: Some(Remote::parse(":5432").expect("remote")),
        states: vec![parse_state("time-wait").expect("state")],
        ..Query::default()
    };
    assert!(selects(&q, &tw_in, range) && selects(&q, &elsewhere, range));
    assert!(!selects(&q, &est_in, range), "state");
    let q = Query {
        to: Some((ip("10.0.0.5"), 5432)),
        ..Query::default()
    };
    assert!(selects(&q, &tw_in, range) && selects(&q, &est_in, range));
    assert!(!selects(&q, &out_of_range, range), "not an ephemeral port");
    assert!(!selects(&q, &elsewhere, range), "another destination");
    assert!(!selects(&q, &tw_in, None), "no range known: nothing to say");
    // An IPv4 destination matches its IPv6-mapped form too.
    let mapped = e(TCP_TIME_WAIT, 40004, "::ffff:10.0.0.5", 5432);
    assert!(selects(&q, &mapped, range));
}

#[test]
fn remote_ends_and_states_parse_as_users_write_them() {
    let r = Remote::parse("[::1]:5432").expect("v6");
    assert_eq!((r.addr, r.port), (Some(ip("::1")), Some(5432)));
    let r = Remote::parse("10.0.0.5:80").expect("v4");
    assert_eq!((r.addr, r.port), (Some(ip("10.0.0.5")), Some(80)));
    assert_eq!(Remote::parse("::1").expect("bare v6").port, None);
    assert_eq!(Remote::parse(":443").expect("port").addr, None);
    for bad in ["", "host:80", ":0", ":99999", "10.0.0.5:"] {
        assert!(Remote::parse(bad).is_err(), "{bad}");
    }
    for (typed, name) in [
        ("time-wait", "TIME_WAIT"),
        ("TIME_WAIT", "TIME_WAIT"),
        ("estab", "ESTABLISHED"),
        ("close-wait", "CLOSE_WAIT"),
        ("listen", "LISTEN"),
        ("unconn", "UNCONN"),
        ("finwait2", "FIN_WAIT2"),
    ] {
        assert_eq!(parse_state(typed).as_deref(), Ok(name), "{typed}");
    }
    assert!(parse_state("sleeping").is_err());
}

fn many_time_waits() -> WhoReport {
    let mut entries: Vec<SocketEntry> = (0..5)
        .map(|i| entry(Proto::Tcp, TCP_TIME_WAIT, 40000 + i, 5432, 0))
        .collect();
    entries.push(entry(Proto::Tcp, TCP_ESTABLISHED, 40005, 5432, 21));
    entries.push(entry(Proto::Tcp, TCP_ESTABLISHED, 40006, 5432, 22));
    let owners = HashMap::from([(21, vec![owner(300, "app")]), (22, vec![owner(300, "app")])]);
    report(None, entries, &owners, &mut Procs, true)
}

#[test]
fn counts_by_state_and_owner_most_first() {
    let mut r = many_time_waits();
    let c = counts(&r.sockets);
    assert_eq!(c.len(), 2, "{c:#?}");
    assert_eq!(
        (c[0].count, c[0].state.as_str(), c[0].pid),
        (5, "TIME_WAIT", None)
    );
    assert_eq!(
        (c[1].count, c[1].state.as_str(), c[1].pid),
        (2, "ESTABLISHED", Some(300))
    );
    r.counts = Some(c);
    let t = text(&r, None);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3, "{t}");
    assert!(lines[0].starts_with("COUNT PROTO STATE"), "{t}");
    assert!(
        lines[1].trim_start().starts_with("5 tcp   TIME_WAIT"),
        "{t}"
    );
    assert!(lines[2].contains("300 app"), "{t}");
}

#[test]
fn says_how_much_of_a_destinations_range_is_taken() {
    let mut r = many_time_waits();
    let range = Some(PortRange {
        low: 40000,
        high: 40007,
    });
    let reserved = crate::sysctl::PortSet::parse("40007").expect("set");
    r.to = Some(towards(
        (ip("10.0.0.5"), 5432),
        &r.sockets,
        range,
        Some(&reserved),
    ));
    let to = r.to.as_ref().expect("to");
    assert_eq!((to.capacity, to.in_use), (Some(7), 7));
    assert_eq!(to.by_state.get("TIME_WAIT"), Some(&5));
    let t = text(&r, None);
    assert_eq!(
        t.lines().next(),
        Some("towards 10.0.0.5:5432: 7 of the 7 usable ports of the ephemeral range 40000-40007 are held (2 ESTABLISHED, 5 TIME_WAIT); none is left: connect() there fails with EADDRNOTAVAIL")
    );
}

#[test]
fn fits_a_terminal_and_keeps_full_lines_when_piped() {
    let mut r = sample();
    r.sockets[0].cmdline = Some(format!("/opt/mssql/bin/sqlservr {}", "-x ".repeat(60)));
    let piped = text(&r, None);
    assert!(piped.lines().any(|l| l.chars().count() > 120), "{piped}");
    assert!(piped.contains(&"-x ".repeat(59)), "whole when piped");
    let narrow = text(&r, Some(100));
    assert!(narrow.lines().all(|l| l.chars().count() <= 100), "{narrow}");
    assert!(narrow.contains('…'), "cut, and marked: {narrow}");
}

#[test]
fn what_processes_chose_is_escaped() {
    let owners = HashMap::from([(11, vec![owner(900, "x\x1b]0;owned\x07")])]);
    struct Evil;
    impl ProcessLookup for Evil {
        fn lookup(&mut self, _: u32) -> Option<ProcessInfo> {
            Some(ProcessInfo {
                cmdline: Some("evil\u{202e}txt.exe".into()),
                cgroup: Some("/system.slice/x\x1b[2J.service".into()),
                netns: None,
                container_pid: None,
            })
        }
    }
    let r = report(
        Some(1433),
        vec![entry(Proto::Tcp, TCP_LISTEN, 1433, 0, 11)],
        &owners,
        &mut Evil,
        true,
    );
    let t = text(&r, None);
    assert!(!t.contains('\x1b') && !t.contains('\u{202e}'), "{t:?}");
    assert!(
        t.contains(r"x\e]0;owned\x07") && t.contains(r"evil\u{202e}txt.exe"),
        "{t}"
    );
}
