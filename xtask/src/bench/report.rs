//! The benchmark's figures, as one table and a few lines: every
//! throughput loss next to the events lost to get it.

use std::collections::BTreeMap;

use std::fmt::Write as _;

use super::{kernel::ProgCost, median, sweep, BenchArgs, Closer, Mode, Sample};

/// Everything measured, for [`report`].
pub struct Results<'a> {
    pub samples: &'a BTreeMap<(Closer, Mode), Vec<Sample>>,
    /// getppid() ns/call (without, with portwatch), per pair.
    pub tax: &'a [(f64, f64)],
    pub capacity: &'a [sweep::Point],
    pub kernel: &'a [ProgCost],
    /// pwpipe's line.
    pub userspace: &'a str,
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

/// A count at a glance: `12`, `9876`, `371k`, `1.8M`.
fn human(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..1_000_000 => format!("{:.0}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// (events delivered, events lost) over `samples`, when the tracer said.
fn totals<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Option<(u64, u64)> {
    samples
        .into_iter()
        .map(|s| Some((s.events?, s.lost?)))
        .try_fold((0, 0), |(e, l), s: Option<(u64, u64)>| {
            s.map(|(se, sl)| (e + se, l + sl))
        })
}

/// Lost events as a share of all events (delivered and lost).
fn share(events: u64, lost: u64) -> f64 {
    match events + lost {
        0 => 0.0,
        all => lost as f64 / all as f64 * 100.0,
    }
}

/// `2329404 (55.8%)` for the table.
fn lost_cell(t: Option<(u64, u64)>) -> String {
    t.map_or("-".into(), |(e, l)| format!("{l} ({:.1}%)", share(e, l)))
}

/// `(lost 12 of 1.8M events, 0.0%)` for the last line; `(lost 0)`.
fn lost_words(t: Option<(u64, u64)>) -> String {
    match t {
        None => String::new(),
        Some((_, 0)) => " (lost 0)".into(),
        Some((e, l)) => format!(
            " (lost {} of {} events, {:.1}%)",
            human(l),
            human(e + l),
            share(e, l)
        ),
    }
}

/// The median of a per-sample figure, or `-` when a sample lacks it.
fn median_of(
    v: &[Sample],
    f: impl Fn(&Sample) -> Option<f64>,
    fmt: impl Fn(f64) -> String,
) -> String {
    v.iter()
        .map(f)
        .collect::<Option<Vec<_>>>()
        .map_or("-".into(), |x| fmt(median(x)))
}

/// The report, to print.
pub fn report(a: &BenchArgs, modes: &[Mode], closers: &[Closer], r: &Results) -> String {
    let mut out = String::new();
    let samples = r.samples;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    out.push('\n');
    let _ = writeln!(
            out,
        "portwatch overhead: {} interleaved rounds x {} s, {} client + {} server threads, loopback, {cores} cores",
        a.rounds, a.seconds, a.threads, a.threads
    );
    let _ = writeln!(
        out,
        "{:<16} {:<13} {:>8} {:>9} {:>18} {:>9} {:>9} {:>10} {:>9}",
        "workload",
        "tracer",
        "conn/s",
        "tput loss",
        "lost events",
        "events/s",
        "ring ev/s",
        "tracer CPU",
        "peak RSS"
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
            let per_s = |n: Option<u64>| n.map(|n| n as f64 / a.seconds);
            let ev = median_of(v, |s| per_s(s.events), |x| format!("{x:.0}"));
            let ring = median_of(v, |s| per_s(s.ring_events), |x| format!("{x:.0}"));
            let cpu = median_of(
                v,
                |s| s.cpu_s.map(|c| c / a.seconds * 100.0),
                |x| format!("{x:.0}%"),
            );
            let rss = v
                .iter()
                .filter_map(|s| s.hwm_kib)
                .max()
                .map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            let _ = writeln!(
                out,
                "{:<16} {:<13} {:>8.0} {:>9} {:>18} {:>9} {:>9} {:>10} {:>9}",
                format!("{} closes", closer.arg()),
                mode.name(),
                cps,
                loss,
                lost_cell(totals(v)),
                ev,
                ring,
                cpu,
                rss
            );
        }
    }
    let _ = writeln!(out, "(conn/s: median; tput loss: median of per-round throughput lost against that round's untraced run;");
    let _ = writeln!(out, " lost events: events the tracer dropped in all rounds, and their share of all events, delivered and lost;");
    let _ = writeln!(out, " events/s, ring ev/s: medians, events reported and records that crossed portwatch's ring buffer;");
    let _ = writeln!(
        out,
        " tracer CPU: user+system / wall; peak RSS: the highest VmHWM of any round)"
    );
    for mode in [Mode::Trace, Mode::Aggregate, Mode::Serve] {
        let (mut ring, mut rec, mut inf) = (0, 0, 0);
        for s in closers
            .iter()
            .filter_map(|&c| samples.get(&(c, mode)))
            .flatten()
        {
            let (a, b, c) = s.lost_by_reason.unwrap_or_default();
            (ring, rec, inf) = (ring + a, rec + b, inf + c);
        }
        if modes.contains(&mode) {
            let _ = writeln!(
            out,
                "{} losses by reason, all rounds: ring buffer {ring}, recursion {rec}, inferred {inf}",
                mode.name()
            );
        }
    }

    let tax = r.tax;
    let without = median(tax.iter().map(|t| t.0).collect());
    let with = median(tax.iter().map(|t| t.1).collect());
    let tax_pct = median(tax.iter().map(|t| (t.1 / t.0 - 1.0) * 100.0).collect());
    out.push('\n');
    let _ = writeln!(
            out,
        "syscall tax: getppid() {without:.1} ns/call without a tracer, {with:.1} with portwatch attached (+{tax_pct:.1}%, median of {} pairs)",
        tax.len()
    );

    out.push('\n');
    let _ = writeln!(
        out,
        "zero-loss capacity (trace --json, client closes, paced; in the order run):"
    );
    let _ = writeln!(
        out,
        "{:>12} {:>12} {:>10} {:>18}",
        "paced c/s", "events/s", "ring lost", "recursion+inferred"
    );
    for p in r.capacity {
        let _ = writeln!(
            out,
            "{:>12.0} {:>12.0} {:>10} {:>18}",
            p.rate, p.events_per_s, p.lost, p.other
        );
    }
    let _ = writeln!(out, "{}", sweep::verdict(r.capacity));

    kernel_costs(&mut out, r.kernel);

    out.push('\n');
    let _ = writeln!(out, "{}", r.userspace);

    let overall = |mode: Mode| {
        if !modes.contains(&mode) {
            return "n/a".to_owned();
        }
        let all: Vec<f64> = closers
            .iter()
            .flat_map(|&c| losses(samples, c, mode))
            .collect();
        let lost = totals(
            closers
                .iter()
                .filter_map(|&c| samples.get(&(c, mode)))
                .flatten(),
        );
        format!("{}{}", pct(median(all)), lost_words(lost))
    };
    out.push('\n');
    let _ = writeln!(
        out,
        "portwatch overhead: trace {}, aggregate {}, serve {}, bpftrace {}, syscall tax {}",
        overall(Mode::Trace),
        overall(Mode::Aggregate),
        overall(Mode::Serve),
        overall(Mode::Bpftrace),
        pct(tax_pct)
    );
    out
}

fn kernel_costs(out: &mut String, kernel: &[ProgCost]) {
    out.push('\n');
    let _ = writeln!(
        out,
        "in-kernel cost (kernel.bpf_stats_enabled=1, one client-closes run per tracer):"
    );
    let _ = writeln!(
        out,
        "{:<10} {:<18} {:>10} {:>8}",
        "tracer", "program", "runs", "ns/run"
    );
    for p in kernel.iter().filter(|p| p.run_cnt > 0) {
        let _ = writeln!(
            out,
            "{:<10} {:<18} {:>10} {:>8.0}",
            match p.tracer {
                Mode::Bpftrace => "bpftrace",
                Mode::Aggregate => "aggregate",
                _ => "trace",
            },
            p.name,
            p.run_cnt,
            p.run_time_ns as f64 / p.run_cnt as f64
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
            let _ = writeln!(
                out,
                "{who}: {:.0} ns per program run on average, {:.0} ms in total",
                ns as f64 / cnt as f64,
                ns as f64 / 1e6
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(events: u64, lost: u64) -> Sample {
        Sample {
            events: Some(events),
            lost: Some(lost),
            ..Sample::default()
        }
    }

    #[test]
    fn counts_read_at_a_glance() {
        assert_eq!(human(12), "12");
        assert_eq!(human(9_876), "9876");
        assert_eq!(human(371_169), "371k");
        assert_eq!(human(1_799_988), "1.8M");
    }

    #[test]
    fn losses_are_shares_of_every_event_delivered_or_not() {
        let rounds = [sample(900_000, 0), sample(899_988, 12)];
        let t = totals(&rounds);
        assert_eq!(t, Some((1_799_988, 12)));
        assert_eq!(lost_cell(t), "12 (0.0%)");
        assert_eq!(lost_words(t), " (lost 12 of 1.8M events, 0.0%)");
        assert_eq!(lost_words(Some((5, 0))), " (lost 0)");
        let half = [sample(50, 50)];
        assert_eq!(lost_cell(totals(&half)), "50 (50.0%)");
        // A tracer that said nothing about events: no figure at all.
        assert_eq!(totals(&[Sample::default()]), None);
        assert_eq!(lost_cell(None), "-");
        assert_eq!(lost_words(None), "");
    }

    #[test]
    fn the_report_puts_lost_events_next_to_every_throughput_figure() {
        let args = BenchArgs {
            rounds: 2,
            seconds: 5.0,
            threads: 4,
            portwatch: None,
            no_bpftrace: false,
            pipeline: false,
        };
        let run = |cps: f64, events: Option<u64>, lost: Option<u64>, ring: Option<u64>| Sample {
            cps,
            events,
            lost,
            ring_events: ring,
            lost_by_reason: lost.map(|l| (l, 0, 0)).filter(|_| ring.is_some()),
            cpu_s: events.map(|_| 2.0),
            hwm_kib: events.map(|_| 30_000),
        };
        let mut samples = BTreeMap::new();
        for closer in [Closer::Client, Closer::Server] {
            samples.insert(
                (closer, Mode::None),
                vec![run(32_000.0, None, None, None); 2],
            );
            samples.insert(
                (closer, Mode::Trace),
                vec![
                    run(30_000.0, Some(900_000), Some(0), Some(900_000)),
                    run(30_100.0, Some(899_988), Some(12), Some(900_000)),
                ],
            );
            samples.insert(
                (closer, Mode::Aggregate),
                vec![run(31_600.0, Some(1_000_000), Some(0), Some(20_000)); 2],
            );
            samples.insert(
                (closer, Mode::Bpftrace),
                vec![run(9_000.0, Some(500_000), Some(185_000), None); 2],
            );
        }
        let capacity = [sweep::Point {
            rate: 6_400.0,
            events_per_s: 70_000.0,
            lost: 0,
            other: 2,
        }];
        let text = report(
            &args,
            &[Mode::None, Mode::Trace, Mode::Aggregate, Mode::Bpftrace],
            &[Closer::Client, Closer::Server],
            &Results {
                samples: &samples,
                tax: &[(200.0, 201.0)],
                capacity: &capacity,
                kernel: &[],
                userspace: "userspace path (pwpipe ...)",
            },
        );
        eprintln!("{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("client closes    trace --json"))
            .expect("row");
        assert!(row.contains(" 12 (0.0%) "), "{row}");
        assert!(row.contains("180000"), "ring records per second: {row}");
        assert!(text.contains("trace --json losses by reason, all rounds: ring buffer 24"));
        assert_eq!(
            text.lines().last(),
            Some("portwatch overhead: trace 6.1% (lost 24 of 3.6M events, 0.0%), aggregate 1.2% (lost 0), serve n/a, bpftrace 71.9% (lost 740k of 2.7M events, 27.0%), syscall tax 0.5%")
        );
    }
}
