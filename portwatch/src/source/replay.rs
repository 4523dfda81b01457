//! Replays a trace recorded with `portwatch trace --json`, so that filters,
//! aggregation and output can be rerun on another machine, without root.

use std::io::BufRead;

use serde::Deserialize;

use crate::aggregate::PortRange;
use crate::model::Event;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the recording: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: not a portwatch JSON event ({source}); record with `portwatch trace --json > FILE`")]
    Parse {
        line: usize,
        source: serde_json::Error,
    },
}

/// A recording: its events in order, and from its summary line the
/// ephemeral port range of the machine it was made on (for capacity
/// figures) and when the recorded run began and ended (wall-clock ns).
#[derive(Debug, Default)]
pub struct Recording {
    pub events: Vec<Event>,
    pub range: Option<PortRange>,
    pub run: Option<(i128, i128)>,
}

#[derive(Deserialize)]
struct RecordedSummary {
    ephemeral_range: Option<PortRange>,
    #[serde(default, with = "crate::timefmt::rfc3339_ns_opt")]
    time: Option<i128>,
    duration_s: Option<f64>,
}

/// Reads a recording. Summary lines are not replayed: replay makes its own.
pub fn read(input: impl BufRead) -> Result<Recording, ReplayError> {
    let mut out = Recording::default();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.contains("\"event\":\"summary\"") {
            if let Ok(s) = serde_json::from_str::<RecordedSummary>(trimmed) {
                out.range = out.range.or(s.ephemeral_range);
                if let (Some(end), Some(d)) = (s.time, s.duration_s) {
                    // A recording is anyone's to write: a duration that is
                    // negative or past what a time can hold is ignored.
                    let start = (d >= 0.0)
                        .then(|| end.checked_sub((d * 1e9) as i128))
                        .flatten();
                    out.run = start.map(|start| (start, end));
                }
            }
            continue;
        }
        let ev: Event = serde_json::from_str(trimmed).map_err(|source| ReplayError::Parse {
            line: i + 1,
            source,
        })?;
        out.events.push(ev);
    }
    Ok(out)
}
