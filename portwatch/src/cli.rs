//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Trace the socket lifecycle in the kernel and name the processes behind
/// TIME_WAIT build-up, ephemeral-port exhaustion and port conflicts.
#[derive(Debug, Parser)]
#[command(name = "portwatch", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream TCP state changes and bind()/connect() outcomes, attributed to
    /// processes, then print a per-process summary on exit (Ctrl-C, SIGTERM
    /// or --duration). Needs root, or CAP_BPF and CAP_PERFMON.
    ///
    /// It picks, per kind of event, the cheapest hook the kernel accepts
    /// (fexit/fentry, then kprobes, then syscall tracepoints) and says which
    /// on stderr. PORTWATCH_HOOKS=kprobe,tracepoint (any of fexit, kprobe,
    /// tracepoint) narrows the choice.
    Trace(TraceArgs),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Write JSON Lines (one object per event, then a "summary" object).
    #[arg(long)]
    pub json: bool,

    /// Only sockets with this port at either end (repeatable). Filtered in the kernel.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only events of this process (its tgid). Filtered in the kernel.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,

    /// Only events of processes with this command name (as in /proc/PID/comm).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,

    /// Print only failed bind() and connect() calls (and lost events); the
    /// summary still counts everything selected.
    #[arg(long)]
    pub errors: bool,

    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,

    /// Print nothing but the summary at the end (aggregate-only mode).
    #[arg(long)]
    pub summary_only: bool,

    /// Rerun filters, aggregation and output on a recording made with
    /// `portwatch trace --json > FILE` instead of tracing the kernel.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,

    /// Colour the terminal output.
    #[arg(long, value_enum, default_value_t)]
    pub color: ColorChoice,

    /// Ring-buffer size in bytes: a power of two, at least 4096 (testing aid).
    #[arg(long, hide = true, value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,

    /// Delay the reader's first drain by this many milliseconds (testing aid
    /// for the lost-event accounting).
    #[arg(long, hide = true, value_name = "MS")]
    pub stall_reader_ms: Option<u64>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!(
            "duration must be a positive number of seconds, not {s}"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!(
            "ring size must be a power of two of at least 4096 bytes, not {n}"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_repeated_ports_and_rejects_bad_values() {
        let cli = Cli::try_parse_from([
            "portwatch",
            "trace",
            "--port",
            "1433",
            "--port",
            "80",
            "--json",
        ])
        .expect("valid");
        let Command::Trace(t) = cli.command;
        assert_eq!(t.ports, vec![1433, 80]);
        assert!(t.json);
        assert!(Cli::try_parse_from(["portwatch", "trace", "--port", "0"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "trace", "--port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "trace", "--duration", "-1"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "trace", "--ring-bytes", "5000"]).is_err());
        let ok = Cli::try_parse_from(["portwatch", "trace", "--duration", "1.5"]).expect("valid");
        let Command::Trace(t) = ok.command;
        assert_eq!(t.duration, Some(std::time::Duration::from_millis(1500)));
    }
}
