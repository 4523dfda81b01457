//! The zero-loss capacity of the full trace: paced churn at rising rates
//! until events are lost, then bisection between the last rate that lost
//! nothing and the first that lost some. Lost means lost in the ring
//! buffer, where the reader's pace decides; BPF recursion misses (a softirq
//! in the middle of the same program) and gaps inferred from them happen
//! at any rate, so they are shown beside each point but do not end the
//! sweep.

use anyhow::Result;

/// Fractions of the untraced churn rate tried first.
const STEPS: [f64; 5] = [0.2, 0.4, 0.6, 0.8, 1.0];
/// Bisections between the last lossless and the first lossy rate.
const BISECTIONS: usize = 2;

/// One paced run: events per second the tracer delivered and how many it
/// lost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// The pace asked of the churn, connections per second.
    pub rate: f64,
    pub events_per_s: f64,
    /// Lost in the ring buffer.
    pub lost: u64,
    /// Lost otherwise: recursion misses and inferred gaps.
    pub other: u64,
}

/// Runs `measure` at paced rates (connections per second) from a fifth of
/// `base` up, stopping at the first run that loses events, then bisects
/// between it and the last that lost none. Every point, in the order run.
pub fn sweep(base: f64, mut measure: impl FnMut(f64) -> Result<Point>) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    let (mut lo, mut hi) = (0.0, None);
    for frac in STEPS {
        let p = measure(base * frac)?;
        points.push(p);
        if p.lost > 0 {
            hi = Some(p.rate);
            break;
        }
        lo = p.rate;
    }
    if let Some(mut hi) = hi {
        for _ in 0..BISECTIONS {
            let p = measure((lo + hi) / 2.0)?;
            points.push(p);
            if p.lost > 0 {
                hi = p.rate;
            } else {
                lo = p.rate;
            }
        }
    }
    Ok(points)
}

/// The capacity line: the highest event rate that lost nothing, and the
/// lowest that lost some.
pub fn verdict(points: &[Point]) -> String {
    let best = points
        .iter()
        .filter(|p| p.lost == 0)
        .max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    let first_loss = points
        .iter()
        .filter(|p| p.lost > 0)
        .min_by(|a, b| a.rate.total_cmp(&b.rate));
    match (best, first_loss) {
        (Some(b), Some(l)) => format!(
            "capacity: {:.0} events/s with 0 lost in the ring (paced at {:.0} conn/s); at {:.0} events/s ({:.0} conn/s) {} lost",
            b.events_per_s, b.rate, l.events_per_s, l.rate, l.lost
        ),
        (Some(b), None) => format!(
            "capacity: >= {:.0} events/s with 0 lost in the ring (paced at {:.0} conn/s, the untraced rate: not saturated)",
            b.events_per_s, b.rate
        ),
        (None, Some(l)) => format!(
            "capacity: below {:.0} events/s: even {:.0} conn/s lost {}",
            l.events_per_s, l.rate, l.lost
        ),
        (None, None) => "capacity: not measured".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracer that loses events above `limit` conn/s, at 10 events per
    /// connection.
    fn tracer(limit: f64) -> impl FnMut(f64) -> Result<Point> {
        move |rate| {
            Ok(Point {
                rate,
                events_per_s: rate * 10.0,
                lost: if rate > limit {
                    (rate - limit) as u64
                } else {
                    0
                },
                // At any rate: never the capacity's limit.
                other: 3,
            })
        }
    }

    #[test]
    fn sweeps_up_then_bisects_towards_the_limit() {
        let points = sweep(10_000.0, tracer(5_000.0)).expect("sweep");
        let rates: Vec<f64> = points.iter().map(|p| p.rate).collect();
        // 2k, 4k lossless, 6k lossy; then 5k (lossless), 5.5k (lossy).
        assert_eq!(rates, vec![2_000.0, 4_000.0, 6_000.0, 5_000.0, 5_500.0]);
        let v = verdict(&points);
        assert!(
            v.starts_with("capacity: 50000 events/s with 0 lost in the ring (paced at 5000 conn/s); at 55000 events/s (5500 conn/s) 500 lost"),
            "{v}"
        );
    }

    #[test]
    fn a_tracer_that_keeps_up_is_said_to_be_unsaturated() {
        let points = sweep(10_000.0, tracer(f64::MAX)).expect("sweep");
        assert_eq!(points.len(), STEPS.len());
        assert!(
            verdict(&points).contains("not saturated"),
            "{}",
            verdict(&points)
        );
    }

    #[test]
    fn losses_at_the_lowest_step_bisect_down_from_zero() {
        let points = sweep(10_000.0, tracer(500.0)).expect("sweep");
        let rates: Vec<f64> = points.iter().map(|p| p.rate).collect();
        assert_eq!(rates, vec![2_000.0, 1_000.0, 500.0]);
        assert!(verdict(&points).starts_with("capacity: 5000 events/s with 0 lost in the ring"));
    }
}
