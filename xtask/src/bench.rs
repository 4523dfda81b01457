//! `cargo xtask bench`: what tracing with portwatch costs, against no tracer
//! and against bpftrace on the same tracepoints. Prints figures; it is not a
//! timed test and CI does not run it.
//!
//! Everything runs in a private network namespace (wide ephemeral range,
//! tcp_tw_reuse) so the churn never exhausts ports and sock_diag sees only
//! the benchmark's sockets. Throughput samples are taken in interleaved
//! rounds (none, trace, aggregate, bpftrace, none, ...) and compared per
//! round, so a machine whose load drifts skews every variant alike.

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, Ctx};

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    None,
    Trace,
    Aggregate,
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Trace => "trace --json",
            Mode::Aggregate => "aggregate",
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
    /// Tracer CPU seconds (user + system) during the workload.
    cpu_s: Option<f64>,
    /// Tracer peak RSS, KiB.
    hwm_kib: Option<u64>,
}

/// What the benchmark runs: binaries, namespace, scratch directory.
struct Env {
    portwatch: PathBuf,
    pwload: PathBuf,
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
    let release = ctx.root.join("target").join("release");
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
    let mut modes = vec![Mode::None, Mode::Trace, Mode::Aggregate];
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
                    s.lost.map_or(String::new(), |l| format!(", {l} lost"))
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

    // Pipeline capacity: paced churn at rising rates under the full trace.
    let base = median(
        samples
            .get(&(Closer::Client, Mode::None))
            .map(|v| v.iter().map(|s| s.cps).collect())
            .unwrap_or_default(),
    );
    let mut capacity: Vec<(f64, Sample)> = Vec::new();
    for frac in [0.25, 0.5, 0.75] {
        let rate = base * frac;
        let s = churn(env, Mode::Trace, Closer::Client, Some(rate), a.seconds)?;
        eprintln!(
            "bench: paced {rate:.0} conn/s under trace: {:.0} events/s, {} lost",
            s.events.unwrap_or(0) as f64 / a.seconds,
            s.lost.unwrap_or(0)
        );
        capacity.push((rate, s));
    }
    for closer in closers {
        for s in samples.get(&(closer, Mode::Trace)).into_iter().flatten() {
            capacity.push((s.cps, s.clone()));
        }
    }

    // In-kernel cost per program from BPF run-time statistics.
    let kernel = kernel_costs(env, &modes)?;

    report(env, &modes, &closers, &samples, &tax, &capacity, &kernel);
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A tracer running while a workload does.
struct Tracer {
    child: Child,
    mode: Mode,
    out: PathBuf,
    err: PathBuf,
}

impl Tracer {
    fn start(env: &Env, mode: Mode, tag: &str) -> Result<Option<Tracer>> {
        let out = env.dir.join(format!("{tag}.out"));
        let err = env.dir.join(format!("{tag}.err"));
        let mut cmd = match mode {
            Mode::None => return Ok(None),
            Mode::Trace => {
                let mut c = env.netns.cmd(&env.portwatch);
                c.args(["trace", "--json"]);
                c
            }
            Mode::Aggregate => {
                let mut c = env.netns.cmd(&env.portwatch);
                c.args(["trace", "--summary-only"]);
                c
            }
            Mode::Bpftrace => {
                let mut c = Command::new(env.bpftrace.as_ref().context("bpftrace")?);
                c.arg(env.dir.join("events.bt"));
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&err)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", util::show(&cmd)))?;
        let mut t = Tracer {
            child,
            mode,
            out,
            err,
        };
        // Wait until every probe is attached.
        let (file, marker) = match mode {
            Mode::Bpftrace => (&t.out, "Attaching"),
            _ => (&t.err, "portwatch: attached"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if fs::read_to_string(file).is_ok_and(|s| s.contains(marker)) {
                return Ok(Some(t));
            }
            if let Some(status) = t.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before attaching: {}",
                    mode.name(),
                    fs::read_to_string(&t.err).unwrap_or_default().trim()
                );
            }
            if Instant::now() > deadline {
                t.kill();
                bail!("{} did not attach within 60 s", mode.name());
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime in seconds.
    fn cpu_s(&self) -> Option<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(ticks as f64 / hz)
    }

    fn hwm_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait for the summary, and read events and lost counts.
    fn stop(mut self) -> Result<(Option<u64>, Option<u64>)> {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not stop within 120 s of SIGTERM", self.mode.name());
            }
            sleep(Duration::from_millis(20));
        }
        let out = fs::read_to_string(&self.out).unwrap_or_default();
        let err = fs::read_to_string(&self.err).unwrap_or_default();
        Ok(match self.mode {
            Mode::Trace => {
                let summary = out
                    .lines()
                    .rev()
                    .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter(|v| v["event"] == "summary")
                    .with_context(|| format!("no JSON summary from portwatch: {}", err.trim()))?;
                (summary["events"].as_u64(), summary["lost"].as_u64())
            }
            Mode::Aggregate => {
                // "summary: N events in X.Ys, L lost"
                let line = out
                    .lines()
                    .find(|l| l.starts_with("summary: "))
                    .with_context(|| format!("no summary from portwatch: {}", err.trim()))?;
                let w: Vec<&str> = line.split_whitespace().collect();
                (
                    w.get(1).and_then(|v| v.parse().ok()),
                    w.get(5).and_then(|v| v.parse().ok()),
                )
            }
            Mode::Bpftrace => {
                let events = out
                    .lines()
                    .filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_digit))
                    .count() as u64;
                // bpftrace reports perf-buffer overflow as "Lost N events".
                let lost = out
                    .lines()
                    .chain(err.lines())
                    .filter_map(|l| {
                        let n = l.split("Lost ").nth(1)?.split_whitespace().next()?;
                        n.parse::<u64>().ok()
                    })
                    .sum();
                (Some(events), Some(lost))
            }
            Mode::None => (None, None),
        })
    }
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
    if let Some((events, lost)) = stopped? {
        sample.events = events;
        sample.lost = lost;
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

/// One BPF program's run-time statistics.
#[derive(Clone, Debug)]
struct ProgCost {
    tracer: Mode,
    name: String,
    run_cnt: u64,
    run_time_ns: u64,
}

/// Programs a process holds open, from /proc/PID/fdinfo: (id, runs, ns).
fn bpf_progs_of(pid: u32) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(cnt), Some(ns)) =
            (field("prog_id:"), field("run_cnt:"), field("run_time_ns:"))
        {
            if !out.iter().any(|(i, _, _)| *i == id) {
                out.push((id, cnt, ns));
            }
        }
    }
    out
}

/// Program names by id, from `bpftool prog show -j` when bpftool is there.
fn prog_names() -> BTreeMap<u64, String> {
    let Some(bpftool) = util::which("bpftool") else {
        return BTreeMap::new();
    };
    let Ok(json) = util::output(Command::new(bpftool).args(["prog", "show", "-j"])) else {
        return BTreeMap::new();
    };
    let Ok(serde_json::Value::Array(progs)) = serde_json::from_str(&json) else {
        return BTreeMap::new();
    };
    progs
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .collect()
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Runs one client-closes churn per tracer with kernel.bpf_stats_enabled=1
/// and reads each program's run_time_ns / run_cnt while it is attached.
fn kernel_costs(env: &Env, modes: &[Mode]) -> Result<Vec<ProgCost>> {
    let before = fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    fs::write(BPF_STATS, "1").context("cannot enable kernel.bpf_stats_enabled")?;
    let result = (|| {
        let mut costs = Vec::new();
        for &mode in modes.iter().filter(|m| **m != Mode::None) {
            let tracer = Tracer::start(env, mode, "kcost")?.context("tracer")?;
            let load = util::output(
                env.netns
                    .cmd(&env.pwload)
                    .args(["churn", "--closer", "client"])
                    .args(["--threads", &env.args.threads.to_string()])
                    .args(["--seconds", &env.args.seconds.to_string()]),
            );
            let progs = bpf_progs_of(tracer.pid());
            let names = prog_names();
            tracer.stop()?;
            load?;
            for (id, run_cnt, run_time_ns) in progs {
                costs.push(ProgCost {
                    tracer: mode,
                    name: names.get(&id).cloned().unwrap_or(format!("prog {id}")),
                    run_cnt,
                    run_time_ns,
                });
            }
        }
        Ok(costs)
    })();
    let _ = fs::write(BPF_STATS, before.trim());
    result
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

/// Per-round throughput lost against the same round's no-tracer sample, %.
fn losses(samples: &BTreeMap<(Closer, Mode), Vec<Sample>>, closer: Closer, mode: Mode) -> Vec<f64> {
    let (Some(base), Some(with)) = (
        samples.get(&(closer, Mode::None)),
        samples.get(&(closer, mode)),
    ) else {
        return Vec::new();
    };
    base.iter()
        .zip(with)
        .map(|(b, w)| (1.0 - w.cps / b.cps) * 100.0)
        .collect()
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:.1}%")
    }
}

fn report(
    env: &Env,
    modes: &[Mode],
    closers: &[Closer],
    samples: &BTreeMap<(Closer, Mode), Vec<Sample>>,
    tax: &[(f64, f64)],
    capacity: &[(f64, Sample)],
    kernel: &[ProgCost],
) {
    let a = &env.args;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "portwatch overhead: {} interleaved rounds x {} s, {} client + {} server threads, loopback, {cores} cores",
        a.rounds, a.seconds, a.threads, a.threads
    );
    println!(
        "{:<16} {:<13} {:>10} {:>9} {:>11} {:>8} {:>10} {:>9}",
        "workload", "tracer", "conn/s", "lost", "events/s", "lost ev", "tracer CPU", "peak RSS"
    );
    for &closer in closers {
        for &mode in modes {
            let Some(v) = samples.get(&(closer, mode)) else {
                continue;
            };
            let cps = median(v.iter().map(|s| s.cps).collect());
            let loss = if mode == Mode::None {
                "-".to_owned()
            } else {
                pct(median(losses(samples, closer, mode)))
            };
            let ev = v
                .iter()
                .map(|s| s.events.map(|e| e as f64 / a.seconds))
                .collect::<Option<Vec<_>>>()
                .map_or("-".into(), |e| format!("{:.0}", median(e)));
            let lost = v
                .iter()
                .map(|s| s.lost)
                .collect::<Option<Vec<_>>>()
                .map_or("-".into(), |l| l.iter().sum::<u64>().to_string());
            let cpu = v
                .iter()
                .map(|s| s.cpu_s.map(|c| c / a.seconds * 100.0))
                .collect::<Option<Vec<_>>>()
                .map_or("-".into(), |c| format!("{:.0}%", median(c)));
            let rss = v
                .iter()
                .filter_map(|s| s.hwm_kib)
                .max()
                .map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            println!(
                "{:<16} {:<13} {:>10.0} {:>9} {:>11} {:>8} {:>10} {:>9}",
                format!("{} closes", closer.arg()),
                mode.name(),
                cps,
                loss,
                ev,
                lost,
                cpu,
                rss
            );
        }
    }
    println!("(conn/s: median; lost: median of per-round throughput lost against that round's untraced run;");
    println!(" events/s: median over the sample; lost ev: events the tracer dropped, all rounds; tracer CPU: user+system / wall)");

    let without = median(tax.iter().map(|t| t.0).collect());
    let with = median(tax.iter().map(|t| t.1).collect());
    let tax_pct = median(tax.iter().map(|t| (t.1 / t.0 - 1.0) * 100.0).collect());
    println!();
    println!(
        "syscall tax: getppid() {without:.1} ns/call without a tracer, {with:.1} with portwatch attached (+{tax_pct:.1}%, median of {} pairs)",
        tax.len()
    );

    println!();
    println!("event pipeline (trace --json, client closes):");
    println!(
        "{:>12} {:>12} {:>10} {:>6}",
        "target c/s", "events/s", "lost", ""
    );
    let mut best_ok: f64 = 0.0;
    let mut highest: Option<&Sample> = None;
    for (rate, s) in capacity {
        let evs = s.events.unwrap_or(0) as f64 / a.seconds;
        let lost = s.lost.unwrap_or(0);
        if lost == 0 {
            best_ok = best_ok.max(evs);
        }
        if highest.is_none_or(|h| s.events > h.events) {
            highest = Some(s);
        }
        println!("{rate:>12.0} {evs:>12.0} {lost:>10}");
    }
    let highest_lost = highest.and_then(|s| s.lost).unwrap_or(0);
    let max_evs = highest.map_or(0.0, |s| s.events.unwrap_or(0) as f64 / a.seconds);
    if highest_lost == 0 {
        println!(
            "capacity: >= {best_ok:.0} events/s with 0 lost (the highest rate this machine's churn produced; not saturated)"
        );
    } else {
        println!(
            "capacity: {best_ok:.0} events/s with 0 lost; at the highest churn ({max_evs:.0} events/s) {highest_lost} lost"
        );
    }

    println!();
    println!("in-kernel cost (kernel.bpf_stats_enabled=1, one client-closes run per tracer):");
    println!(
        "{:<10} {:<18} {:>10} {:>8}",
        "tracer", "program", "runs", "ns/run"
    );
    for p in kernel {
        if p.run_cnt == 0 {
            continue;
        }
        let ns = p.run_time_ns as f64 / p.run_cnt as f64;
        println!(
            "{:<10} {:<18} {:>10} {:>8.0}",
            match p.tracer {
                Mode::Bpftrace => "bpftrace",
                Mode::Aggregate => "aggregate",
                _ => "trace",
            },
            p.name,
            p.run_cnt,
            ns
        );
    }
    for (who, mode) in [
        ("portwatch trace", Mode::Trace),
        ("portwatch aggregate", Mode::Aggregate),
        ("bpftrace", Mode::Bpftrace),
    ] {
        let (cnt, ns) = kernel
            .iter()
            .filter(|p| p.tracer == mode)
            .fold((0u64, 0u64), |(c, n), p| (c + p.run_cnt, n + p.run_time_ns));
        if cnt > 0 {
            println!(
                "{who}: {:.0} ns per program run on average, {:.0} ms in total",
                ns as f64 / cnt as f64,
                ns as f64 / 1e6
            );
        }
    }

    let overall = |mode: Mode| {
        if !modes.contains(&mode) {
            return "n/a".to_owned();
        }
        let all: Vec<f64> = closers
            .iter()
            .flat_map(|&c| losses(samples, c, mode))
            .collect();
        pct(median(all))
    };
    let lost_highest: u64 = closers
        .iter()
        .flat_map(|&c| {
            [Mode::Trace, Mode::Aggregate]
                .into_iter()
                .flat_map(move |m| samples.get(&(c, m)).into_iter().flatten())
        })
        .filter_map(|s| s.lost)
        .sum();
    println!();
    println!(
        "portwatch overhead: trace {}, aggregate {}, bpftrace {}, syscall tax {}, lost {lost_highest}",
        overall(Mode::Trace),
        overall(Mode::Aggregate),
        overall(Mode::Bpftrace),
        pct(tax_pct)
    );
}
