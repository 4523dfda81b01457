//! Drawing one frame of `top` from a [`Snapshot`]: a title line, the
//! processes, the destinations' pools, the recent failures and the keys,
//! laid out to fit 80x24 (wider terminals get wider columns). Every string
//! a process controls goes through [`visible`].

use std::net::IpAddr;

use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;

use super::ui::Ui;
use crate::escape::visible;
use crate::model::{EventKind, Holder};
use crate::view::{DestRow, FailureRow, ProcRow, Snapshot};

/// Pools at or past this share of their range are highlighted.
pub const HIGHLIGHT_PRESSURE: f64 = 0.8;

/// What the frame needs besides the snapshot.
pub struct Shown<'a> {
    pub snap: &'a Snapshot,
    pub ui: &'a Ui,
    /// portwatch's own network namespace, shown as `host`.
    pub own_netns: Option<u64>,
    pub offset: time::UtcOffset,
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// A column: its title, its width (0: what the others leave), and whether
/// it holds numbers (right-aligned).
type Column = (&'static str, u16, bool);

const PROC_COLS: [Column; 8] = [
    ("PID", 7, true),
    ("COMM", 15, false),
    ("TW NOW", 7, true),
    ("TW/s", 6, true),
    ("CONN/s", 6, true),
    ("BINDF", 6, true),
    ("CONNF", 6, true),
    ("UNIT/CONTAINER", 0, false),
];
const DEST_COLS: [Column; 7] = [
    ("NETNS", 10, false),
    ("DESTINATION", 22, false),
    ("IN USE", 6, true),
    ("OF", 6, true),
    ("USE", 6, true),
    ("+/s", 6, true),
    ("EXHAUSTED IN", 0, false),
];
const FAIL_COLS: [Column; 5] = [
    ("TIME", 8, false),
    ("PROCESS", 19, false),
    ("ERRNO", 13, false),
    ("CALL", 20, false),
    ("HOLDER / POOL", 0, false),
];

/// A cell, right-aligned for numbers.
fn cell(s: String, right: bool) -> Cell<'static> {
    let line = Line::from(s);
    Cell::from(if right {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}

fn row(values: Vec<String>, cols: &[Column]) -> Row<'static> {
    Row::new(
        values
            .into_iter()
            .zip(cols)
            .map(|(v, c)| cell(v, c.2))
            .collect::<Vec<_>>(),
    )
}

/// A pane: `rows` under the columns' titles, in a block titled `title`.
fn table(rows: Vec<Row<'static>>, cols: &[Column], title: String) -> Table<'static> {
    let widths = cols.iter().map(|c| match c.1 {
        0 => Constraint::Fill(1),
        w => Constraint::Length(w),
    });
    let header = Row::new(
        cols.iter()
            .map(|c| cell(c.0.to_owned(), c.2))
            .collect::<Vec<_>>(),
    )
    .style(bold().add_modifier(Modifier::REVERSED));
    Table::new(rows, widths).header(header).block(block(title))
}

/// `1.5`, `12`, `1.2k`: a rate in at most five characters.
fn rate(r: f64) -> String {
    if r <= 0.0 {
        "0".to_owned()
    } else if r < 10.0 {
        format!("{r:.1}")
    } else if r < 10_000.0 {
        format!("{r:.0}")
    } else {
        format!("{:.1}k", r / 1000.0)
    }
}

/// `45s`, `12m`, `3.2h`, `now`, `-` (not growing).
fn duration(s: Option<f64>) -> String {
    match s {
        None => "-".to_owned(),
        Some(s) if s < 1.0 => "now".to_owned(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

fn endpoint(a: Option<IpAddr>, p: Option<u16>) -> String {
    match (a, p) {
        (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (None, Some(p)) => format!("*:{p}"),
        _ => "-".to_owned(),
    }
}

fn process(pid: Option<u32>, comm: Option<&str>) -> String {
    match (comm, pid) {
        (Some(c), Some(p)) => format!("{}[{p}]", visible(c)),
        (None, Some(p)) => format!("pid {p}"),
        _ => "(unknown)".to_owned(),
    }
}

fn netns(ns: Option<u64>, own: Option<u64>) -> String {
    match ns {
        Some(n) if Some(n) == own => "host".to_owned(),
        Some(n) => n.to_string(),
        None => "?".to_owned(),
    }
}

pub fn draw(f: &mut Frame, v: &Shown) {
    let area = f.area();
    let [title, procs, dests, fails, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Fill(2),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(title_line(v)), title);
    processes(f.buffer_mut(), procs, v);
    destinations(f.buffer_mut(), dests, v);
    failures(f.buffer_mut(), fails, v);
    f.render_widget(Paragraph::new(v.ui.help_line()), keys);
}

fn title_line(v: &Shown) -> Line<'static> {
    let s = v.snap;
    let lost = s.lost_by_reason.total();
    let mut spans = vec![
        Span::styled("portwatch top", bold()),
        Span::raw(format!(
            "  {}  {} events  ",
            crate::timefmt::clock_ms(s.time, v.offset)
                .get(..8)
                .unwrap_or_default(),
            s.events
        )),
        Span::styled(
            format!("{lost} lost"),
            if lost > 0 {
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            },
        ),
        Span::raw(format!("  TIME_WAIT exits: {}", s.timewait_exits)),
    ];
    if s.exits.timer > 0 {
        spans.push(Span::raw(format!(" ({} by 60 s timer)", s.exits.timer)));
    }
    if v.ui.paused {
        spans.push(Span::styled("  PAUSED", bold().fg(Color::Yellow)));
    }
    Line::from(spans)
}

fn block(title: String) -> Block<'static> {
    Block::default()
        .borders(Borders::TOP)
        .title(Span::styled(title, bold()))
}

fn processes(buf: &mut Buffer, area: Rect, v: &Shown) {
    let ui = v.ui;
    let title = format!(" Processes by {}{} ", ui.proc_sort.name(), ui.filter_note());
    let rows = v.snap.processes.iter().map(|p: &ProcRow| {
        let unit = p
            .container_id
            .as_ref()
            .map(|id| {
                let short: String = id.chars().take(12).collect();
                format!(
                    "{}:{short}",
                    p.container_runtime.as_deref().unwrap_or("ctr")
                )
            })
            .or_else(|| p.unit.as_deref().map(str::to_owned))
            .unwrap_or_default();
        row(
            vec![
                p.pid.map_or_else(|| "-".to_owned(), |x| x.to_string()),
                p.comm
                    .as_deref()
                    .map_or_else(|| "-".into(), |c| visible(c).into_owned()),
                p.timewait_now.to_string(),
                rate(p.timewait_entries_per_s),
                rate(p.connects_per_s),
                p.bind_failures.to_string(),
                p.connect_failures.to_string(),
                visible(&unit).into_owned(),
            ],
            &PROC_COLS,
        )
    });
    let table = table(rows.collect(), &PROC_COLS, title);
    ratatui::widgets::Widget::render(table, area, buf);
}

fn destinations(buf: &mut Buffer, area: Rect, v: &Shown) {
    let title = format!(
        " Ephemeral ports by destination, by {} ",
        v.ui.dest_sort.name()
    );
    let rows = v.snap.destinations.iter().map(|d: &DestRow| {
        let p = &d.pool;
        let (in_use, cap) = p
            .pool
            .as_ref()
            .map_or(("?".to_owned(), "?".to_owned()), |u| {
                (u.in_use.to_string(), u.capacity.to_string())
            });
        let pct = p
            .pressure
            .map_or_else(|| "?".to_owned(), |x| format!("{:.1}%", x * 100.0));
        let hot = p.pressure.is_some_and(|x| x >= HIGHLIGHT_PRESSURE);
        let tail = match &p.error {
            Some(e) => visible(e).into_owned(),
            None => duration(d.exhaustion_s),
        };
        let row = row(
            vec![
                netns(p.netns, v.own_netns),
                endpoint(Some(p.daddr), Some(p.dport)),
                in_use,
                cap,
                pct,
                d.growth_per_s.map_or_else(|| "-".to_owned(), rate),
                tail,
            ],
            &DEST_COLS,
        );
        if hot {
            row.style(Style::default().fg(Color::Red).add_modifier(Modifier::BOLD))
        } else {
            row
        }
    });
    let table = table(rows.collect(), &DEST_COLS, title);
    ratatui::widgets::Widget::render(table, area, buf);
}

fn holder(h: &Holder) -> String {
    let state = h.state.map_or("bound", |s| s.name());
    format!("{} {state}", process(h.pid, h.comm.as_deref()))
}

fn failures(buf: &mut Buffer, area: Rect, v: &Shown) {
    let rows = v.snap.failures.iter().map(|f: &FailureRow| {
        let (call, addr) = match f.event {
            EventKind::Bind => ("bind", endpoint(f.saddr, f.sport)),
            // A connect(), by where it went: "connect" leaves no room.
            _ => ("to", endpoint(f.daddr, f.dport)),
        };
        let found = match (&f.holder, &f.pool, &f.lookup_error) {
            (Some(h), _, _) => holder(h),
            (None, Some(p), _) => format!("{}/{} in use", p.in_use, p.capacity),
            (None, None, Some(e)) => visible(e).into_owned(),
            _ => "-".to_owned(),
        };
        row(
            vec![
                crate::timefmt::clock_ms(f.time, v.offset)
                    .get(..8)
                    .unwrap_or_default()
                    .to_owned(),
                process(f.pid, f.comm.as_deref()),
                f.errno.as_deref().unwrap_or("failed").to_owned(),
                format!("{call} {addr}"),
                found,
            ],
            &FAIL_COLS,
        )
    });
    let table = table(rows.collect(), &FAIL_COLS, " Recent failures ".to_owned());
    ratatui::widgets::Widget::render(table, area, buf);
}

/// The frame as plain text, one line per row, trailing blanks trimmed:
/// `top --once` and the snapshot tests.
pub fn text(buf: &Buffer) -> String {
    let width = usize::from(buf.area.width.max(1));
    let mut out = String::new();
    for row in buf.content.chunks(width) {
        let line: String = row.iter().map(|c| c.symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
