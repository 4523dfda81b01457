//! `portwatch history`: queries over the recorder's journal.

use std::collections::HashMap;
use std::io::{self, Write};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::cli::HistoryArgs;
use crate::journal::{self, Record};
use crate::model::{Event, EventKind, TcpState};
use crate::output::{Sink, TextSink};
use crate::timefmt::{date_ms_marked, now_ns, parse_when, Zone};

/// One boot in the journal, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Boot {
    pub boot_id: String,
    #[serde(with = "crate::timefmt::rfc3339_ns")]
    pub first: i128,
    #[serde(with = "crate::timefmt::rfc3339_ns")]
    pub last: i128,
    pub records: usize,
}

/// The boots a set of records spans, ordered by their first record.
pub fn boots(records: &[Record]) -> Vec<Boot> {
    let mut by_id: HashMap<&str, Boot> = HashMap::new();
    for r in records {
        let b = by_id.entry(&r.boot_id).or_insert_with(|| Boot {
            boot_id: r.boot_id.clone(),
            first: r.event.time,
            last: r.event.time,
            records: 0,
        });
        b.first = b.first.min(r.event.time);
        b.last = b.last.max(r.event.time);
        b.records += 1;
    }
    let mut out: Vec<Boot> = by_id.into_values().collect();
    out.sort_by_key(|b| b.first);
    out
}

/// `0` = the current boot, `-1` the one before, ...; else a boot id or its prefix.
pub fn resolve_boot(spec: &str, boots: &[Boot], current: &str) -> Result<String, String> {
    if let Ok(n) = spec.parse::<i64>() {
        if n > 0 {
            return Err(format!(
                "--boot {n}: use 0 for this boot, -1 for the one before, and so on"
            ));
        }
        let cur = boots.iter().position(|b| b.boot_id == current);
        let base = match cur {
            Some(i) => i as i64,
            // This boot has recorded nothing yet: 0 means it, -1 the newest recorded.
            None if n == 0 => return Ok(current.to_owned()),
            None => boots.len() as i64,
        };
        let idx = base + n;
        return usize::try_from(idx)
            .ok()
            .and_then(|i| boots.get(i))
            .map(|b| b.boot_id.clone())
            .ok_or_else(|| {
                format!(
                    "--boot {n}: the journal holds only {}",
                    crate::plural(boots.len() as u64, "boot", "boots")
                )
            });
    }
    let spec = spec.replace('-', "");
    let matches: Vec<&Boot> = boots
        .iter()
        .filter(|b| b.boot_id.replace('-', "").starts_with(&spec))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.boot_id.clone()),
        [] => Err(format!("no boot {spec} in the journal (see --list-boots)")),
        _ => Err(format!(
            "boot id prefix {spec} is ambiguous (see --list-boots)"
        )),
    }
}

/// How a process came to hold a local port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// bind() and then listen().
    Listen,
    /// bind() without listening (UDP, or a TCP socket bound before connect).
    Bind,
    /// The kernel chose it as the ephemeral port of an outgoing connection.
    Ephemeral,
}

fn acquisition(ev: &Event, port: u16) -> Option<How> {
    if ev.sport != Some(port) {
        return None;
    }
    match ev.event {
        EventKind::Bind if ev.ret == Some(0) => Some(How::Bind),
        EventKind::Listen => Some(How::Listen),
        EventKind::State
            if ev.old_state == Some(TcpState::SynSent)
                && matches!(ev.new_state, Some(TcpState::Established | TcpState::Close)) =>
        {
            Some(How::Ephemeral)
        }
        _ => None,
    }
}

/// The first record that took `port`, and how. A bind that the same process
/// follows with listen() in the same boot counts as a listen.
pub fn first_taker(records: &[&Record], port: u16) -> Option<(Record, How)> {
    let (i, how) = records
        .iter()
        .enumerate()
        .find_map(|(i, r)| acquisition(&r.event, port).map(|h| (i, h)))?;
    let first = records[i];
    let how = if how == How::Bind
        && records[i + 1..].iter().any(|r| {
            r.boot_id == first.boot_id
                && r.event.pid == first.event.pid
                && acquisition(&r.event, port) == Some(How::Listen)
        }) {
        How::Listen
    } else {
        how
    };
    Some((first.clone(), how))
}

pub(super) fn record_json(r: &Record, how: Option<&How>) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(&r.event)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("boot_id".into(), r.boot_id.clone().into());
        obj.insert("mono_ns".into(), r.mono_ns.into());
        // Every key always present: `how` is null outside --first.
        obj.insert("how".into(), serde_json::to_value(how)?);
    }
    Ok(serde_json::to_string(&v)?)
}

pub fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let outcome = journal::read_dir(&args.journal)
        .with_context(|| format!("cannot read the journal in {}", args.journal.display()))?;
    answer(&args, outcome)
}

/// The queries over records from any source: the journal, or on Windows
/// the AutoLogger's .etl file converted to journal records.
pub fn answer(args: &HistoryArgs, outcome: journal::ReadOutcome) -> anyhow::Result<()> {
    for d in &outcome.damage {
        eprintln!("portwatch: journal: skipped damaged data in {d}");
    }
    let all_boots = boots(&outcome.records);
    // One convention for every time shown: local, marked with its offset,
    // or UTC (`Z`) with --utc. JSON is always RFC 3339 UTC.
    let zone = if args.utc { Zone::Utc } else { Zone::local() };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if args.list_boots {
        let current = journal::boot_id().unwrap_or_default();
        let n = all_boots.len() as i64;
        for (i, b) in all_boots.iter().enumerate() {
            let offset = if all_boots.iter().any(|b| b.boot_id == current) {
                let cur = all_boots
                    .iter()
                    .position(|b| b.boot_id == current)
                    .unwrap_or(0) as i64;
                i as i64 - cur
            } else {
                i as i64 - n
            };
            if args.json {
                writeln!(out, "{}", serde_json::to_string(b)?)?;
            } else {
                writeln!(
                    out,
                    "{offset:>3} {}  {} .. {}  {}",
                    b.boot_id,
                    date_ms_marked(b.first, zone),
                    date_ms_marked(b.last, zone),
                    crate::plural(b.records as u64, "record", "records")
                )?;
            }
        }
        out.flush()?;
        return Ok(());
    }

    let now = now_ns();
    let since = args
        .since
        .as_deref()
        .map(|s| parse_when(s, now))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_when(s, now))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--until: {e}"))?;
    let boot = match &args.boot {
        Some(spec) => {
            let current = journal::boot_id().context("cannot read this boot's id")?;
            Some(resolve_boot(spec, &all_boots, &current).map_err(|e| anyhow::anyhow!(e))?)
        }
        None => None,
    };
    let boot_rank: HashMap<&str, usize> = all_boots
        .iter()
        .enumerate()
        .map(|(i, b)| (b.boot_id.as_str(), i))
        .collect();
    let filter = crate::filter::EventFilter {
        pid: args.pid,
        ports: args.ports.clone(),
        comm: super::comm_filter(args.comm.as_deref()),
        errors_only: false,
    };
    // What the recorder says about itself (its start, stop, start-up
    // snapshot) is not an event: --first reads it (see first.rs).
    let in_window = |r: &&Record| {
        boot.as_deref().is_none_or(|b| r.boot_id == b)
            && since.is_none_or(|s| r.event.time >= s)
            && until.is_none_or(|u| r.event.time <= u)
            && filter.selects(&r.event)
    };
    let existing: Vec<&Record> = outcome
        .records
        .iter()
        .filter(|r| r.mark == Some(journal::Mark::Existing))
        .filter(in_window)
        .collect();
    let mut selected: Vec<&Record> = outcome
        .records
        .iter()
        .filter(|r| r.mark.is_none())
        .filter(|r| boot.as_deref().is_none_or(|b| r.boot_id == b))
        .filter(|r| since.is_none_or(|s| r.event.time >= s))
        .filter(|r| until.is_none_or(|u| r.event.time <= u))
        .filter(|r| filter.selects(&r.event))
        .collect();
    // Within a boot the monotonic clock orders events even if the wall clock jumped.
    selected.sort_by_key(|r| (boot_rank.get(r.boot_id.as_str()).copied(), r.mono_ns));

    if args.first {
        let [port] = args.ports.as_slice() else {
            bail!("--first needs exactly one --port: which port's first taker to find");
        };
        let window = super::first::Window {
            boot: boot.as_deref(),
            since,
            upto: until.unwrap_or(now),
        };
        let all = &outcome.records;
        if !super::first::print(
            &mut out, all, &selected, &existing, *port, window, &boot_rank, args.json, zone,
        )? {
            out.flush()?;
            bail!(
                "the journal has no record of port {port} being taken{}",
                if boot.is_some() { " in that boot" } else { "" }
            );
        }
        out.flush()?;
        return Ok(());
    }

    if args.json {
        for r in &selected {
            writeln!(out, "{}", record_json(r, None)?)?;
        }
        out.flush()?;
    } else {
        drop(out);
        let mut sink = TextSink::new(io::stdout(), false)
            .with_dates(zone)
            .with_width(crate::term::stdout_width());
        for r in &selected {
            sink.event(&r.event)?;
        }
        sink.flush()?;
    }
    Ok(())
}

pub(super) fn endpoint(e: &Event) -> String {
    match (e.saddr, e.sport) {
        (Some(std::net::IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        _ => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_offset_past_the_journal_says_how_many_it_holds() {
        let one = vec![Boot {
            boot_id: "aaaa".into(),
            first: 1,
            last: 2,
            records: 1,
        }];
        let e = resolve_boot("-1", &one, "aaaa").unwrap_err();
        assert_eq!(e, "--boot -1: the journal holds only 1 boot");
        assert_eq!(resolve_boot("0", &one, "aaaa").as_deref(), Ok("aaaa"));
    }
}
