//! `portwatch top` drawn with ratatui's TestBackend from a recorded trace
//! (tests/fixtures/session.jsonl: a bind conflict, four TIME_WAIT entries,
//! an exhausted 8-port range) and a census of the table it left, compared
//! with the screens kept in tests/fixtures/top-*.txt. No root, no terminal.
//! `UPDATE_SNAPSHOTS=1 cargo test --test top` rewrites the screens; read
//! the diff before committing it.
#![cfg(target_os = "linux")]

use std::net::IpAddr;

use portwatch::cmd::top::render::{self, Shown, HIGHLIGHT_PRESSURE};
use portwatch::cmd::top::screen_text;
use portwatch::cmd::top::ui::Ui;
use portwatch::model::{Event, TcpState};
use portwatch::sysctl::PortSet;
use portwatch::view::{NsTable, Snapshot, ViewState};
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use ratatui::Terminal;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/session.jsonl");
const S: i128 = 1_000_000_000;

fn recorded() -> Vec<Event> {
    std::fs::read_to_string(FIXTURE)
        .expect("fixture")
        .lines()
        .filter(|l| !l.contains("\"event\":\"summary\""))
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// The view a second after the recording ends, with the table the
/// recording left: four ports in TIME_WAIT and four connected, of eight.
fn view() -> ViewState {
    let events = recorded();
    let first = events.first().expect("events").time;
    let last = events.last().expect("events").time;
    let mut v = ViewState::new(first);
    for e in &events {
        v.add(e);
    }
    v.tick(last + S);
    let lo = ip("127.0.0.1");
    let mut sockets = vec![(TcpState::Listen, (lo, 1433, ip("0.0.0.0"), 0))];
    for port in 40000..40008 {
        let state = if port % 2 == 0 {
            TcpState::TimeWait
        } else {
            TcpState::Established
        };
        sockets.push((state, (lo, port, lo, 1433)));
    }
    v.apply_table(
        &NsTable {
            netns: None,
            low: 40000,
            high: 40007,
            reserved: PortSet::default(),
            sockets,
        },
        false,
    );
    v
}

fn snapshot(ui: &Ui) -> Snapshot {
    view().snapshot(&ui.opts())
}

fn check(name: &str, got: &str) {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, got).expect("write snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}; run with UPDATE_SNAPSHOTS=1 to create it"));
    assert!(
        got == want,
        "screen differs from {path}:\n--- got\n{got}\n--- want\n{want}"
    );
}

#[test]
fn the_80x24_screen_of_a_recorded_session() {
    let ui = Ui::default();
    let text =
        screen_text(&snapshot(&ui), &ui, None, time::UtcOffset::UTC, 80, 24).expect("render");
    check("top-80x24.txt", &text);
}

#[test]
fn a_wide_screen_sorted_and_filtered() {
    let mut ui = Ui::default();
    ui.proc_sort = ui.proc_sort.next().next();
    ui.filter = Some("python".into());
    ui.paused = true;
    let text =
        screen_text(&snapshot(&ui), &ui, None, time::UtcOffset::UTC, 120, 30).expect("render");
    check("top-120x30-filtered.txt", &text);
}

#[test]
fn a_pool_past_80_percent_is_highlighted() {
    let ui = Ui::default();
    let snap = snapshot(&ui);
    let d = &snap.destinations[0];
    assert!(d.pool.pressure.expect("counted") >= HIGHLIGHT_PRESSURE);
    let mut term = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
    let shown = Shown {
        snap: &snap,
        ui: &ui,
        own_netns: None,
        offset: time::UtcOffset::UTC,
    };
    term.draw(|f| render::draw(f, &shown)).expect("draw");
    let buf = term.backend().buffer();
    let text = render::text(buf);
    let row = text
        .lines()
        .position(|l| l.contains("127.0.0.1:1433"))
        .expect("destination row");
    let cell = &buf[(15u16, u16::try_from(row).expect("row"))];
    assert_eq!(cell.fg, Color::Red, "{text}");
}

#[test]
fn what_a_process_names_itself_cannot_drive_the_terminal() {
    let mut events = recorded();
    for e in &mut events {
        e.comm = Some("evil\x1b[2J\u{202e}".into());
    }
    let mut v = ViewState::new(events[0].time);
    events.iter().for_each(|e| v.add(e));
    v.tick(events[events.len() - 1].time + S);
    let ui = Ui::default();
    let text = screen_text(
        &v.snapshot(&ui.opts()),
        &ui,
        None,
        time::UtcOffset::UTC,
        100,
        24,
    )
    .expect("render");
    assert!(
        !text.contains('\x1b') && !text.contains('\u{202e}'),
        "{text}"
    );
    assert!(text.contains(r"evil\e[2J"), "{text}");
}
