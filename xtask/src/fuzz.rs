//! `cargo xtask fuzz`: runs each cargo-fuzz target of portwatch/fuzz for a
//! given time (libFuzzer's -max_total_time) and reports, per target, how
//! many inputs it ran and whether it crashed.
//!
//! Each target's corpus grows in `portwatch/fuzz/corpus/<target>` (not
//! committed), seeded from `portwatch/fuzz/seeds/<target>`; a crashing input
//! is written to `portwatch/fuzz/artifacts/<target>/`, where
//! `cargo +nightly fuzz run <target> <file>` replays it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, Ctx};

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target for.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub seconds: u64,
    /// Only these targets (default: every one in portwatch/fuzz/Cargo.toml).
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
}

/// One target's run.
struct Outcome {
    target: String,
    runs: Option<u64>,
    crashes: Vec<PathBuf>,
    seconds: f64,
    log: PathBuf,
}

/// The `[[bin]]` names of the fuzz crate's manifest.
fn targets(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(name) = line
                .strip_prefix("name")
                .and_then(|r| r.trim_start().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"'))
            {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// Inputs run, from libFuzzer's output: `Done N runs in S second(s)` when it
/// finished, else the last `#N` status line (a crash stops it early).
fn runs(log: &str) -> Option<u64> {
    let done = log.lines().rev().find_map(|l| {
        l.strip_prefix("Done ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    done.or_else(|| {
        log.lines().rev().find_map(|l| {
            l.strip_prefix('#')?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
    })
}

/// Crash, leak, timeout and out-of-memory inputs in `dir`.
fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                ["crash-", "leak-", "timeout-", "oom-"]
                    .iter()
                    .any(|k| n.starts_with(k))
            })
        })
        .collect();
    out.sort();
    out
}

pub fn fuzz(ctx: &Ctx, args: &FuzzArgs) -> Result<bool> {
    let crate_dir = ctx.root.join("portwatch");
    let fuzz_dir = crate_dir.join("fuzz");
    let manifest = fs::read_to_string(fuzz_dir.join("Cargo.toml"))
        .context("cannot read portwatch/fuzz/Cargo.toml")?;
    let all = targets(&manifest);
    let chosen: Vec<String> = if args.targets.is_empty() {
        all.clone()
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target `{t}`; the targets are: {}", all.join(", "));
            }
        }
        args.targets.clone()
    };
    if util::which("cargo-fuzz").is_none() {
        util::run(
            &mut ctx.cargo(["install", "--locked", "cargo-fuzz"]),
            "install cargo-fuzz by hand: `cargo install cargo-fuzz`",
        )?;
    }
    // One build of every target (sanitizer instrumentation, nightly), so
    // that the time given is spent fuzzing.
    let mut build = ctx.tool(
        "rustup",
        &crate_dir,
        ["run", "nightly", "cargo", "fuzz", "build"],
    );
    util::run(&mut build, "the fuzz targets do not build; see above")?;

    let logs = util::target_dir(&ctx.root).join("fuzz-logs");
    fs::create_dir_all(&logs)?;
    let mut outcomes = Vec::new();
    for target in &chosen {
        let corpus = fuzz_dir.join("corpus").join(target);
        let seeds = fuzz_dir.join("seeds").join(target);
        let found = fuzz_dir.join("artifacts").join(target);
        fs::create_dir_all(&corpus)?;
        fs::create_dir_all(&found)?;
        let before = artifacts(&found);
        let log = logs.join(format!("{target}.log"));
        let mut cmd = ctx.tool(
            "rustup",
            &crate_dir,
            ["run", "nightly", "cargo", "fuzz", "run", target.as_str()],
        );
        cmd.arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-timeout=10")
            .arg("-print_final_stats=1")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        eprintln!(
            "xtask fuzz: {target} for {}s (log: {})",
            args.seconds,
            log.display()
        );
        let started = Instant::now();
        let status = util::status(&mut cmd)?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        let crashes: Vec<PathBuf> = artifacts(&found)
            .into_iter()
            .filter(|a| !before.contains(a))
            .collect();
        if !status.success() && crashes.is_empty() {
            bail!(
                "fuzzing {target} failed ({status}) without leaving a crash input; see {}",
                log.display()
            );
        }
        outcomes.push(Outcome {
            target: target.clone(),
            runs: runs(&text),
            crashes,
            seconds: started.elapsed().as_secs_f64(),
            log,
        });
    }

    eprintln!("\nxtask fuzz: results");
    eprintln!(
        "  {:<16} {:>12} {:>8} {:>7}",
        "target", "runs", "crashes", "time"
    );
    for o in &outcomes {
        eprintln!(
            "  {:<16} {:>12} {:>8} {:>6.0}s",
            o.target,
            o.runs.map_or("?".into(), |r| r.to_string()),
            o.crashes.len(),
            o.seconds
        );
        for c in &o.crashes {
            eprintln!(
                "      crash input {} (replay: cd portwatch && cargo +nightly fuzz run {} {}; log {})",
                c.display(),
                o.target,
                c.display(),
                o.log.display()
            );
        }
    }
    let crashed = outcomes.iter().filter(|o| !o.crashes.is_empty()).count();
    eprintln!("xtask fuzz: {} targets, {crashed} crashed", outcomes.len());
    Ok(crashed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_targets_and_runs() {
        let manifest = "[package]\nname = \"portwatch-fuzz\"\n\n[[bin]]\nname = \"a\"\npath = \"x\"\n\n[dependencies]\nname = \"no\"\n\n[[bin]]\nname = \"b\"\n";
        assert_eq!(targets(manifest), vec!["a", "b"]);
        let done = "#1024\tpulse  cov: 10\n#2048\tNEW cov: 11\nDone 123456 runs in 61 second(s)\n";
        assert_eq!(runs(done), Some(123_456));
        let crashed =
            "#77\tNEW cov: 9 ft: 9\n#80\tREDUCE cov: 9\n==123== ERROR: libFuzzer: deadly signal\n";
        assert_eq!(runs(crashed), Some(80));
        assert_eq!(runs("nothing"), None);
    }
}
