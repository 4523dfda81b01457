//! `who`'s report as text: a table whose columns fit what they hold, cut to
//! the terminal's width on a terminal and whole when piped. Everything a
//! process chose (its name, command line, cgroup) is escaped.

use std::io::{self, Write};

use super::report::{Count, SocketView, Towards, WhoReport};
use crate::escape::visible;
use crate::model::endpoint;
use crate::output::one_line;
use crate::term::cut;

/// The last column: unit and command line, or why there is no owner.
fn who_column(s: &SocketView) -> String {
    let cmd = s
        .cmdline
        .as_deref()
        .map(|c| visible(&one_line(c, usize::MAX)).into_owned());
    let unit = s.unit.as_deref().map(|u| visible(u).into_owned());
    match (unit, cmd) {
        (Some(u), Some(c)) => format!("{u}  {c}"),
        (Some(u), None) => u,
        (None, Some(c)) => c,
        (None, None) => match &s.created_by {
            Some(c) => format!(
                "created by {}[{}] (journal); {}",
                c.comm.as_deref().map_or("?".into(), visible),
                c.pid.map_or("?".to_owned(), |p| p.to_string()),
                s.no_owner.clone().unwrap_or_default()
            ),
            None => s.no_owner.clone().unwrap_or_default(),
        },
    }
}

/// One table row per cell list; the last cell takes what the width leaves.
fn write_table(
    out: &mut impl Write,
    header: &[&str],
    right: &[bool],
    rows: &[Vec<String>],
    width: Option<usize>,
) -> io::Result<()> {
    let n = header.len();
    let widths: Vec<usize> = (0..n - 1)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let fixed: usize = widths.iter().map(|w| w + 1).sum();
    let last = width.map(|w| w.saturating_sub(fixed).max(10));
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == n {
                s.push_str(&last.map_or_else(|| c.clone(), |l| cut(c, l)));
            } else if right[i] {
                s.push_str(&format!("{c:>w$} ", w = widths[i]));
            } else {
                s.push_str(&format!("{c:<w$} ", w = widths[i]));
            }
        }
        s.trim_end().to_owned()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for r in rows {
        writeln!(out, "{}", line(r.clone()))?;
    }
    Ok(())
}

fn socket_rows(sockets: &[SocketView]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for s in sockets {
        rows.push(vec![
            s.ends.protocol.name().to_owned(),
            s.ends.state.clone(),
            s.ends.local(),
            s.ends.remote(),
            s.pid.map_or("-".to_owned(), |p| p.to_string()),
            s.comm
                .as_deref()
                .map_or("-".into(), |c| visible(c).into_owned()),
            s.user
                .clone()
                .or_else(|| s.uid.map(|u| u.to_string()))
                .unwrap_or_else(|| "-".into()),
            who_column(s),
        ]);
        // Every other process holding the same socket, on its own row.
        for o in &s.also {
            let cmd = o
                .cmdline
                .as_deref()
                .map(|c| visible(&one_line(c, usize::MAX)).into_owned());
            let unit = o.unit.as_deref().map(|u| visible(u).into_owned());
            rows.push(vec![
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                o.pid.to_string(),
                visible(&o.comm).into_owned(),
                String::new(),
                match (unit, cmd) {
                    (Some(u), Some(c)) => format!("{u}  {c}"),
                    (u, c) => u.or(c).unwrap_or_default(),
                },
            ]);
        }
    }
    rows
}

fn count_rows(counts: &[Count]) -> Vec<Vec<String>> {
    counts
        .iter()
        .map(|c| {
            vec![
                c.count.to_string(),
                c.protocol.name().to_owned(),
                c.state.clone(),
                c.pid.map_or("-".to_owned(), |p| p.to_string()),
                c.comm
                    .as_deref()
                    .map_or("-".into(), |n| visible(n).into_owned()),
                c.user.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

fn towards_line(t: &Towards) -> String {
    let states: Vec<String> = t.by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let range = t
        .ephemeral_range
        .map_or("unknown".to_owned(), |r| format!("{}-{}", r.low, r.high));
    let mut line = match t.capacity {
        Some(c) => format!(
            "towards {}: {} of the {} of the ephemeral range {range} are held",
            endpoint(t.daddr, t.dport),
            t.in_use,
            crate::plural(c, "usable port", "usable ports"),
        ),
        None => format!(
            "towards {}: {} of the ephemeral range {range} are held",
            endpoint(t.daddr, t.dport),
            crate::plural(t.in_use, "port", "ports"),
        ),
    };
    if !states.is_empty() {
        line.push_str(&format!(" ({})", states.join(", ")));
    }
    if t.capacity.is_some_and(|c| t.in_use >= u64::from(c)) {
        line.push_str("; none is left: connect() there fails with EADDRNOTAVAIL");
    }
    line
}

/// What nothing was found for, in words.
fn nothing_found(r: &WhoReport) -> String {
    match (r.port, &r.to) {
        (_, Some(t)) => format!(
            "no socket towards {} holds a port of the ephemeral range in this network namespace",
            endpoint(t.daddr, t.dport)
        ),
        (Some(p), None) => format!(
            "nothing is bound to port {p} (TCP or UDP, IPv4 or IPv6) in this network namespace"
        ),
        (None, None) => "no socket matches in this network namespace".to_owned(),
    }
}

/// The report as text; `width` is the terminal's (None: full lines).
pub fn write_text(r: &WhoReport, out: &mut impl Write, width: Option<usize>) -> io::Result<()> {
    if let Some(t) = &r.to {
        writeln!(out, "{}", towards_line(t))?;
    }
    if r.sockets.is_empty() {
        writeln!(out, "{}", nothing_found(r))?;
    } else if let Some(counts) = &r.counts {
        write_table(
            out,
            &["COUNT", "PROTO", "STATE", "PID", "COMM", "USER"],
            &[true, false, false, true, false, false],
            &count_rows(counts),
            width,
        )?;
    } else {
        write_table(
            out,
            &[
                "PROTO",
                "STATE",
                "LOCAL",
                "REMOTE",
                "PID",
                "COMM",
                "USER",
                "UNIT / COMMAND",
            ],
            &[false, false, false, false, true, false, false, false],
            &socket_rows(&r.sockets),
            width,
        )?;
    }
    if let Some(m) = &r.missing {
        writeln!(out, "note: {m}")?;
    }
    Ok(())
}
