//! Collector output -> attribution -> filters -> aggregation -> a sink.
//! Platform-free: the same pipeline serves every collector and replays.

use std::io;

use crate::aggregate::{Aggregator, PortRange};
use crate::attribution::{Attributor, ProcessLookup, SocketProbe};
use crate::filter::EventFilter;
use crate::model::{Event, SourceMsg};
use crate::output::Sink;

pub struct Pipeline<S, P> {
    attributor: Attributor<S, P>,
    filter: EventFilter,
    aggregator: Aggregator,
    sink: Box<dyn Sink>,
    /// Aggregate only; print nothing but the summary.
    quiet: bool,
    /// Attributed events of the message being handled, reused.
    scratch: Vec<Event>,
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
        let result = out.drain(..).try_for_each(|ev| self.emit(&ev));
        out.clear();
        self.scratch = out;
        result
    }

    /// Fetches, in one round trip, what attributing `msgs` will ask the
    /// system; call before handling them one by one.
    pub fn prefetch(&mut self, msgs: &[SourceMsg]) {
        self.attributor.prefetch(msgs);
    }

    /// An event that is already attributed (a replay).
    pub fn emit(&mut self, ev: &Event) -> io::Result<()> {
        if !self.filter.selects(ev) {
            return Ok(());
        }
        self.aggregator.add(ev);
        if !self.quiet && self.filter.shows(ev) {
            self.sink.event(ev)?;
        }
        Ok(())
    }

    /// Re-checks closes that may still turn into TIME_WAIT (see
    /// [`Attributor::poll`]); call it now and then while tracing.
    pub fn poll(&mut self, now: i128) -> io::Result<()> {
        for ev in self.attributor.poll(now, false) {
            self.emit(&ev)?;
        }
        Ok(())
    }

    pub fn has_pending(&self) -> bool {
        self.attributor.has_pending()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }

    /// Writes the summary as of `now` and flushes.
    pub fn finish(&mut self, now: i128) -> io::Result<()> {
        for ev in self.attributor.poll(now, true) {
            self.emit(&ev)?;
        }
        let mut summary = self.aggregator.summary(now);
        summary.watched = Some(self.filter.clone());
        self.sink.summary(&summary)?;
        self.sink.flush()
    }

    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }
}
