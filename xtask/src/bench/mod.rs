//! `cargo xtask bench`: what tracing with portwatch costs, against no tracer
//! and against bpftrace on the same tracepoints. Prints figures; it is not a
//! timed test and CI does not run it.
//!
//! Everything runs in a private network namespace (wide ephemeral range,
//! tcp_tw_reuse) so the churn never exhausts ports and sock_diag sees only
//! the benchmark's sockets. Throughput samples are taken in interleaved
//! rounds (none, trace, aggregate, serve, bpftrace, none, ...) and compared per
//! round, so a machine whose load drifts skews every variant alike.
//!
//! `--pipeline` measures portwatch's userspace path alone (pwpipe: no
//! kernel, no root); the full run ends with it too.

mod kernel;
mod pipeline;
mod report;
mod sweep;
mod tracer;

use std::{collections::BTreeMap, fs, path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, Ctx};
use tracer::Tracer;

/// Options of `cargo xtask bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Interleaved rounds; each runs every tracer once per workload.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Length of each churn sample, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Client threads (and as many server threads) in the churn.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Benchmark this portwatch binary instead of the release build (to
    /// compare an older build: before/after figures).
    #[arg(long, value_name = "PATH")]
    pub portwatch: Option<PathBuf>,
    /// Leave out the bpftrace comparison.
    #[arg(long)]
    pub no_bpftrace: bool,
    /// Only the userspace path on synthetic records (pwpipe): no kernel,
    /// no root, about a minute.
    #[arg(long)]
    pub pipeline: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    None,
    Trace,
    Aggregate,
    /// The exporter (`serve`, aggregate mode in the kernel), scraped once at
    /// the end.
    Serve,
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Trace => "trace --json",
            Mode::Aggregate => "aggregate",
            Mode::Serve => "serve",
            Mode::Bpftrace => "bpftrace",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Closer {
    Client,
    Server,
}

impl Closer {
    fn arg(self) -> &'static str {
        match self {
            Closer::Client => "client",
            Closer::Server => "server",
        }
    }
}

/// One churn sample.
#[derive(Clone, Debug, Default)]
struct Sample {
    cps: f64,
    /// Events the tracer reported (whole machine, attach to stop).
    events: Option<u64>,
    lost: Option<u64>,
    /// portwatch: records that crossed the ring buffer.
    ring_events: Option<u64>,
    /// portwatch: lost events by reason (ring buffer, recursion, inferred).
    lost_by_reason: Option<(u64, u64, u64)>,
    /// Tracer CPU seconds (user + system) during the workload.
    cpu_s: Option<f64>,
    /// Tracer peak RSS, KiB.
    hwm_kib: Option<u64>,
}

/// What the benchmark runs: binaries, namespace, scratch directory.
struct Env {
    portwatch: PathBuf,
    pwload: PathBuf,
    pwpipe: PathBuf,
    netns: Netns,
    dir: PathBuf,
    args: BenchArgs,
    bpftrace: Option<PathBuf>,
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Self> {
        let name = format!("pwbench-{}", std::process::id());
        util::output(Command::new("ip").args(["netns", "add", &name]))
            .context("cannot create the benchmark's network namespace (needs iproute2)")?;
        let ns = Netns { name };
        util::output(ns.cmd("sh").args([
            "-c",
            "ip link set lo up && \
             sysctl -qw net.ipv4.ip_local_port_range='1024 65535' && \
             sysctl -qw net.ipv4.tcp_tw_reuse=1 && \
             sysctl -qw net.ipv4.tcp_max_tw_buckets=1048576",
        ]))
        .context("cannot configure the benchmark's network namespace")?;
        Ok(ns)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `program` run inside the namespace. nsenter switches only the network
    /// namespace and execs, so the child's pid is the program's.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// bpftrace attached to the same tracepoints as portwatch, one line per
/// event, as someone without portwatch would write it.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sock:inet_sock_set_state
{
  printf("%llu state %d %s %d %d %d %d -> %d\n", nsecs, pid, comm, args->family,
         args->sport, args->dport, args->oldstate, args->newstate);
}
tracepoint:syscalls:sys_enter_bind
{
  $sa = (struct sockaddr_in *)args->umyaddr;
  @bind[tid] = (uint64)$sa->sin_family << 16 | bswap($sa->sin_port);
}
tracepoint:syscalls:sys_exit_bind
/@bind[tid]/
{
  printf("%llu bind %d %s %d %d ret=%d\n", nsecs, pid, comm, @bind[tid] >> 16,
         @bind[tid] & 0xffff, args->ret);
  delete(@bind[tid]);
}
tracepoint:syscalls:sys_enter_connect
{
  $sa = (struct sockaddr_in *)args->uservaddr;
  @conn[tid] = (uint64)$sa->sin_family << 16 | bswap($sa->sin_port);
}
tracepoint:syscalls:sys_exit_connect
/@conn[tid]/
{
  printf("%llu connect %d %s %d %d ret=%d\n", nsecs, pid, comm, @conn[tid] >> 16,
         @conn[tid] & 0xffff, args->ret);
  delete(@conn[tid]);
}
END
{
  clear(@bind);
  clear(@conn);
}
"#;

pub fn bench(ctx: &Ctx, args: BenchArgs) -> Result<()> {
    let release = ctx.root.join("target").join("release");
    if args.pipeline {
        util::run(
            &mut ctx.cargo(["build", "--release", "--package", "portwatch-bench"]),
            "fix the build errors above",
        )?;
        println!("\n{}", pipeline::run(&release.join("pwpipe"), 5)?);
        return Ok(());
    }
    if !util::is_root() {
        bail!("the benchmark loads eBPF programs and creates a network namespace: run it as root");
    }
    if args.rounds == 0 || args.seconds <= 0.0 || args.threads == 0 {
        bail!("--rounds, --seconds and --threads must be positive");
    }
    util::run(
        &mut ctx.cargo([
            "build",
            "--release",
            "--package",
            "portwatch",
            "--package",
            "portwatch-bench",
        ]),
        "fix the build errors above",
    )?;
    let portwatch = args
        .portwatch
        .clone()
        .unwrap_or_else(|| release.join("portwatch"));
    let bpftrace = if args.no_bpftrace {
        None
    } else {
        let found = util::which("bpftrace");
        if found.is_none() {
            eprintln!("bench: bpftrace not found (`apt-get install bpftrace`); leaving it out");
        }
        found
    };
    let dir = ctx.root.join("target").join("bench");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::write(dir.join("events.bt"), BPFTRACE_SCRIPT)?;
    let env = Env {
        portwatch,
        pwload: release.join("pwload"),
        pwpipe: release.join("pwpipe"),
        netns: Netns::create()?,
        dir,
        args,
        bpftrace,
    };
    run(&env)
}

fn run(env: &Env) -> Result<()> {
    let a = &env.args;
    let started = Instant::now();
    let mut modes = vec![Mode::None, Mode::Trace, Mode::Aggregate, Mode::Serve];
    if env.bpftrace.is_some() {
        modes.push(Mode::Bpftrace);
    }
    let closers = [Closer::Client, Closer::Server];
    eprintln!(
        "bench: {} rounds x {} workloads x {} tracers, {} s each, {} client threads; portwatch {}",
        a.rounds,
        closers.len(),
        modes.len(),
        a.seconds,
        a.threads,
        env.portwatch.display()
    );
    // Warm up caches, the namespace's TIME_WAIT table and the CPU governor.
    churn(env, Mode::None, Closer::Client, None, 1.0)?;

    let mut samples: BTreeMap<(Closer, Mode), Vec<Sample>> = BTreeMap::new();
    for round in 1..=a.rounds {
        for closer in closers {
            for &mode in &modes {
                let s = churn(env, mode, closer, None, a.seconds)?;
                eprintln!(
                    "bench: round {round}/{} {:<6} closes, {:<12} {:>9.0} conn/s{}",
                    a.rounds,
                    closer.arg(),
                    mode.name(),
                    s.cps,
                    s.lost.map_or(String::new(), |l| format!(
                        ", {l} of {} events lost",
                        s.events.unwrap_or(0) + l
                    ))
                );
                samples.entry((closer, mode)).or_default().push(s);
            }
        }
    }

    // The tax on unrelated syscalls: getppid() with and without portwatch.
    let mut tax: Vec<(f64, f64)> = Vec::new();
    for _ in 0..a.rounds.max(3) {
        let without = syscall_ns(env, None)?;
        let with = syscall_ns(env, Some(Mode::Aggregate))?;
        eprintln!("bench: getppid {without:.1} ns/call without, {with:.1} with portwatch");
        tax.push((without, with));
    }

    // Zero-loss capacity of the full trace: paced client-closes churn,
    // swept up from a fifth of the untraced rate, then bisected.
    let base = median(
        samples
            .get(&(Closer::Client, Mode::None))
            .map(|v| v.iter().map(|s| s.cps).collect())
            .unwrap_or_default(),
    );
    let capacity = sweep::sweep(base, |rate| {
        let s = churn(env, Mode::Trace, Closer::Client, Some(rate), a.seconds)?;
        let (ring, recursion, inferred) = s.lost_by_reason.unwrap_or((s.lost.unwrap_or(0), 0, 0));
        let p = sweep::Point {
            rate,
            events_per_s: s.events.unwrap_or(0) as f64 / a.seconds,
            lost: ring,
            other: recursion + inferred,
        };
        eprintln!(
            "bench: paced {rate:.0} conn/s under trace: {:.0} events/s, {} lost in the ring, {} recursion misses and inferred",
            p.events_per_s, p.lost, p.other
        );
        Ok(p)
    })?;

    // In-kernel cost per program from BPF run-time statistics.
    let kernel = kernel::kernel_costs(
        env,
        &modes
            .iter()
            .copied()
            .filter(|m| *m != Mode::Serve)
            .collect::<Vec<_>>(),
    )?;

    // The userspace path alone, on the same machine.
    let userspace = pipeline::run(&env.pwpipe, 3)?;

    print!(
        "{}",
        report::report(
            &env.args,
            &modes,
            &closers,
            &report::Results {
                samples: &samples,
                tax: &tax,
                capacity: &capacity,
                kernel: &kernel,
                userspace: &userspace,
            },
        )
    );
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn churn(env: &Env, mode: Mode, closer: Closer, rate: Option<f64>, seconds: f64) -> Result<Sample> {
    let tracer = Tracer::start(env, mode, "tracer")?;
    let cpu0 = tracer.as_ref().and_then(Tracer::cpu_s);
    let mut cmd = env.netns.cmd(&env.pwload);
    cmd.args(["churn", "--closer", closer.arg()])
        .args(["--threads", &env.args.threads.to_string()])
        .args(["--seconds", &seconds.to_string()]);
    if let Some(r) = rate {
        cmd.args(["--rate", &format!("{r:.0}")]);
    }
    let result = util::output(&mut cmd);
    let mut sample = Sample::default();
    if let Some(t) = &tracer {
        sample.cpu_s = t.cpu_s().zip(cpu0).map(|(b, a)| b - a);
        sample.hwm_kib = t.hwm_kib();
    }
    let stopped = tracer.map(Tracer::stop).transpose();
    let out = result?;
    if let Some(r) = stopped? {
        sample.events = r.events;
        sample.lost = r.lost;
        sample.ring_events = r.ring_events;
        sample.lost_by_reason = r.lost_by_reason;
    }
    sample.cps = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cps="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("pwload printed no rate: {out}"))?;
    Ok(sample)
}

fn syscall_ns(env: &Env, mode: Option<Mode>) -> Result<f64> {
    let tracer = match mode {
        Some(m) => Tracer::start(env, m, "syscall")?,
        None => None,
    };
    let out = util::output(Command::new(&env.pwload).args(["syscall", "--seconds", "1"]));
    if let Some(t) = tracer {
        t.stop()?;
    }
    let out = out?;
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("ns_per_call="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("pwload printed no ns/call: {out}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
