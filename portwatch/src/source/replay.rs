//! Replays a trace recorded with `portwatch trace --json`, so that filters,
//! aggregation and output can be rerun on another machine, without root.

use std::io::BufRead;

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

/// The recorded events, in order. Summary lines are skipped: replay makes its own.
pub fn read(input: impl BufRead) -> Result<Vec<Event>, ReplayError> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.contains("\"event\":\"summary\"") {
            continue;
        }
        let ev: Event = serde_json::from_str(trimmed).map_err(|source| ReplayError::Parse {
            line: i + 1,
            source,
        })?;
        out.push(ev);
    }
    Ok(out)
}
