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

impl Cli {
    /// The command line, with the checks clap cannot make alone (how many
    /// `--port` values the kernel can hold); a bad value exits 2 with a
    /// message saying what is allowed, as clap's own errors do.
    pub fn parse_checked() -> Cli {
        let cli = Cli::parse();
        if let Err(e) = cli.check() {
            e.exit()
        }
        cli
    }

    /// [`Cli::parse_checked`] without exiting (tests, fuzzing).
    pub fn try_parse_checked_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        cli.check()?;
        Ok(cli)
    }

    fn check(&self) -> Result<(), clap::Error> {
        use clap::CommandFactory as _;
        if let Command::Trace(t) = &self.command {
            let distinct = t.ports.iter().collect::<std::collections::BTreeSet<_>>();
            if distinct.len() > MAX_PORTS {
                return Err(Cli::command().error(
                    clap::error::ErrorKind::TooManyValues,
                    format!(
                        "--port was given {} different ports; the kernel's port filter holds at most {MAX_PORTS}: trace without --port and select ports from the --json output instead",
                        distinct.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The most distinct `trace --port` values: the kernel's PORT_FILTER map
/// holds 256 (portwatch-ebpf/src/common.rs).
pub const MAX_PORTS: usize = 256;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream TCP state changes and bind()/connect() outcomes, attributed to
    /// processes, then print a per-process summary on exit (Ctrl-C, SIGTERM
    /// or --duration). Needs root, or CAP_BPF and CAP_PERFMON.
    ///
    /// It picks, per kind of event, the cheapest hook the kernel accepts
    /// (fexit/fentry, then kprobes, then cgroup hooks for bind and the state
    /// tracepoint for connect outcomes, then syscall tracepoints) and says
    /// which on stderr. PORTWATCH_HOOKS=kprobe,tracepoint (any of fexit,
    /// kprobe, cgroup, tracepoint) narrows the choice.
    Trace(TraceArgs),
    /// Every socket on a port right now (or towards a remote end, or in a
    /// state), TCP and UDP, IPv4 and IPv6, TIME_WAIT included, with every
    /// process holding it, its user, command line and systemd unit or
    /// container; --count counts them by state and owner, --to shows what
    /// occupies a destination's ephemeral ports. Works without root (owners
    /// of other users' sockets are then hidden).
    Who(WhoArgs),
    /// Record port ownership to a crash-safe journal until stopped: binds,
    /// listens, the local port of each outgoing connection, closes and
    /// failures, with boot id and process identity. Meant to run from boot
    /// (see install-service); `history` queries what it wrote.
    Record(RecordArgs),
    /// Query the recorder's journal: which process took a port, when, and how.
    /// Example: `portwatch history --port 1433 --boot 0 --first`.
    History(HistoryArgs),
    /// Install and enable the systemd unit that runs `portwatch record` at
    /// boot, before the network and ordinary services start.
    InstallService(InstallServiceArgs),

    /// Check what this kernel lets portwatch hook, and the port configuration:
    /// services listening inside the ephemeral range, TIME_WAIT pressure,
    /// TIME_WAIT reuse.
    ///
    /// Loads portwatch's eBPF programs the way `trace` would, one variant at a
    /// time, detaching each again, and reports which hook `trace` would use
    /// per kind of event and why the others do not load (needs root; without
    /// it the hooks are skipped and the rest is still checked). Then reads
    /// net.ipv4.ip_local_port_range, ip_local_reserved_ports and the TIME_WAIT
    /// sysctls, lists listening sockets (sock_diag) with their processes, and
    /// prints findings with a severity and a fix each.
    ///
    /// The port checks cover portwatch's own network namespace. Run with
    /// sudo for the hook probes and for the owners of other users' sockets.
    Doctor(DoctorArgs),

    /// Reserve ports so that the kernel never hands them out as ephemeral
    /// (client) ports: adds them to net.ipv4.ip_local_reserved_ports.
    ///
    /// The ports are merged with those already reserved and written back in
    /// the kernel's canonical form (sorted, ranges joined). Use this for a
    /// service whose port lies inside net.ipv4.ip_local_port_range, so that an
    /// outgoing connection cannot take the port while the service is down or
    /// still starting. Reserving does not stop a program from binding the
    /// port explicitly. The setting is per network namespace and lost at
    /// reboot unless --persist is given. Needs root (except --dry-run).
    ///
    /// Examples: `portwatch reserve 1433`, `portwatch reserve 1433 40000-40010
    /// --persist`, `portwatch reserve 5432 --dry-run --persist`.
    Reserve(ReserveArgs),

    /// Explain an application's port error: what the kernel did, why the
    /// message misleads, what this machine shows, and how to fix it.
    ///
    /// Recognises the messages of Java, .NET and Winsock (10048, 10049,
    /// 10055, 10013), Python, Go, Node.js, nginx, SQL Server (17182, "Tcp port
    /// is already in use"), PostgreSQL, and the plain errno names and numbers
    /// (EADDRINUSE, EADDRNOTAVAIL, 98, 99). Then looks at this machine the way
    /// `who` and `doctor` do: the sockets on the port the message names, the
    /// ephemeral range and reserved ports, the sockets towards the
    /// destination, TIME_WAIT. For a message only Windows produces, it lists
    /// the commands to run on the Windows machine instead.
    ///
    /// The text is the argument, or standard input when the argument is `-`
    /// or absent and standard input is not a terminal, so a log line can be
    /// piped in: `journalctl -u app | grep -m1 Exception | portwatch explain`.
    ///
    /// Exit status: 0 when the message was recognised; 1 when it was not
    /// (what could be read from it, port, address, errno, is still printed)
    /// or on an error; 2 on bad usage.
    Explain(ExplainArgs),

    /// Print a shell completion script: `portwatch completions bash >
    /// /etc/bash_completion.d/portwatch` (the Debian package installs them
    /// for bash, zsh and fish).
    Completions(CompletionsArgs),

    /// Write the man pages (portwatch.1 and one per subcommand) into a
    /// folder; for packagers.
    #[command(hide = true)]
    Manpages(ManpagesArgs),

    /// A full-screen live view: per process, the TIME_WAIT sockets it holds
    /// now, TIME_WAIT entries and connects per second, bind and connect
    /// failures; per destination, the ephemeral ports in use against its
    /// namespace's range and the time to exhaustion; recent failures with
    /// the holder of the port. Keys: q quit, s/d sort, / filter, p pause.
    /// Needs what `trace` needs.
    #[cfg(target_os = "linux")]
    Top(TopArgs),

    /// Serve Prometheus metrics at http://LISTEN/metrics (and /healthz):
    /// TCP transitions, TIME_WAIT entries, bind and connect failures by
    /// errno, lost events by reason; TIME_WAIT held now by process and
    /// destination; each destination's ephemeral pool. Process series are
    /// labelled by command, unit, container and pod; at most --top-k
    /// processes and destinations get series of their own, the rest sum
    /// into one labelled `other`. Needs what `trace` needs.
    #[cfg(target_os = "linux")]
    Serve(ServeArgs),
}

#[cfg(target_os = "linux")]
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to serve on. Loopback by default: expose it
    /// deliberately (0.0.0.0:9464 in a pod that a Service fronts).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,

    /// Processes and destinations that get series of their own, per metric.
    #[arg(long, value_name = "K", default_value_t = 20, value_parser = parse_top_k)]
    pub top_k: u64,

    /// Seconds between socket-table censuses (pools, TIME_WAIT exits),
    /// 0.1 to 3600.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: std::time::Duration,

    /// Only sockets of this network namespace (a container's): its inode,
    /// a pid in it, or a path such as /run/netns/NAME. Filtered in the kernel.
    #[arg(long, value_name = "NETNS", value_parser = parse_netns)]
    pub netns: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// Where to write them (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

#[cfg(target_os = "linux")]
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one snapshot after one refresh and exit (a text screen, or
    /// JSON with --json), for scripts.
    #[arg(long)]
    pub once: bool,

    /// With --once: one JSON object, {"processes", "destinations", "failures", ...}.
    #[arg(long, requires = "once")]
    pub json: bool,

    /// Seconds between refreshes (and socket-table censuses), 0.1 to 3600.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: std::time::Duration,

    /// Only sockets of this network namespace (a container's): its inode,
    /// a pid in it, or a path such as /run/netns/NAME. Filtered in the kernel.
    #[arg(long, value_name = "NETNS", value_parser = parse_netns)]
    pub netns: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The error message; several words are joined with spaces. `-`, or
    /// nothing with standard input not a terminal, reads standard input.
    #[arg(value_name = "ERROR TEXT")]
    pub text: Vec<String>,

    /// Write one JSON object: the explanation as data, with "checks",
    /// "findings" (doctor's) and "sockets" (who's) from this machine.
    #[arg(long)]
    pub json: bool,

    /// The port to look at when the message names none (a Python traceback
    /// rarely does), or instead of the one it names.
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    pub port: Option<u16>,

    /// Explain the message only; do not look at this machine (for a message
    /// from another machine).
    #[arg(long)]
    pub no_checks: bool,

    /// The recorder's journal, to name who created a socket that has no
    /// owner any more. Skipped if absent.
    #[arg(long, value_name = "DIR", default_value = crate::journal::DEFAULT_DIR, hide = true)]
    pub journal: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FsyncChoice {
    /// fdatasync after every record: power loss loses nothing written.
    Always,
    /// fdatasync at most once a second: power loss loses up to a second.
    #[default]
    Interval,
    /// Leave it to the kernel's writeback (about 30 s).
    Never,
}

impl FsyncChoice {
    pub fn policy(self) -> crate::journal::FsyncPolicy {
        match self {
            FsyncChoice::Always => crate::journal::FsyncPolicy::Always,
            FsyncChoice::Interval => {
                crate::journal::FsyncPolicy::Interval(std::time::Duration::from_secs(1))
            }
            FsyncChoice::Never => crate::journal::FsyncPolicy::Never,
        }
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The journal folder (created 0700; segments are 0600).
    #[arg(long, value_name = "DIR", default_value = crate::journal::DEFAULT_DIR)]
    pub journal: PathBuf,

    /// Cap on the journal's total size; the oldest segments are deleted to
    /// stay under it. Accepts K, M and G suffixes (MiB-style).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub max_size: u64,

    /// When records are forced to disk.
    #[arg(long, value_enum, default_value_t)]
    pub fsync: FsyncChoice,

    /// Stop after this many seconds (default: until SIGTERM or Ctrl-C).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The journal folder `portwatch record` writes.
    #[arg(long, value_name = "DIR", default_value = crate::journal::DEFAULT_DIR)]
    pub journal: PathBuf,

    /// Only records with this port at either end (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<u16>,

    /// Only records of this process.
    #[arg(long, value_name = "PID", value_parser = parse_pid)]
    pub pid: Option<u32>,

    /// Only records of processes with this command name.
    #[arg(long, value_name = "NAME", value_parser = parse_comm)]
    pub comm: Option<String>,

    /// Only this boot: 0 = the current one, -1 = the one before, or a boot id
    /// (or its prefix) from --list-boots.
    #[arg(long, value_name = "BOOT", allow_hyphen_values = true, value_parser = parse_boot)]
    pub boot: Option<String>,

    /// Only records at or after this time: RFC 3339 or a duration ago (15m, 2h, 3d).
    #[arg(long, value_name = "WHEN", value_parser = parse_when_arg)]
    pub since: Option<String>,

    /// Only records at or before this time: RFC 3339 or a duration ago.
    #[arg(long, value_name = "WHEN", value_parser = parse_when_arg)]
    pub until: Option<String>,

    /// Print only the first record that took the --port given (by bind,
    /// listen, or as the ephemeral port of an outgoing connection), and how.
    #[arg(long)]
    pub first: bool,

    /// List the boots the journal covers, with their offsets for --boot.
    #[arg(long)]
    pub list_boots: bool,

    /// JSON Lines with the trace schema's names plus boot_id and mono_ns.
    #[arg(long)]
    pub json: bool,

    /// Show times in UTC (marked `Z`) instead of local time (marked with its
    /// offset from UTC, e.g. `+01:00`). JSON is always UTC.
    #[arg(long)]
    pub utc: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("`{s}` is not a size: give a whole number with K, M or G, like 64M")
    })?;
    let bytes = n.checked_mul(mult).ok_or_else(|| {
        format!(
            "journal size {s} is more than a disk holds; give at most {}G",
            u64::MAX >> 30
        )
    })?;
    if bytes < 1 << 20 {
        return Err(format!("journal size {s} must be at least 1M, like 64M"));
    }
    Ok(bytes)
}

#[derive(Debug, Args)]
pub struct InstallServiceArgs {
    /// Print the unit and the systemctl commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,

    /// Also start the recorder now.
    #[arg(long)]
    pub now: bool,

    /// The journal folder the recorder writes.
    #[arg(long, value_name = "DIR", default_value = crate::journal::DEFAULT_DIR)]
    pub journal: PathBuf,

    /// The portwatch binary the unit runs (default: this one).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,

    /// Where to write the unit.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/etc/systemd/system",
        hide = true,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub unit_dir: String,
}

#[derive(Debug, Args)]
pub struct WhoArgs {
    /// The local port to look up; without it, every socket the other
    /// options select.
    #[arg(value_parser = parse_port)]
    pub port: Option<u16>,

    /// Only sockets whose remote end is this: ADDR, ADDR:PORT, [IPv6]:PORT
    /// or :PORT.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_remote)]
    pub remote: Option<crate::filter::Remote>,

    /// Only sockets in this state (repeatable): LISTEN, ESTABLISHED,
    /// TIME_WAIT, CLOSE_WAIT, SYN_SENT, ... (any case, `-` or `_`; ss's
    /// ESTAB too), or UNCONN for unconnected UDP sockets.
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<String>,

    /// Count the sockets by state and owner instead of listing them (for a
    /// TIME_WAIT socket, the process the journal saw create it).
    #[arg(long)]
    pub count: bool,

    /// A destination that ran out of ports (connect() fails with
    /// EADDRNOTAVAIL): the TCP sockets towards ADDR:PORT whose local port
    /// lies in the ephemeral range, and how much of the range they hold.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_remote)]
    pub to: Option<crate::filter::Remote>,

    /// Write one JSON object: {"port", "sockets", "to", "counts", "missing"}.
    #[arg(long)]
    pub json: bool,

    /// Look in this network namespace (a container's) instead of this one:
    /// a pid in it, its inode (`ls -iL /proc/PID/ns/net`), or a path such as
    /// /run/netns/NAME. No nsenter needed.
    #[arg(long, value_name = "NETNS", value_parser = parse_netns)]
    pub netns: Option<String>,

    /// The recorder's journal, to name who created sockets that have no
    /// owner any more (TIME_WAIT, orphans). Skipped if absent.
    #[arg(long, value_name = "DIR", default_value = crate::journal::DEFAULT_DIR)]
    pub journal: PathBuf,
}

fn parse_remote(s: &str) -> Result<crate::filter::Remote, String> {
    crate::filter::Remote::parse(s)
}

fn parse_state(s: &str) -> Result<String, String> {
    crate::filter::parse_state(s)
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Write one JSON object: {"capabilities": ..., "port_config": ...,
    /// "findings": [{"severity", "message", "fix"}]}.
    #[arg(long)]
    pub json: bool,

    /// Colour the findings by severity.
    #[arg(long, value_enum, default_value_t)]
    pub color: ColorChoice,

    /// Print the facts the findings are judged from, as JSON, and nothing
    /// else (for recording a machine's facts as a test fixture).
    #[arg(long, hide = true, conflicts_with = "json")]
    pub facts: bool,

    /// Check the port configuration of this network namespace (a
    /// container's) instead of this one: a pid in it, its inode, or a path
    /// such as /run/netns/NAME.
    #[arg(long, value_name = "NETNS", value_parser = parse_netns)]
    pub netns: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReserveArgs {
    /// Ports to reserve: PORT or LOW-HIGH (inclusive), 1 to 65535; several
    /// may be given, separated by spaces or commas.
    #[arg(value_name = "PORT[-PORT]", required = true, value_parser = parse_ports)]
    pub ports: Vec<crate::sysctl::PortSet>,

    /// Also write the merged value to /etc/sysctl.d/90-portwatch-reserved-ports.conf
    /// so that it is applied again at boot.
    #[arg(long)]
    pub persist: bool,

    /// Print the current and the new value (and the file --persist would
    /// write) without changing anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Where --persist writes (testing aid).
    #[arg(long, hide = true, value_name = "FILE")]
    pub persist_file: Option<PathBuf>,
}

fn parse_ports(s: &str) -> Result<crate::sysctl::PortSet, String> {
    crate::sysctl::parse_user_ports(s).map_err(|e| e.to_string())
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
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<u16>,

    /// Only events of this process (its tgid). Filtered in the kernel.
    #[arg(long, value_name = "PID", value_parser = parse_pid)]
    pub pid: Option<u32>,

    /// Only events of processes with this command name (as in /proc/PID/comm).
    #[arg(long, value_name = "NAME", value_parser = parse_comm)]
    pub comm: Option<String>,

    /// Only sockets of this network namespace (a container's): its inode
    /// (`ls -iL /proc/PID/ns/net`), a pid in it, or a path such as
    /// /run/netns/NAME. Filtered in the kernel.
    #[arg(long, value_name = "NETNS", value_parser = parse_netns)]
    pub netns: Option<String>,

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
    #[arg(long, hide = true, value_name = "MS", value_parser = parse_stall_ms)]
    pub stall_reader_ms: Option<u64>,

    /// Hold the reader back until this file exists (testing aid: processes
    /// then exit before their events are read).
    #[arg(long, hide = true, value_name = "FILE")]
    pub stall_reader_until: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s.parse().map_err(|_| {
        format!("`{s}` is not a number of seconds: give a positive number, like 30 or 1.5")
    })?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!(
            "duration must be a positive number of seconds, not {s}"
        ));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| {
        format!(
            "duration {s} is too large; give at most {} seconds",
            u64::MAX
        )
    })
}

/// The largest `--ring-bytes`: the kernel maps the ring twice, and more
/// than this is memory no trace needs.
const MAX_RING_BYTES: u32 = 1 << 28;

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| {
        format!("`{s}` is not a byte count: give a power of two from 4096 to {MAX_RING_BYTES}")
    })?;
    if !(4096..=MAX_RING_BYTES).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "ring size must be a power of two from 4096 to {MAX_RING_BYTES} bytes, not {n}"
        ));
    }
    Ok(n)
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "`{s}` is not a port: give a number from 1 to 65535"
        )),
    }
}

fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "`{s}` is not a process id: give a number from 1 to {}",
            u32::MAX
        )),
    }
}

fn parse_stall_ms(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .ok()
        .filter(|ms| *ms <= 600_000)
        .ok_or_else(|| format!("`{s}` is not a delay: give milliseconds in 0..=600000"))
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("give a command name as /proc/PID/comm shows it, not an empty string".into());
    }
    Ok(s.to_owned())
}

/// `--top-k`: 1..=1000 series per metric.
#[cfg(target_os = "linux")]
fn parse_top_k(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .ok()
        .filter(|k| (1..=1000).contains(k))
        .ok_or_else(|| format!("`{s}` is not a number of series: give 1..=1000"))
}

/// `--interval`: a period a timer can keep, neither a busy loop nor one
/// nobody would wait for.
#[cfg(target_os = "linux")]
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if !(0.1..=3600.0).contains(&d.as_secs_f64()) {
        return Err(format!("the interval must be 0.1 to 3600 seconds, not {s}"));
    }
    Ok(d)
}

fn parse_netns(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err(
            "give a namespace inode (ls -iL /proc/PID/ns/net), a pid in it, or a path such as /run/netns/NAME"
                .into(),
        );
    }
    Ok(s.to_owned())
}

/// `--boot`: 0 or a negative offset, or a boot id or its prefix (letters,
/// digits and dashes, as --list-boots shows them).
fn parse_boot(s: &str) -> Result<String, String> {
    const ALLOWED: &str =
        "use 0 for this boot, -1 for the one before, and so on, or a boot id (or its prefix) from --list-boots";
    if let Ok(n) = s.parse::<i64>() {
        return if n <= 0 {
            Ok(s.to_owned())
        } else {
            Err(format!("{n} is in the future: {ALLOWED}"))
        };
    }
    let id_like = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_alphanumeric());
    if id_like {
        Ok(s.to_owned())
    } else {
        Err(ALLOWED.to_owned())
    }
}

/// `--since`/`--until`: checked here, so that a bad one exits 2 like every
/// other bad value; `history` converts it again against its own clock.
fn parse_when_arg(s: &str) -> Result<String, String> {
    crate::timefmt::parse_when(s, crate::timefmt::now_ns()).map(|_| s.to_owned())
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
        let Command::Trace(t) = cli.command else {
            panic!("trace expected")
        };
        assert_eq!(t.ports, vec![1433, 80]);
        assert!(t.json);
        assert!(Cli::try_parse_from(["portwatch", "trace", "--port", "0"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "trace", "--port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "trace", "--duration", "-1"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "trace", "--ring-bytes", "5000"]).is_err());
        let ok = Cli::try_parse_from(["portwatch", "trace", "--duration", "1.5"]).expect("valid");
        let Command::Trace(t) = ok.command else {
            panic!("trace expected")
        };
        assert_eq!(t.duration, Some(std::time::Duration::from_millis(1500)));
    }

    #[test]
    fn reserve_parses_ports_and_ranges_and_rejects_bad_ones() {
        let cli = Cli::try_parse_from([
            "portwatch",
            "reserve",
            "1433",
            "40000-40010,40020",
            "--persist",
            "--dry-run",
        ])
        .expect("valid");
        let Command::Reserve(r) = cli.command else {
            panic!("not reserve")
        };
        let all: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(all, vec!["1433", "40000-40010,40020"]);
        assert!(r.persist && r.dry_run);
        for bad in ["0", "65536", "40010-40000", "abc", "1-2-3", ""] {
            let e = Cli::try_parse_from(["portwatch", "reserve", bad]).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad}: {e}"
            );
        }
        assert!(Cli::try_parse_from(["portwatch", "reserve"]).is_err());
    }

    #[test]
    fn explain_takes_words_a_dash_or_nothing() {
        let cli = Cli::try_parse_from(["portwatch", "explain", "[Errno", "98]", "--json"])
            .expect("valid");
        let Command::Explain(e) = cli.command else {
            panic!("not explain")
        };
        assert_eq!(e.text, vec!["[Errno", "98]"]);
        assert!(e.json && !e.no_checks);
        for args in [
            &["portwatch", "explain", "-"][..],
            &["portwatch", "explain"],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
    }

    #[test]
    fn doctor_takes_json_and_color() {
        let cli = Cli::try_parse_from(["portwatch", "doctor", "--json", "--color", "never"])
            .expect("valid");
        let Command::Doctor(d) = cli.command else {
            panic!("not doctor")
        };
        assert!(d.json);
        assert_eq!(d.color, ColorChoice::Never);
    }
}
