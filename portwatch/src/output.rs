//! Output formats: aligned, coloured lines for a terminal, JSON Lines for
//! scripts. Both write through a buffer and flush when the pipeline is idle.

use std::io::{self, Write};
use std::net::IpAddr;

use nu_ansi_term::{Color, Style};

use crate::aggregate::Summary;
use crate::escape::visible;
use crate::explain::{self, Side};
use crate::model::{Event, EventKind};
use crate::timefmt;

pub trait Sink {
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    fn summary(&mut self, s: &Summary) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// One JSON object per line; field names are the stable schema in
/// [`crate::model::Event`] and [`crate::aggregate::Summary`]. Events are
/// written by [`crate::jsonl`], the same bytes as serde's without its cost.
pub struct JsonSink<W: Write> {
    out: io::BufWriter<W>,
    /// The line being built, reused.
    line: Vec<u8>,
    time: crate::jsonl::TimeCache,
}

impl<W: Write> JsonSink<W> {
    pub fn new(w: W) -> Self {
        JsonSink {
            out: io::BufWriter::new(w),
            line: Vec::with_capacity(1024),
            time: Default::default(),
        }
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.line.clear();
        crate::jsonl::event(&mut self.line, ev, &mut self.time);
        self.out.write_all(&self.line)
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, s)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub struct TextSink<W: Write> {
    out: io::BufWriter<W>,
    color: bool,
    offset: time::UtcOffset,
    header_done: bool,
    /// Full dates with their zone marked, for records that span days.
    dates: Option<timefmt::Zone>,
    /// portwatch's own network namespace: others are named on each line.
    own_netns: Option<u64>,
    /// The terminal's width, to fit lines to; None: full lines (piped).
    width: Option<usize>,
}

/// This process's network namespace inode.
fn own_netns() -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

impl<W: Write> TextSink<W> {
    pub fn new(w: W, color: bool) -> Self {
        TextSink {
            out: io::BufWriter::new(w),
            color,
            offset: time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC),
            header_done: false,
            dates: None,
            own_netns: own_netns(),
            width: None,
        }
    }

    /// Which namespace counts as portwatch's own (for tests).
    pub fn with_own_netns(mut self, own: Option<u64>) -> Self {
        self.own_netns = own;
        self
    }

    /// Print the date too, its zone marked: for records that span days
    /// and boots.
    pub fn with_dates(mut self, zone: timefmt::Zone) -> Self {
        self.dates = Some(zone);
        self
    }

    /// Fit lines to a terminal this wide (None: full lines, for pipes).
    pub fn with_width(mut self, width: Option<usize>) -> Self {
        self.width = width;
        self
    }

    /// Fixed offset, for reproducible output in tests.
    pub fn with_offset(mut self, offset: time::UtcOffset) -> Self {
        self.offset = offset;
        self
    }

    /// `text` as lines fitting the terminal (continuations indented by
    /// `indent`), or as one line when piped.
    fn fit(&self, text: &str, indent: usize) -> Vec<String> {
        match self.width {
            Some(w) => crate::term::wrap(text, w, indent),
            None => vec![text.to_owned()],
        }
    }

    fn time_width(&self) -> usize {
        match self.dates {
            Some(timefmt::Zone::Utc) => timefmt::DATE_MS_MARKED_WIDTH - 5,
            Some(timefmt::Zone::Local(_)) => timefmt::DATE_MS_MARKED_WIDTH,
            None => 12,
        }
    }

    fn paint(&self, style: Style, s: &str) -> String {
        if self.color {
            style.paint(s).to_string()
        } else {
            s.to_owned()
        }
    }
}

/// One line, at most `max` characters: command lines can hold anything.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

/// ` [netns N]` for a namespace other than portwatch's own.
fn netns_tag(netns: Option<u64>, own: Option<u64>) -> String {
    match netns {
        Some(n) if Some(n) != own => format!(" [netns {n}]"),
        _ => String::new(),
    }
}

fn endpoint(addr: Option<IpAddr>, port: Option<u16>) -> String {
    match (addr, port) {
        (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, Some(p)) => format!("*:{p}"),
        (None, None) => "-".to_owned(),
    }
}

/// Under a failed bind() or connect(): the message each common runtime
/// raises for it, from the same table `portwatch explain` reads, so that the
/// failure can be matched with an application's log.
fn runtime_hint(ev: &Event) -> Option<String> {
    let (side, addr, port) = match ev.event {
        EventKind::Bind => (Side::Bind, ev.saddr, ev.sport),
        EventKind::Connect => (Side::Connect, ev.daddr, ev.dport),
        _ => return None,
    };
    explain::runtime_messages(ev.errno.as_deref()?, side, addr, port)
}

/// The last column: states, errno and holder, or the lost count.
fn detail(ev: &Event) -> String {
    match ev.event {
        EventKind::Lost => format!(
            "{} lost ({})",
            crate::plural(ev.lost.unwrap_or(0), "event", "events"),
            ev.lost_reason
                .unwrap_or(crate::model::LostReason::RingBuffer)
                .describe()
        ),
        EventKind::Bind | EventKind::Connect => {
            let mut s = match (&ev.errno, ev.ret) {
                (Some(e), _) => e.to_string(),
                (None, None) if ev.inferred.is_some() => "failed (errno unknown)".to_owned(),
                (None, _) => "ok".to_owned(),
            };
            // A hook that cannot see the result: the outcome is inferred.
            if ev.inferred.is_some() {
                s.push_str(" (inferred)");
            }
            if let Some(h) = &ev.holder {
                let who = match (h.pid, &h.comm) {
                    (Some(p), Some(c)) => format!("{}[{p}]", visible(c)),
                    (Some(p), None) => format!("pid {p}"),
                    _ => "no process".to_owned(),
                };
                let state = h.state.map_or("bound", |s| s.name());
                s.push_str(&format!(
                    "  held by {who} ({} {state} {})",
                    h.protocol.map_or("?", |p| p.name()),
                    endpoint(Some(h.saddr), Some(h.sport))
                ));
            }
            if let Some(p) = &ev.pool {
                s.push_str(&format!(
                    "  {} of {} ports towards it in use",
                    p.in_use, p.capacity
                ));
            }
            if let Some(why) = &ev.lookup_error {
                s.push_str(&format!("  (lookup failed: {why})"));
            }
            s
        }
        _ => match (ev.old_state, ev.new_state) {
            (Some(o), Some(n)) => format!("{o} -> {n}"),
            _ => String::new(),
        },
    }
}

/// On a terminal, what is left of a line for the DETAIL column before the
/// LOCAL -> REMOTE column shrinks (`ESTABLISHED -> FIN_WAIT1` is 24).
const DETAIL_ROOM: usize = 24;
/// The LOCAL -> REMOTE column's width when there is room (and when piped).
const ENDS_WIDTH: usize = 45;

/// `text` broken into lines that fit `width` when it starts at column
/// `col`; the lines after the first begin with `col` spaces.
fn hang(text: &str, col: usize, width: usize) -> Vec<String> {
    let mut lines = crate::term::wrap(text, width.saturating_sub(col).max(8), 0);
    let pad = " ".repeat(col);
    for l in lines.iter_mut().skip(1) {
        l.insert_str(0, &pad);
    }
    lines
}

impl<W: Write> TextSink<W> {
    /// One row: `prefix` (TIME PID COMM EVENT, `prefix_len` characters on
    /// screen), the LOCAL -> REMOTE column and the detail. Piped, one line
    /// with the column 45 wide; on a terminal, one line if the row fits,
    /// else the detail on the lines below, under the LOCAL column.
    fn write_row(
        &mut self,
        prefix: &str,
        prefix_len: usize,
        ends: &str,
        detail: &str,
        detail_style: Option<Style>,
    ) -> io::Result<()> {
        let paint = |me: &Self, s: &str| match detail_style {
            Some(style) => me.paint(style, s),
            None => s.to_owned(),
        };
        let Some(width) = self.width else {
            let detail = paint(self, detail);
            return writeln!(self.out, "{prefix}{ends:<ENDS_WIDTH$} {detail}");
        };
        let ends_w = width
            .saturating_sub(prefix_len + 1 + DETAIL_ROOM)
            .min(ENDS_WIDTH);
        let ends_len = ends.chars().count();
        if ends_len <= ends_w && prefix_len + ends_w + 1 + detail.chars().count() <= width {
            let detail = paint(self, detail);
            let line = format!("{prefix}{ends:<ends_w$} {detail}");
            return writeln!(self.out, "{}", line.trim_end());
        }
        for (i, l) in hang(ends, prefix_len, width).into_iter().enumerate() {
            if i == 0 {
                writeln!(self.out, "{}", format!("{prefix}{l}").trim_end())?;
            } else {
                writeln!(self.out, "{l}")?;
            }
        }
        if !detail.is_empty() {
            let pad = " ".repeat(prefix_len);
            for l in hang(detail, prefix_len, width) {
                writeln!(self.out, "{pad}{}", paint(self, l.trim_start()))?;
            }
        }
        Ok(())
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let tw = self.time_width();
        // TIME PID COMM EVENT and the spaces after each.
        let prefix_len = tw + 1 + 7 + 1 + 15 + 1 + 8 + 1;
        if !self.header_done {
            self.header_done = true;
            let bold = Style::new().bold();
            let prefix = format!(
                "{:<tw$} {:>7} {:<15} {:<8} ",
                "TIME", "PID", "COMM", "EVENT"
            );
            let prefix = self.paint(bold, &prefix);
            self.write_row(&prefix, prefix_len, "LOCAL -> REMOTE", "DETAIL", Some(bold))?;
        }
        let time = match self.dates {
            Some(zone) => timefmt::date_ms_marked(ev.time, zone),
            None => timefmt::clock_ms(ev.time, self.offset),
        };
        let pid = ev.pid.map_or("-".to_owned(), |p| p.to_string());
        // A process names itself (prctl PR_SET_NAME): escape what it chose.
        let comm = ev.comm.as_deref().map_or("?".into(), visible);
        // On a terminal the column holds what it is meant to.
        let comm = match self.width {
            Some(_) => crate::term::cut(&comm, 15),
            None => comm.into_owned(),
        };
        let local = endpoint(ev.saddr, ev.sport);
        let remote = endpoint(ev.daddr, ev.dport);
        let ends = match ev.event {
            EventKind::Bind | EventKind::Listen => local,
            EventKind::Connect => format!("-> {remote}"),
            EventKind::Lost => String::new(),
            _ => format!("{local} -> {remote}"),
        };
        let failed = ev.is_failure();
        let kind_style = match ev.event {
            _ if failed => Color::Red.bold(),
            EventKind::Lost => Color::Red.bold(),
            EventKind::Timewait => Color::Yellow.normal(),
            EventKind::Listen => Color::Green.normal(),
            EventKind::Bind | EventKind::Connect => Color::Cyan.normal(),
            EventKind::State => Style::new(),
        };
        let kind = self.paint(kind_style, &format!("{:<8}", ev.event.name()));
        let prefix = format!("{time:<tw$} {pid:>7} {comm:<15} {kind} ");
        let detail = detail(ev);
        // Where it happened, when not in portwatch's own namespace; the pid
        // a container's own logs would show.
        let mut detail = detail;
        detail.push_str(&netns_tag(ev.netns, self.own_netns));
        if let Some(p) = ev.container_pid {
            detail.push_str(&format!(" [pid {p} in its namespace]"));
        }
        let style = failed.then(|| Color::Red.normal());
        self.write_row(&prefix, prefix_len, &ends, &detail, style)?;
        if failed {
            if let Some(hint) = runtime_hint(ev) {
                let lines = match self.width {
                    Some(w) => crate::term::wrap(&format!("  {hint}"), w, 4),
                    None => vec![format!("  {hint}")],
                };
                for l in lines {
                    let l = self.paint(Style::new().dimmed(), &l);
                    writeln!(self.out, "{l}")?;
                }
            }
        }
        Ok(())
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        let title = self.paint(Style::new().bold(), "summary");
        let l = &s.lost_by_reason;
        let lost = if s.lost == 0 {
            "nothing lost".to_owned()
        } else {
            format!(
                "{} lost (ring buffer {}, recursion {}, inferred from broken chains {}, \
                 pending closes given up {})",
                s.lost, l.ring_buffer, l.recursion, l.inferred, l.overflow
            )
        };
        let line = if s.events == 0 {
            // Say what was watched: an empty trace is an answer too.
            let watched = s
                .watched
                .as_ref()
                .map(|w| format!(" on {}", visible(&w.describe())))
                .unwrap_or_default();
            format!(
                "summary: no events in {:.1}s of watching TCP state changes, bind() and connect(){watched}; {lost}",
                s.duration_s
            )
        } else {
            format!(
                "summary: {} in {:.1}s, {lost}",
                crate::plural(s.events, "event", "events"),
                s.duration_s
            )
        };
        writeln!(self.out)?;
        for (i, l) in self.fit(&line, 2).into_iter().enumerate() {
            match l.strip_prefix("summary").filter(|_| i == 0) {
                Some(rest) => writeln!(self.out, "{title}{rest}")?,
                None => writeln!(self.out, "{l}")?,
            }
        }
        if let Some(r) = s.ephemeral_range {
            writeln!(
                self.out,
                "ephemeral port range {}-{} ({} per destination)",
                r.low,
                r.high,
                crate::plural(r.size(), "port", "ports")
            )?;
        }
        if !s.processes.is_empty() {
            writeln!(
                self.out,
                "{:>7} {:<15} {:>8} {:>9}  FAILURES",
                "PID", "COMM", "EVENTS", "TIME_WAIT"
            )?;
        }
        for p in &s.processes {
            let mut fails: Vec<String> = p
                .connect_failures
                .iter()
                .map(|c| {
                    format!(
                        "connect {} {} x{}",
                        endpoint(Some(c.daddr), Some(c.dport)),
                        c.errno,
                        c.count
                    )
                })
                .collect();
            fails.extend(
                p.bind_failures
                    .iter()
                    .map(|b| format!("bind :{} {} x{}", b.port, b.errno, b.count)),
            );
            let row = format!(
                "{:>7} {:<15} {:>8} {:>9}  {}",
                p.pid.map_or("-".to_owned(), |v| v.to_string()),
                p.comm.as_deref().map_or("?".into(), visible),
                p.events,
                p.timewait,
                if fails.is_empty() {
                    "-".to_owned()
                } else {
                    fails.join(", ")
                }
            );
            // Under the FAILURES column when it wraps.
            for l in self.fit(&row, 44) {
                writeln!(self.out, "{l}")?;
            }
        }
        for d in s.timewait_destinations.iter().take(10) {
            writeln!(
                self.out,
                "TIME_WAIT entered towards {}{}: {} in the last 60s",
                endpoint(Some(d.daddr), Some(d.dport)),
                netns_tag(d.netns, self.own_netns),
                d.timewait_entered_60s,
            )?;
        }
        for p in s.pools.iter().take(10) {
            let dest = format!(
                "{}{}",
                endpoint(Some(p.daddr), Some(p.dport)),
                netns_tag(p.netns, self.own_netns)
            );
            match (&p.pool, &p.error) {
                (Some(pool), _) => {
                    let states: Vec<String> = pool
                        .by_state
                        .iter()
                        .map(|(st, n)| format!("{st} {n}"))
                        .collect();
                    let pct = match pool.pressure() * 100.0 {
                        x if x > 0.0 && x < 0.1 => "<0.1%".to_owned(),
                        x => format!("{x:.1}%"),
                    };
                    writeln!(
                        self.out,
                        "ports in use towards {dest}: {} of {} ({}-{}) = {pct}{}",
                        pool.in_use,
                        pool.capacity,
                        pool.range_low,
                        pool.range_high,
                        if states.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", states.join(", "))
                        }
                    )?;
                }
                (None, Some(e)) => {
                    writeln!(self.out, "ports in use towards {dest}: unknown ({e})")?
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Attribution;

    fn failed_connect() -> Event {
        let mut ev = Event::new(1_700_000_000_000_000_000, EventKind::Connect);
        ev.pid = Some(3128);
        ev.comm = Some("python3".into());
        ev.daddr = Some(IpAddr::from([127, 0, 0, 1]));
        ev.dport = Some(1433);
        ev.attribution = Attribution::Current;
        ev.set_ret(-crate::errno::EADDRNOTAVAIL);
        ev
    }

    fn text(events: &[Event]) -> String {
        let mut out = Vec::new();
        {
            let mut sink = TextSink::new(&mut out, false).with_offset(time::UtcOffset::UTC);
            for ev in events {
                sink.event(ev).expect("event");
            }
            sink.flush().expect("flush");
        }
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn a_failed_connect_is_followed_by_the_runtimes_messages_for_it() {
        let ok = {
            let mut ev = failed_connect();
            ev.set_ret(0);
            ev
        };
        let t = text(&[failed_connect(), ok]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "header, failure, hint, success:\n{t}");
        assert!(lines[1].contains("EADDRNOTAVAIL"), "{t}");
        assert!(
            lines[2].starts_with("  java: \"java.net.BindException: Cannot assign requested address\" · python: \"[Errno 99] Cannot assign requested address\""),
            "{t}"
        );
        assert!(
            lines[2].contains("dial tcp 127.0.0.1:1433: connect: cannot assign requested address"),
            "{t}"
        );
        assert!(lines[3].ends_with("ok"), "no hint under a success: {t}");
    }

    #[test]
    fn json_output_is_unchanged_by_the_hints() {
        let mut out = Vec::new();
        {
            let mut sink = JsonSink::new(&mut out);
            sink.event(&failed_connect()).expect("event");
            sink.flush().expect("flush");
        }
        let s = String::from_utf8(out).expect("utf8");
        assert_eq!(s.lines().count(), 1);
        assert!(!s.contains("java"), "{s}");
        let v: serde_json::Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["errno"], "EADDRNOTAVAIL");
    }

    fn summary_text(s: &Summary) -> String {
        let mut out = Vec::new();
        {
            let mut sink = TextSink::new(&mut out, false);
            sink.summary(s).expect("summary");
            sink.flush().expect("flush");
        }
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn an_empty_trace_says_how_long_it_ran_and_what_it_watched() {
        let mut agg = crate::aggregate::Aggregator::new(None);
        agg.started_at(0);
        let mut s = agg.summary(3_000_000_000);
        s.watched = Some(crate::filter::EventFilter {
            ports: vec![9999],
            ..Default::default()
        });
        let t = summary_text(&s);
        assert_eq!(
            t.trim(),
            "summary: no events in 3.0s of watching TCP state changes, bind() and connect() on port 9999 of every process; nothing lost",
        );
        agg.add(&failed_connect());
        let t = summary_text(&agg.summary(8_000_000_000));
        assert!(
            t.starts_with("\nsummary: 1 event in 8.0s, nothing lost\n"),
            "{t}"
        );
    }

    fn text_at(events: &[Event], width: Option<usize>) -> String {
        let mut out = Vec::new();
        {
            let mut sink = TextSink::new(&mut out, false)
                .with_offset(time::UtcOffset::UTC)
                .with_width(width);
            for ev in events {
                sink.event(ev).expect("event");
            }
            let mut agg = crate::aggregate::Aggregator::new(None);
            events.iter().for_each(|e| agg.add(e));
            sink.summary(&agg.summary(0)).expect("summary");
            sink.flush().expect("flush");
        }
        String::from_utf8(out).expect("utf8")
    }

    fn a_mixed_stream() -> Vec<Event> {
        let mut v6 = failed_connect();
        v6.event = EventKind::State;
        v6.ret = None;
        v6.errno = None;
        v6.saddr = Some("2001:db8:1234:5678::17".parse().expect("ip"));
        v6.sport = Some(50123);
        v6.daddr = Some("2001:db8:1234:5678::42".parse().expect("ip"));
        v6.old_state = Some(crate::model::TcpState::Established);
        v6.new_state = Some(crate::model::TcpState::FinWait1);
        let mut bind = failed_connect();
        bind.event = EventKind::Bind;
        bind.saddr = Some(IpAddr::from([0, 0, 0, 0]));
        bind.sport = Some(1433);
        bind.set_ret(-crate::errno::EADDRINUSE);
        vec![failed_connect(), v6, bind]
    }

    #[test]
    fn text_fits_a_terminal_and_keeps_full_lines_when_piped() {
        for width in [80, 100, 120] {
            let t = text_at(&a_mixed_stream(), Some(width));
            for l in t.lines() {
                assert!(l.chars().count() <= width, "{width}: {l:?}\n{t}");
            }
            assert!(t.contains("ESTABLISHED -> FIN_WAIT1"), "{t}");
            assert!(t.contains("[2001:db8:1234:5678::42]:1433"), "{t}");
        }
        let piped = text_at(&a_mixed_stream(), None);
        let lines: Vec<&str> = piped.lines().collect();
        // Header, 3 events with a hint under each failure, summary.
        assert!(lines[0].chars().count() > 90, "{piped}");
        let v6 = lines
            .iter()
            .find(|l| l.contains("[2001:db8:1234:5678::17]:50123"))
            .expect("the IPv6 line");
        assert!(v6.ends_with("ESTABLISHED -> FIN_WAIT1"), "one line: {v6}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("  java:") && l.chars().count() > 120),
            "hints unwrapped: {piped}"
        );
    }

    #[test]
    fn one_lost_event_is_one_event() {
        let t = text(&[Event::lost(0, 1, crate::model::LostReason::RingBuffer)]);
        assert!(t.contains(" 1 event lost (ring buffer full)"), "{t}");
    }

    #[test]
    fn process_names_are_escaped_in_text() {
        let mut ev = failed_connect();
        ev.comm = Some("x\x1b]0;owned\x07".into());
        let t = text(&[ev]);
        assert!(
            !t.contains('\x1b') && t.contains(r"x\e]0;owned\x07"),
            "{t:?}"
        );
    }
}
