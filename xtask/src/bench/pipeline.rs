//! The userspace path alone: pwpipe replays synthetic ring records through
//! decode, attribution, the pipeline and JSON output on one thread, with no
//! kernel and no root, and counts heap allocations.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::util;

/// Runs pwpipe `runs` times after its warm-up, echoing its lines on
/// stderr; the summary line to print.
pub fn run(pwpipe: &Path, runs: usize) -> Result<String> {
    eprintln!("bench: userspace path (pwpipe, no kernel), {runs} runs");
    let out = util::output(Command::new(pwpipe).args(["--runs", &runs.to_string()]))?;
    for l in out.lines() {
        eprintln!("bench: {l}");
    }
    let last = out.lines().last().unwrap_or_default();
    summary(last).with_context(|| format!("pwpipe printed no summary: {out}"))
}

/// `median events_per_s=.. events_per_cpu_s=.. allocs_per_event=.. runs=N`
/// in words.
fn summary(line: &str) -> Option<String> {
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(format!(
        "userspace path (pwpipe: decode, attribution, JSON on one thread, no kernel): {:.0} records/s ({:.0} per CPU second), {} heap allocations per record (median of {} runs)",
        field("events_per_s")?,
        field("events_per_cpu_s")?,
        field("allocs_per_event")?,
        field("runs")?
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_pwpipes_median_line() {
        let s = super::summary(
            "median events_per_s=812345 events_per_cpu_s=950000 allocs_per_event=0.00060 runs=5",
        )
        .expect("summary");
        assert_eq!(
            s,
            "userspace path (pwpipe: decode, attribution, JSON on one thread, no kernel): 812345 records/s (950000 per CPU second), 0.0006 heap allocations per record (median of 5 runs)"
        );
        assert_eq!(super::summary("run=1 events=5"), None);
    }
}
