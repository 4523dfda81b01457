//! Collector output -> attribution -> filters -> aggregation -> a sink.
//! Platform-free: the same pipeline serves every collector and replays.
//!
//! The sink sees events in time order. A close that may still turn into
//! TIME_WAIT (an orphan in the FIN_WAIT2 sub-state) is confirmed only by a
//! later re-check, and its timewait event carries the close's time; so
//! while such a close is pending, what comes after it is held back (at most
//! [`HOLD_NS`], at most [`MAX_HELD`] events) and written in order once the
//! close is resolved.

use std::collections::BTreeMap;
use std::io;

use crate::aggregate::{Aggregator, PoolSummary, PortRange};
use crate::attribution::{Attributor, ProcessLookup, SocketProbe};
use crate::filter::EventFilter;
use crate::model::{Event, SourceMsg};
use crate::output::Sink;

/// How long an event may be held back waiting for an earlier TIME_WAIT.
pub const HOLD_NS: i128 = 1_000_000_000;
/// How many events may be held back at most; beyond, the oldest go out.
pub const MAX_HELD: usize = 16 * 1024;

pub struct Pipeline<S, P> {
    attributor: Attributor<S, P>,
    filter: EventFilter,
    aggregator: Aggregator,
    sink: Box<dyn Sink>,
    /// Aggregate only; print nothing but the summary.
    quiet: bool,
    /// Attributed events of the message being handled, reused.
    scratch: Vec<Event>,
    ring_events: Option<u64>,
    /// Events held back for order, by (time, arrival).
    held: BTreeMap<(i128, u64), Event>,
    arrivals: u64,
}

impl<S: SocketProbe, P: ProcessLookup> Pipeline<S, P> {
    pub fn new(
        attributor: Attributor<S, P>,
        filter: EventFilter,
        range: Option<PortRange>,
        sink: Box<dyn Sink>,
    ) -> Self {
        Pipeline {
            attributor,
            filter,
            aggregator: Aggregator::new(range),
            sink,
            quiet: false,
            scratch: Vec::new(),
            ring_events: None,
            held: BTreeMap::new(),
            arrivals: 0,
        }
    }

    /// The run began at `t` (wall-clock ns); see [`Aggregator::started_at`].
    pub fn started_at(mut self, t: i128) -> Self {
        self.aggregator.started_at(t);
        self
    }

    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// A message from a collector.
    pub fn handle(&mut self, msg: SourceMsg) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.scratch);
        self.attributor.process_into(msg, &mut out);
        let result = out.drain(..).try_for_each(|ev| self.emit(ev));
        out.clear();
        self.scratch = out;
        result?;
        self.release(None)
    }

    /// Fetches, in one round trip, what attributing `msgs` will ask the
    /// system; call before handling them one by one.
    pub fn prefetch(&mut self, msgs: &[SourceMsg]) {
        self.attributor.prefetch(msgs);
    }

    /// An attributed event: filtered, counted, and written or held back.
    fn emit(&mut self, ev: Event) -> io::Result<()> {
        if !self.filter.selects(&ev) {
            return Ok(());
        }
        self.aggregator.add(&ev);
        if self.quiet || !self.filter.shows(&ev) {
            return Ok(());
        }
        if self.held.is_empty() && !self.attributor.has_pending() {
            return self.sink.event(&ev);
        }
        self.arrivals += 1;
        self.held.insert((ev.time, self.arrivals), ev);
        Ok(())
    }

    /// Writes the held events that nothing pending can precede any more:
    /// older than the oldest pending close, or than `now` - [`HOLD_NS`];
    /// all of them when nothing is pending.
    fn release(&mut self, now: Option<i128>) -> io::Result<()> {
        let horizon = match self.attributor.oldest_pending() {
            None => i128::MAX,
            Some(t) => now.map_or(t, |now| t.max(now - HOLD_NS)),
        };
        loop {
            let over = self.held.len() > MAX_HELD;
            let Some(entry) = self.held.first_entry() else {
                break;
            };
            if entry.key().0 >= horizon && !over {
                break;
            }
            let ev = entry.remove();
            self.sink.event(&ev)?;
        }
        Ok(())
    }

    /// Re-checks closes that may still turn into TIME_WAIT (see
    /// [`Attributor::poll`]) and writes what no longer waits for them; call
    /// it now and then while tracing.
    pub fn poll(&mut self, now: i128) -> io::Result<()> {
        for ev in self.attributor.poll(now, false) {
            self.emit(ev)?;
        }
        self.release(Some(now))
    }

    /// Whether [`Pipeline::poll`] has work: closes to re-check or events
    /// held back.
    pub fn has_pending(&self) -> bool {
        self.attributor.has_pending() || !self.held.is_empty()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }

    /// Writes the summary as of `now` and flushes.
    pub fn finish(&mut self, now: i128) -> io::Result<()> {
        for ev in self.attributor.poll(now, true) {
            self.emit(ev)?;
        }
        self.release(None)?;
        let mut summary = self.aggregator.summary(now);
        summary.watched = Some(self.filter.clone());
        summary.ring_events = self.ring_events;
        let dests = self.aggregator.client_dests();
        let mut pools: Vec<PoolSummary> = self
            .attributor
            .pools(&dests)
            .into_iter()
            .map(|(dest, pool)| PoolSummary::new(dest, pool))
            .collect();
        pools.sort_by(|a, b| {
            b.pressure
                .unwrap_or(-1.0)
                .total_cmp(&a.pressure.unwrap_or(-1.0))
        });
        summary.pools = pools;
        self.sink.summary(&summary)?;
        self.sink.flush()
    }

    /// How many records crossed the ring buffer, for the summary.
    pub fn set_ring_events(&mut self, n: u64) {
        self.ring_events = Some(n);
    }

    /// Events the kernel counted per process (aggregate mode).
    pub fn set_kernel_counts(&mut self, counts: std::collections::HashMap<u32, (u64, String)>) {
        self.aggregator.set_kernel_counts(counts);
    }

    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::net::IpAddr;
    use std::rc::Rc;

    use super::*;
    use crate::aggregate::Summary;
    use crate::attribution::fixtures::AnyState;
    use crate::attribution::Offline;
    use crate::model::{EventKind, Hints, TcpState};

    /// Keeps what it is given.
    struct Written(Rc<RefCell<Vec<Event>>>);

    impl Sink for Written {
        fn event(&mut self, ev: &Event) -> io::Result<()> {
            self.0.borrow_mut().push(ev.clone());
            Ok(())
        }
        fn summary(&mut self, _: &Summary) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn state(time: i128, sport: u16, old: TcpState, new: TcpState) -> SourceMsg {
        let mut ev = Event::new(time, EventKind::State);
        ev.pid = Some(7);
        ev.saddr = Some(IpAddr::from([127, 0, 0, 1]));
        ev.daddr = Some(IpAddr::from([127, 0, 0, 1]));
        ev.sport = Some(sport);
        ev.dport = Some(8080);
        ev.old_state = Some(old);
        ev.new_state = Some(new);
        SourceMsg::Event(ev, Hints::default())
    }

    type Shared<T> = Rc<RefCell<T>>;
    type Rig = (Pipeline<AnyState, Offline>, AnyState, Shared<Vec<Event>>);

    /// A pipeline over a socket table that says FIN_WAIT2 for now, with an
    /// orphan's close (hashed in the FIN_WAIT2 sub-state) and another
    /// connection's transition after it handled; and what it writes.
    fn pipeline() -> Rig {
        let table = AnyState::new(Some(TcpState::FinWait2));
        let written = Rc::new(RefCell::new(Vec::new()));
        let mut p = Pipeline::new(
            Attributor::new(table.clone(), Offline),
            EventFilter::default(),
            None,
            Box::new(Written(written.clone())),
        );
        p.handle(state(1_000, 40001, TcpState::FinWait2, TcpState::Close))
            .expect("handle");
        p.handle(state(
            2_000,
            40002,
            TcpState::SynSent,
            TcpState::Established,
        ))
        .expect("handle");
        (p, table, written)
    }

    #[test]
    fn a_late_confirmed_time_wait_is_written_in_time_order() {
        let (mut p, table, written) = pipeline();
        assert!(written.borrow().is_empty(), "held back behind the close");
        assert!(p.has_pending());
        // ... then the peer's FIN: the first is in TIME_WAIT now.
        table.set(Some(TcpState::TimeWait));
        p.poll(3_000).expect("poll");
        let got: Vec<(i128, EventKind)> =
            written.borrow().iter().map(|e| (e.time, e.event)).collect();
        assert_eq!(
            got,
            vec![
                (1_000, EventKind::State),
                (1_000, EventKind::Timewait),
                (2_000, EventKind::State)
            ]
        );
        assert!(!p.has_pending());
        // Nothing pending: events go straight out.
        p.handle(state(
            4_000,
            40003,
            TcpState::SynSent,
            TcpState::Established,
        ))
        .expect("handle");
        assert_eq!(written.borrow().len(), 4);
    }

    #[test]
    fn nothing_is_held_longer_than_the_hold_time() {
        let (mut p, _table, written) = pipeline();
        // Still FIN_WAIT2 a second later: the held events go out anyway.
        p.poll(2_000 + HOLD_NS + 1).expect("poll");
        assert_eq!(written.borrow().len(), 2);
        assert!(p.has_pending(), "the close itself is still re-checked");
    }
}
