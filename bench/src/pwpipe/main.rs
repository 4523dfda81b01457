//! `pwpipe`: portwatch's userspace path on its own, without the kernel.
//!
//! Replays synthetic raw records of a loopback churn ([`churn`]) through
//! what `portwatch trace --json` runs per record: `decode::parse` and
//! `Decoder::decode`, batches of 512 with one TIME_WAIT prefetch each,
//! `Attributor` (with an in-memory socket table and /proc, [`fake`]),
//! `Pipeline` (filters, aggregation) and `JsonSink`, writing to nothing, on
//! one thread as fast as it goes. Prints records per second (timing only
//! what comes after the ring: the records of each batch are generated
//! first) and heap allocations per record after a warm-up, counted by this
//! binary's global allocator ([`count`]), which portwatch itself does not
//! carry.
//!
//! `pwpipe [--events N] [--warmup N] [--runs R] [--alive N] [--step-ns NS]
//! [--failure-every N] [--dump N]`; the last line is `median events_per_s=...
//! events_per_cpu_s=... allocs_per_event=...`.

mod churn;
mod count;
mod fake;

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::Instant;

use portwatch::attribution::Attributor;
use portwatch::filter::EventFilter;
use portwatch::model::SourceMsg;
use portwatch::output::JsonSink;
use portwatch::pipeline::Pipeline;
use portwatch::source::linux::decode::{self, Clock, Decoder};
use portwatch_common::RawEvent;

#[global_allocator]
static ALLOC: count::Counting = count::Counting;

/// Records per batch, as the ring-buffer reader sends them.
const BATCH: usize = 512;

/// Bytes written, then discarded.
struct Discard(Rc<Cell<u64>>);

impl io::Write for Discard {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.set(self.0.get() + buf.len() as u64);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Opts {
    events: u64,
    warmup: u64,
    runs: usize,
    alive: usize,
    step_ns: u64,
    failure_every: u64,
    /// Write the JSON of this many records to stdout instead of timing.
    dump: Option<u64>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            events: 2_000_000,
            warmup: 200_000,
            runs: 5,
            alive: 1500,
            // Simulated time passes fast enough that the warm-up covers
            // TIME_WAIT's 60 s window: the aggregator's per-window state
            // is then as large as it gets.
            step_ns: 500_000,
            failure_every: 10_000,
            dump: None,
        }
    }
}

/// The pipeline and what feeds it.
struct Rig {
    churn: churn::Churn,
    decoder: Decoder,
    pipeline: Pipeline<fake::Sockets, fake::Processes>,
    /// The records of the batch being fed, as the ring hands them over.
    raw: Vec<RawEvent>,
    batch: Vec<SourceMsg>,
    written: Rc<Cell<u64>>,
}

impl Rig {
    fn new(o: &Opts) -> Self {
        let written = Rc::new(Cell::new(0));
        let sink: Box<dyn portwatch::output::Sink> = match o.dump {
            Some(_) => Box::new(JsonSink::new(io::stdout())),
            None => Box::new(JsonSink::new(Discard(written.clone()))),
        };
        let attributor = Attributor::new(fake::Sockets, fake::Processes);
        let pipeline = Pipeline::new(attributor, EventFilter::default(), None, sink);
        Rig {
            churn: churn::Churn::new(o.alive, o.step_ns, 0x5eed, o.failure_every),
            // A fixed offset: the same wall times every run.
            decoder: Decoder::new(Clock::with_offset(1_795_000_000_000_000_000)),
            pipeline,
            raw: Vec::with_capacity(BATCH),
            batch: Vec::with_capacity(BATCH),
            written,
        }
    }

    /// Feeds `n` records through, in batches; the wall and CPU seconds
    /// spent from decoding on, not in generating the records.
    fn run(&mut self, n: u64) -> io::Result<(f64, f64)> {
        let (mut wall, mut cpu) = (0.0, 0.0);
        let mut left = n;
        while left > 0 {
            let take = left.min(BATCH as u64);
            self.raw.clear();
            for _ in 0..take {
                let raw = self.churn.next_event();
                self.raw.push(raw);
            }
            let (t, c) = (Instant::now(), cpu_s());
            for raw in &self.raw {
                let decoded = decode::parse(churn::bytes(raw))
                    .and_then(|raw| self.decoder.decode(&raw))
                    .map_err(io::Error::other)?;
                self.batch.push(SourceMsg::Event(decoded.0, decoded.1));
            }
            self.pipeline.prefetch(&self.batch);
            for msg in self.batch.drain(..) {
                self.pipeline.handle(msg)?;
            }
            wall += t.elapsed().as_secs_f64();
            cpu += cpu_s() - c;
            left -= take;
        }
        Ok((wall, cpu))
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: pwpipe [--events N] [--warmup N] [--runs R] [--alive N] [--step-ns NS] [--failure-every N] [--dump N]"
    );
    std::process::exit(2)
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        let num = || v.parse::<u64>().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--events" => o.events = num().max(1),
            "--warmup" => o.warmup = num(),
            "--runs" => o.runs = num().max(1) as usize,
            "--alive" => o.alive = num().max(1) as usize,
            "--step-ns" => o.step_ns = num(),
            "--failure-every" => o.failure_every = num(),
            "--dump" => o.dump = Some(num()),
            _ => usage(),
        }
    }
    o
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// This thread's CPU time: on a machine shared with other work, the rate
/// per CPU second varies less than the rate per wall second.
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; the clock exists on Linux since 2.6.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = parse(&args);
    if let Err(e) = bench(&o) {
        eprintln!("pwpipe: {e}");
        std::process::exit(1);
    }
}

fn bench(o: &Opts) -> io::Result<()> {
    if let Some(n) = o.dump {
        let mut rig = Rig::new(o);
        rig.run(n)?;
        return rig
            .pipeline
            .finish(rig.decoder.clock.wall(rig.churn.last_ts()));
    }
    // The generator's own cost, to tell it apart from portwatch's.
    let mut gen = churn::Churn::new(o.alive, o.step_ns, 0x5eed, o.failure_every);
    let t = Instant::now();
    for _ in 0..o.events {
        std::hint::black_box(gen.next_event());
    }
    let gen_ns = t.elapsed().as_nanos() as f64 / o.events as f64;
    println!(
        "pwpipe: {} records per run after {} of warm-up, {} connections in flight; generating them takes {gen_ns:.1} ns/record, not counted below",
        o.events, o.warmup, o.alive
    );

    let mut rig = Rig::new(o);
    rig.run(o.warmup)?;
    let (mut rates, mut cpu_rates, mut allocs) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=o.runs {
        let written = rig.written.get();
        let (result, n, bytes) = count::counted(|| rig.run(o.events));
        let (secs, cpu) = result?;
        let (rate, cpu_rate) = (o.events as f64 / secs, o.events as f64 / cpu);
        let per = n as f64 / o.events as f64;
        println!(
            "run={run} events={} seconds={secs:.3} cpu_seconds={cpu:.3} events_per_s={rate:.0} events_per_cpu_s={cpu_rate:.0} allocs={n} allocs_per_event={per:.5} alloc_bytes_per_event={:.2} json_bytes_per_event={:.1}",
            o.events,
            bytes as f64 / o.events as f64,
            (rig.written.get() - written) as f64 / o.events as f64
        );
        rates.push(rate);
        cpu_rates.push(cpu_rate);
        allocs.push(per);
    }
    println!(
        "median events_per_s={:.0} events_per_cpu_s={:.0} allocs_per_event={:.5} runs={}",
        median(rates),
        median(cpu_rates),
        median(allocs),
        o.runs
    );
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    /// The churn's common path (no failed calls, whose holder and pool
    /// lookups allocate by design) allocates nothing once warm.
    #[test]
    fn the_steady_state_allocates_nothing() {
        let o = Opts {
            alive: 300,
            failure_every: 0,
            ..Opts::default()
        };
        let mut rig = Rig::new(&o);
        rig.run(200_000).expect("warm-up");
        let (result, n, bytes) = count::counted(|| rig.run(10_000));
        result.expect("run");
        assert_eq!(
            n, 0,
            "{n} allocations ({bytes} bytes) in 10000 steady-state records"
        );
    }
}
