//! The live loop `top` and `serve` share: the collector in the kernel's
//! aggregate mode, attribution, and a refresh tick at which the kernel's
//! counts and each namespace's socket table are read into the
//! [`ViewState`]. Only the rare events cross the ring (listens, closes
//! that may be TIME_WAIT, failures); events, transitions by state and
//! successful connects per (namespace, process, destination) are counted
//! in the kernel and read as deltas ([`Counted`]).

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::attribution::Attributor;
use crate::model::{Counted, Event, EventKind};
use crate::source::linux::counts::{Tally, Totals};
use crate::source::linux::{Batch, CollectorConfig, LinuxCollector, CHANNEL_BATCHES};
use crate::system::{LiveProcesses, LiveSockets, Netns};
use crate::timefmt::now_ns;
use crate::view::ViewState;

/// What the loop has for its caller.
pub enum Step {
    /// Attributed events, in arrival order.
    Events(Vec<Event>),
    /// A refresh is due: the view has been ticked, given the kernel's
    /// counts and censused as of now. Those counts, for the caller's own
    /// figures.
    Refreshed(Counted),
    /// SIGINT, SIGTERM or the end of the collector.
    Stopped,
}

pub struct Live {
    collector: Option<LinuxCollector>,
    rx: mpsc::Receiver<Batch>,
    attributor: Attributor<LiveSockets, LiveProcesses>,
    /// Its own sock_diag sockets, for the censuses.
    census: LiveSockets,
    recheck: tokio::time::Interval,
    refresh: tokio::time::Interval,
    stop: super::Stop,
    described: String,
    /// The namespace watched (`--netns`), if one is.
    watched: Option<u64>,
    /// The kernel's counts, as deltas.
    tally: Tally,
    /// Reads of the counts since exited processes' entries were deleted.
    reads: u32,
    read_failed: bool,
}

/// Exited processes' entries leave the kernel's destination table every
/// this many reads of it.
const PRUNE_EVERY: u32 = 10;

impl Live {
    /// Attaches, seeds attribution with what predates the run, and takes
    /// the first census of every namespace (or only `netns`, the one
    /// watched) into `view`.
    pub async fn start(
        refresh: Duration,
        netns_filter: Option<&str>,
        view: &mut ViewState,
    ) -> anyhow::Result<Live> {
        let watched = netns_filter.map(super::trace::resolve_netns).transpose()?;
        let stop = super::Stop::install(None)?;
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let cfg = CollectorConfig {
            netns: watched,
            lost_poll: Duration::from_millis(250),
            aggregate: true,
            ..CollectorConfig::default()
        };
        let mut collector = LinuxCollector::start(&cfg, tx).context("cannot start tracing")?;
        let netns = Netns::new();
        let inferred = crate::source::connects_inferred(collector.mechanisms());
        let mut attributor = Attributor::new(
            LiveSockets::new(netns.clone()),
            LiveProcesses::new(netns.clone()),
        )
        .infer_connects(inferred)
        .sparse(true);
        view.counted_in_kernel(true);
        // Attached: from here on only lookups need privilege (src/privilege.rs).
        // Before the snapshot, whose thread would otherwise keep everything.
        crate::privilege::drop_after_attach_or_warn();
        if let Ok(snap) = super::snapshot(&netns, super::SNAPSHOT_BUDGET).await {
            super::seed(&mut collector, &mut attributor, &snap);
        }
        let mut census = LiveSockets::new(netns.clone());
        let mut namespaces: Vec<u64> = crate::system::snapshot::namespaces().into_keys().collect();
        namespaces.sort_unstable();
        for ns in namespaces {
            // A namespace whose processes exited meanwhile has nothing to count.
            if let Ok(table) = census.table(Some(ns)) {
                view.apply_table(&table, true);
            }
        }
        let mut recheck = tokio::time::interval(Duration::from_millis(100));
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh_tick = tokio::time::interval(refresh);
        refresh_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the first refresh is one period in.
        refresh_tick.reset();
        let described = crate::source::describe(collector.mechanisms());
        Ok(Live {
            collector: Some(collector),
            rx,
            attributor,
            census,
            recheck,
            refresh: refresh_tick,
            stop,
            described,
            watched: watched.map(u64::from),
            tally: Tally::new(inferred),
            reads: 0,
            read_failed: false,
        })
    }

    /// The hooks serving each kind of event, for `portwatch: attached`.
    pub fn describe(&self) -> &str {
        &self.described
    }

    /// The next thing to do. Cancel-safe: it awaits only the channel, the
    /// intervals and the signals, so a caller may select on it.
    pub async fn next(&mut self, view: &mut ViewState) -> Step {
        let pending = self.attributor.has_pending();
        tokio::select! {
            batch = self.rx.recv() => match batch {
                Some(batch) => Step::Events(self.attribute(batch)),
                None => Step::Stopped,
            },
            _ = self.recheck.tick(), if pending => {
                let events = self.attributor.poll(now_ns(), false);
                Step::Events(self.watched_only(events))
            }
            _ = self.refresh.tick() => Step::Refreshed(self.refresh_view(view)),
            _ = self.stop.wait() => Step::Stopped,
        }
    }

    fn attribute(&mut self, batch: Batch) -> Vec<Event> {
        self.attributor.prefetch(&batch);
        let mut out = Vec::with_capacity(batch.len());
        for msg in batch {
            self.attributor.process_into(msg, &mut out);
        }
        self.watched_only(out)
    }

    /// With `--netns`, only the watched namespace's events (and losses):
    /// the kernel filters where it reads a socket's namespace, this
    /// catches what reaches attribution from elsewhere all the same.
    fn watched_only(&self, mut events: Vec<Event>) -> Vec<Event> {
        if let Some(ns) = self.watched {
            events.retain(|e| e.event == EventKind::Lost || e.netns == Some(ns));
        }
        events
    }

    /// What the kernel counted since the last read, added to `view` too.
    /// A failed read counts nothing now: the next one finds it all.
    pub fn counted(&mut self, view: &mut ViewState) -> Counted {
        let Some(read) = self.collector.as_ref().map(LinuxCollector::totals) else {
            return Counted::default();
        };
        let totals = match read {
            Ok(t) => t,
            Err(e) => {
                if !std::mem::replace(&mut self.read_failed, true) {
                    log::warn!("reading the kernel's counts: {e} (warned once)");
                }
                return Counted::default();
            }
        };
        let counted = self.take(&totals, view);
        self.reads += 1;
        if self.reads >= PRUNE_EVERY {
            self.reads = 0;
            let gone = self.tally.gone(&totals, |pid| {
                std::path::Path::new(&format!("/proc/{pid}")).exists()
            });
            if let Some(collector) = self.collector.as_mut() {
                if let Err(e) = collector.forget_dests(&gone) {
                    log::warn!("pruning the kernel's destination counts: {e}");
                }
            }
        }
        counted
    }

    fn take(&mut self, totals: &Totals, view: &mut ViewState) -> Counted {
        let attributor = &mut self.attributor;
        let counted = self.tally.delta(totals, |id| attributor.cgroup_path(id));
        view.add_counted(&counted);
        counted
    }

    /// Adds the kernel's counts to `view`, ticks it to now and counts the
    /// tables of the namespaces it shows. Returns the kernel's counts.
    pub fn refresh_view(&mut self, view: &mut ViewState) -> Counted {
        // Counts first, so that the tick's rate samples include them.
        let counted = self.counted(view);
        view.tick(now_ns());
        for ns in view.namespaces() {
            match self.census.table(ns) {
                Ok(table) => view.apply_table(&table, false),
                Err(why) => view.table_failed(ns, &why),
            }
        }
        counted
    }

    /// Detaches, adds the kernel's last counts to `view`, and hands over
    /// what the ring still held.
    pub async fn finish(mut self, view: &mut ViewState) -> Vec<Event> {
        let mut out = Vec::new();
        if let Some(collector) = self.collector.take() {
            let stopper = tokio::spawn(collector.stop());
            while let Some(batch) = self.rx.recv().await {
                out.extend(self.attribute(batch));
            }
            match stopper.await {
                Ok(Ok(counts)) => {
                    self.take(&counts.totals, view);
                }
                Ok(Err(e)) => log::warn!("reading the ring buffer: {e}"),
                Err(e) => log::warn!("the ring-buffer reader panicked: {e}"),
            }
        }
        out
    }
}
