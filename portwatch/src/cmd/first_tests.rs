use super::*;
use crate::model::{Event, TcpState};

const BOOT: &str = "bbbb";
const S: i128 = 1_000_000_000;
const T0: i128 = 1_795_471_200 * S;

fn rec(secs: i128, event: Event, mark: Option<Mark>) -> Record {
    let mono = u64::try_from(secs * S).unwrap_or(0) + 5_000_000_000;
    let mut ev = event;
    ev.time = T0 + secs * S;
    Record {
        mark,
        ..Record::event(BOOT.into(), mono, ev)
    }
}

fn marker(secs: i128, mark: Mark) -> Record {
    rec(secs, Event::new(0, EventKind::State), Some(mark))
}

fn listen(secs: i128, pid: u32, mark: Option<Mark>) -> Record {
    let mut ev = Event::new(0, EventKind::Listen);
    ev.pid = Some(pid);
    ev.comm = Some("sqlservr".into());
    ev.saddr = Some("0.0.0.0".parse().expect("ip"));
    ev.sport = Some(1433);
    ev.new_state = Some(TcpState::Listen);
    rec(secs, ev, mark)
}

fn ephemeral(secs: i128, pid: u32) -> Record {
    let mut ev = Event::new(0, EventKind::State);
    ev.pid = Some(pid);
    ev.comm = Some("curl\u{1b}[2J".into());
    ev.cgroup = Some("/system.slice/client.service".into());
    ev.saddr = Some("127.0.0.1".parse().expect("ip"));
    ev.sport = Some(1433);
    ev.daddr = Some("127.0.0.1".parse().expect("ip"));
    ev.dport = Some(8080);
    ev.old_state = Some(TcpState::SynSent);
    ev.new_state = Some(TcpState::Established);
    rec(secs, ev, None)
}

fn lost(secs: i128, n: u64) -> Record {
    rec(secs, Event::lost(0, n, LostReason::RingBuffer), None)
}

/// `--first --port 1433` over `all`, as text, in UTC.
fn answer(all: &[Record], since: Option<i128>) -> (bool, String) {
    let selected: Vec<&Record> = all
        .iter()
        .filter(|r| r.mark.is_none() && r.event.sport == Some(1433))
        .collect();
    let existing: Vec<&Record> = all
        .iter()
        .filter(|r| r.mark == Some(Mark::Existing))
        .collect();
    let rank: HashMap<&str, usize> = [(BOOT, 0)].into();
    let mut out = Vec::new();
    let window = Window {
        boot: Some(BOOT),
        since,
        upto: T0 + 1000 * S,
    };
    let found = print(
        &mut out,
        all,
        &selected,
        &existing,
        1433,
        window,
        &rank,
        false,
        Zone::Utc,
    )
    .expect("print");
    (found, String::from_utf8(out).expect("utf8"))
}

#[test]
fn a_port_held_at_the_recorders_start_is_first_seen_then_not_first_taken() {
    let all = vec![
        marker(0, Mark::Started),
        listen(0, 77, Some(Mark::Existing)),
        marker(1, Mark::Stopped),
        marker(10, Mark::Started),
        ephemeral(12, 42),
    ];
    let (found, out) = answer(&all, None);
    assert!(found);
    let first = out.lines().next().expect("a line");
    assert!(
        first.starts_with(
            "port 1433 was first seen since the recorder started at 2026-11-23 22:00:00.000Z (boot bbbb): already held then by pid 77 (sqlservr): listen on 0.0.0.0:1433"
        ),
        "{out}"
    );
    assert!(!out.contains("first taken"), "{out}");
}

#[test]
fn the_first_taker_names_its_unit_and_every_gap_before_it() {
    let all = vec![
        marker(0, Mark::Started),
        lost(3, 2),
        lost(4, 5),
        marker(5, Mark::Stopped),
        marker(8, Mark::Started),
        lost(9, 1),
        ephemeral(12, 42),
        // After the answer: not a gap of it.
        lost(20, 9),
    ];
    let (found, out) = answer(&all, None);
    assert!(found);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "port 1433 was first taken at 2026-11-23 22:00:12.000Z (boot bbbb) by pid 42 (curl\\e[2J) in client.service: ephemeral port of an outgoing connection to 127.0.0.1:8080"
    );
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].starts_with("gap: 8 events lost (ring buffer full) between 2026-11-23 22:00:03.000Z and 2026-11-23 22:00:09.000Z"), "{out}");
    assert!(
        lines[2]
            .starts_with("gap: the recorder started at 2026-11-23 22:00:00.000Z, 5.0 s after boot"),
        "{out}"
    );
    assert!(lines[3].starts_with("gap: the recorder was stopped from 2026-11-23 22:00:05.000Z to 2026-11-23 22:00:08.000Z"), "{out}");
}

#[test]
fn a_crash_a_deletion_and_a_partial_snapshot_are_gaps_too() {
    let all = vec![
        // The oldest record left; segments before it were deleted.
        marker(0, Mark::Started),
        marker(2, Mark::Deleted { segments: 3 }),
        // No Stopped before this start: the recorder died.
        marker(6, Mark::Started),
        marker(
            6,
            Mark::SnapshotIncomplete {
                why: "it took longer than 5 s".into(),
            },
        ),
        ephemeral(12, 42),
    ];
    let (_, out) = answer(&all, None);
    assert!(out.contains("gap: the recorder stopped without a word (crash, kill or power loss) after 2026-11-23 22:00:02.000Z and started again at 2026-11-23 22:00:06.000Z"), "{out}");
    assert!(
        out.contains("gap: records before 2026-11-23 22:00:00.000Z were deleted"),
        "{out}"
    );
    assert!(
        out.contains("could not all be listed (it took longer than 5 s)"),
        "{out}"
    );
    // A window that starts after the oldest record left reaches no deletion.
    let (_, out) = answer(&all, Some(T0 + 5 * S));
    assert!(!out.contains("deleted"), "{out}");
    assert!(!out.contains("5.0 s after boot"), "{out}");
}

#[test]
fn no_taker_still_names_the_gaps() {
    let all = vec![marker(0, Mark::Started), lost(3, 4)];
    let (found, out) = answer(&all, None);
    assert!(!found);
    assert!(out.contains("gap: 4 events lost"), "{out}");
}
