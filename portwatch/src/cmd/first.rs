//! `history --first`: who took a port first, and how far the journal can
//! vouch for it. A port already held when the recorder started is "first
//! seen since the recorder started at T", not "first taken"; and every gap
//! in what the journal saw before the answer is named: events lost, the
//! recorder not running (before it started in a boot, or between a stop or
//! crash and its restart), segments deleted to stay under the size cap, a
//! start-up snapshot that could not be taken whole.

use std::collections::HashMap;
use std::io::Write;

use serde::Serialize;

use super::history::{endpoint, first_taker, record_json, How};
use crate::escape::visible;
use crate::journal::{Mark, Record};
use crate::model::{EventKind, LostReason, Side};
use crate::output::one_line;
use crate::timefmt::{date_ms_marked, Zone};

/// Something the journal did not see, before the answer it gives.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "gap", rename_all = "snake_case")]
pub enum Gap {
    /// Events lost (ring buffer full, recursion, or inferred), between two times.
    Lost {
        #[serde(with = "crate::timefmt::rfc3339_ns")]
        from: i128,
        #[serde(with = "crate::timefmt::rfc3339_ns")]
        to: i128,
        count: u64,
        reason: Option<LostReason>,
    },
    /// The recorder was not running: from `from` (None: since the boot
    /// began) until it started at `to`; `crashed` when it had stopped
    /// without saying so (a crash, kill -9 or power loss).
    NotRecording {
        boot_id: String,
        #[serde(with = "crate::timefmt::rfc3339_ns_opt")]
        from: Option<i128>,
        #[serde(with = "crate::timefmt::rfc3339_ns")]
        to: i128,
        /// For the start of a boot: how long after it the recorder started.
        after_boot_s: Option<f64>,
        crashed: bool,
    },
    /// The oldest segments were deleted for space: nothing older than
    /// `before` is left.
    Deleted {
        #[serde(with = "crate::timefmt::rfc3339_ns")]
        before: i128,
    },
    /// The sockets held when the recorder started could not all be listed.
    SnapshotIncomplete {
        #[serde(with = "crate::timefmt::rfc3339_ns")]
        time: i128,
        why: String,
    },
}

impl Gap {
    fn describe(&self, zone: Zone) -> String {
        let at = |t: i128| date_ms_marked(t, zone);
        match self {
            Gap::Lost {
                from,
                to,
                count,
                reason,
            } => format!(
                "{} lost ({}) {}: an earlier taker may be among them",
                crate::plural(*count, "event", "events"),
                reason.map_or("reason unknown", |r| r.describe()),
                if from == to {
                    format!("at {}", at(*from))
                } else {
                    format!("between {} and {}", at(*from), at(*to))
                }
            ),
            Gap::NotRecording {
                boot_id,
                from: None,
                to,
                after_boot_s,
                ..
            } => format!(
                "the recorder started at {}{}: what happened earlier in boot {boot_id} was not recorded",
                at(*to),
                after_boot_s.map_or(String::new(), |s| format!(", {s:.1} s after boot"))
            ),
            Gap::NotRecording {
                from: Some(from),
                to,
                crashed,
                ..
            } => {
                if *crashed {
                    format!(
                        "the recorder stopped without a word (crash, kill or power loss) after {} and started again at {}: nothing between was recorded",
                        at(*from),
                        at(*to)
                    )
                } else {
                    format!(
                        "the recorder was stopped from {} to {}: nothing between was recorded",
                        at(*from),
                        at(*to)
                    )
                }
            }
            Gap::Deleted { before } => format!(
                "records before {} were deleted to keep the journal under its size cap (record --max-size)",
                at(*before)
            ),
            Gap::SnapshotIncomplete { time, why } => format!(
                "the sockets already open when the recorder started at {} could not all be listed ({why})",
                at(*time)
            ),
        }
    }
}

/// The journal's window an answer comes from: a boot, `since`, and the
/// answer's own time (or `until`, or now, when there is no answer).
pub struct Window<'a> {
    pub boot: Option<&'a str>,
    pub since: Option<i128>,
    pub upto: i128,
}

impl Window<'_> {
    fn holds(&self, r: &Record) -> bool {
        self.boot.is_none_or(|b| r.boot_id == b)
            && self.since.is_none_or(|s| r.event.time >= s)
            && r.event.time <= self.upto
    }
}

/// What the journal did not see in `window`. `all` is every record, in
/// write order.
pub fn gaps(all: &[Record], window: &Window) -> Vec<Gap> {
    let mut out = Vec::new();
    // Lost events, one gap per reason.
    let mut lost: Vec<(Option<LostReason>, i128, i128, u64)> = Vec::new();
    for r in all.iter().filter(|r| r.mark.is_none() && window.holds(r)) {
        if r.event.event != EventKind::Lost {
            continue;
        }
        let (t, n) = (r.event.time, r.event.lost.unwrap_or(1));
        match lost.iter_mut().find(|l| l.0 == r.event.lost_reason) {
            Some(l) => (l.1, l.2, l.3) = (l.1.min(t), l.2.max(t), l.3 + n),
            None => lost.push((r.event.lost_reason, t, t, n)),
        }
    }
    out.extend(lost.into_iter().map(|(reason, from, to, count)| Gap::Lost {
        from,
        to,
        count,
        reason,
    }));
    // The recorder not running: before each start, since the boot began
    // or since it last stopped.
    let mut by_boot: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in all {
        by_boot.entry(&r.boot_id).or_default().push(r);
    }
    let mut starts = Vec::new();
    for records in by_boot.values_mut() {
        records.sort_by_key(|r| r.mono_ns);
        for (i, r) in records.iter().enumerate() {
            if r.mark != Some(Mark::Started) {
                continue;
            }
            let to = r.event.time;
            let prev = i.checked_sub(1).map(|p| records[p]);
            let from = prev.map(|p| p.event.time);
            let in_window = window.boot.is_none_or(|b| r.boot_id == b)
                && to <= window.upto
                && window.since.is_none_or(|s| to >= s);
            if in_window {
                starts.push(Gap::NotRecording {
                    boot_id: r.boot_id.clone(),
                    from,
                    to,
                    after_boot_s: prev.is_none().then(|| r.mono_ns as f64 / 1e9),
                    crashed: prev.is_some_and(|p| p.mark != Some(Mark::Stopped)),
                });
            }
        }
    }
    starts.sort_by_key(|g| match g {
        Gap::NotRecording { to, .. } => *to,
        _ => 0,
    });
    out.extend(starts);
    for r in all.iter().filter(|r| window.holds(r)) {
        if let Some(Mark::SnapshotIncomplete { why }) = &r.mark {
            out.push(Gap::SnapshotIncomplete {
                time: r.event.time,
                why: why.clone(),
            });
        }
    }
    // Deleted segments took the oldest records: a gap when the window
    // reaches back to the oldest one left.
    if all
        .iter()
        .any(|r| matches!(r.mark, Some(Mark::Deleted { .. })))
    {
        if let Some(oldest) = all.iter().min_by_key(|r| r.event.time) {
            let reaches = window.since.is_none_or(|s| s < oldest.event.time)
                && window.boot.is_none_or(|b| b == oldest.boot_id);
            if reaches {
                out.push(Gap::Deleted {
                    before: oldest.event.time,
                });
            }
        }
    }
    out
}

/// A socket the start-up snapshot found holding `port`, as a taker: a
/// listener, or a client's local port (an accepted connection's port is
/// its listener's).
fn existing_taker(r: &Record, port: u16) -> Option<How> {
    if r.mark != Some(Mark::Existing) || r.event.sport != Some(port) {
        return None;
    }
    match (r.event.event, r.event.side) {
        (EventKind::Listen, _) => Some(How::Listen),
        (_, Some(Side::Server)) => None,
        _ => Some(How::Ephemeral),
    }
}

/// The unit or container of a cgroup path, where the platform has them.
fn unit(cgroup: Option<&str>) -> Option<String> {
    #[cfg(target_os = "linux")]
    return cgroup.and_then(crate::system::unit_from_cgroup);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cgroup;
        None
    }
}

/// Answers `--first` for `port` from `selected` (the events the filters
/// kept, in order) and `existing` (the start-up snapshots' sockets the
/// filters kept), naming the gaps of `all` in the window it answers from.
/// Returns whether there was an answer.
#[allow(clippy::too_many_arguments)]
pub fn print(
    out: &mut impl Write,
    all: &[Record],
    selected: &[&Record],
    existing: &[&Record],
    port: u16,
    window: Window,
    boot_rank: &HashMap<&str, usize>,
    json: bool,
    zone: Zone,
) -> anyhow::Result<bool> {
    let seen = first_taker(selected, port);
    // Held at a recorder's start comes before whatever that boot's
    // recorder saw next; an earlier boot's taker comes first.
    let held = existing
        .iter()
        .find_map(|r| existing_taker(r, port).map(|how| ((*r).clone(), how)));
    let rank = |r: &Record| boot_rank.get(r.boot_id.as_str()).copied();
    let (answer, already) = match (seen, held) {
        (Some(s), Some(h)) if rank(&h.0) <= rank(&s.0) => (Some(h), true),
        (Some(s), _) => (Some(s), false),
        (None, Some(h)) => (Some(h), true),
        (None, None) => (None, false),
    };
    let window = Window {
        upto: answer.as_ref().map_or(window.upto, |(r, _)| r.event.time),
        ..window
    };
    let gaps = gaps(all, &window);
    let Some((r, how)) = answer else {
        for g in &gaps {
            if json {
                writeln!(out, "{}", serde_json::to_string(g)?)?;
            } else {
                writeln!(out, "gap: {}", g.describe(zone))?;
            }
        }
        return Ok(false);
    };
    if json {
        let mut v: serde_json::Value = serde_json::from_str(&record_json(&r, Some(&how))?)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("already_held_at_start".into(), already.into());
            obj.insert("gaps".into(), serde_json::to_value(&gaps)?);
        }
        writeln!(out, "{v}")?;
        return Ok(true);
    }
    let e = &r.event;
    let what = match how {
        How::Listen => format!("listen on {}", endpoint(e)),
        How::Bind => format!("bind to {}", endpoint(e)),
        How::Ephemeral => format!(
            "ephemeral port of an outgoing connection to {}",
            e.daddr
                .map_or("?".to_owned(), |a| format!("{a}:{}", e.dport.unwrap_or(0)))
        ),
    };
    let owner = format!(
        "pid {} ({}{}){}",
        e.pid.map_or("?".to_owned(), |p| p.to_string()),
        // A process names itself: escape what it chose.
        e.comm.as_deref().map_or("?".into(), visible),
        e.cmdline.as_deref().map_or(String::new(), |c| format!(
            ": {}",
            visible(&one_line(c, 100))
        )),
        unit(e.cgroup.as_deref()).map_or(String::new(), |u| format!(" in {}", visible(&u)))
    );
    if already {
        writeln!(
            out,
            "port {port} was first seen since the recorder started at {} (boot {}): already held then by {owner}: {what}",
            date_ms_marked(e.time, zone),
            &r.boot_id,
        )?;
    } else {
        writeln!(
            out,
            "port {port} was first taken at {} (boot {}) by {owner}: {what}",
            date_ms_marked(e.time, zone),
            &r.boot_id,
        )?;
    }
    for g in &gaps {
        writeln!(out, "gap: {}", g.describe(zone))?;
    }
    Ok(true)
}

#[cfg(test)]
#[path = "first_tests.rs"]
mod tests;
