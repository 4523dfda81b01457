//! `portwatch trace`.

use std::io;

use anyhow::Context as _;

use crate::attribution::{Attributor, Offline};
use crate::cli::TraceArgs;
use crate::filter::EventFilter;
use crate::model::{Hints, LostReason, SourceMsg};
use crate::output::{JsonSink, Sink, TextSink};
use crate::pipeline::Pipeline;
#[cfg(target_os = "linux")]
use crate::timefmt::now_ns;

fn sink(args: &TraceArgs) -> Box<dyn Sink> {
    let stdout = io::stdout();
    if args.json {
        return Box::new(JsonSink::new(stdout));
    }
    let color = crate::term::color(args.color);
    Box::new(TextSink::new(stdout, color).with_width(crate::term::stdout_width()))
}

/// The filter the arguments ask for; a `--comm` the kernel cannot hold is
/// cut as the kernel would, with a warning.
fn filter(args: &TraceArgs) -> EventFilter {
    EventFilter {
        pid: args.pid,
        ports: args.ports.clone(),
        comm: super::comm_filter(args.comm.as_deref()),
        errors_only: args.errors,
    }
}

/// The process (thread group) id of `pid`, if it exists now.
#[cfg(target_os = "linux")]
fn tgid_of(pid: u32) -> Option<u32> {
    let pid = i32::try_from(pid).ok()?;
    let status = procfs::process::Process::new(pid).ok()?.status().ok()?;
    u32::try_from(status.tgid).ok()
}

/// A closed stdout (`portwatch trace | head`) ends the trace quietly.
fn quiet_on_broken_pipe(r: io::Result<()>) -> anyhow::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing output"),
    }
}

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.replay {
        return replay(&args, path);
    }
    live(args).await
}

fn replay(args: &TraceArgs, path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the recording {}", path.display()))?;
    let recording = crate::source::replay::read(io::BufReader::new(file))
        .with_context(|| format!("cannot replay {}", path.display()))?;
    let mut pipeline = Pipeline::new(
        Attributor::new(Offline, Offline),
        filter(args),
        recording.range,
        sink(args),
    )
    .quiet(args.summary_only);
    // The recorded run's own wall time, when its summary says it.
    if let Some((start, _)) = recording.run {
        pipeline = pipeline.started_at(start);
    }
    let mut last = recording.run.map_or(0, |(_, end)| end);
    for ev in recording.events {
        last = last.max(ev.time);
        // Losses inferred from broken chains are inferred again, from the
        // same chains, as the events go through attribution once more.
        if ev.lost_reason == Some(LostReason::Inferred) {
            continue;
        }
        let hints = Hints {
            replayed: true,
            ..Hints::default()
        };
        if !quiet_on_broken_pipe(pipeline.handle(SourceMsg::Event(ev, hints)))? {
            return Ok(());
        }
    }
    quiet_on_broken_pipe(pipeline.finish(last))?;
    Ok(())
}

#[cfg(target_os = "linux")]
async fn live(args: TraceArgs) -> anyhow::Result<()> {
    use crate::source::linux::{CollectorConfig, LinuxCollector, CHANNEL_BATCHES};
    use crate::system::{ephemeral_range, LiveProcesses, LiveSockets, Netns};

    let netns_filter = match &args.netns {
        Some(spec) => Some(resolve_netns(spec)?),
        None => None,
    };
    // A recording's pids are history; a live trace's must exist now.
    if let Some(w) = args
        .pid
        .and_then(|pid| crate::filter::pid_warning(pid, tgid_of))
    {
        eprintln!("portwatch: warning: {w}");
    }
    let cfg = CollectorConfig {
        pid: args.pid,
        ports: args.ports.clone(),
        netns: netns_filter,
        aggregate: args.summary_only,
        ring_bytes: args.ring_bytes,
        stall_reader: args.stall_reader_ms.map(std::time::Duration::from_millis),
        stall_until: args.stall_reader_until.clone(),
        lost_poll: std::time::Duration::from_millis(250),
        ..CollectorConfig::default()
    };
    let mut stop = super::Stop::install(args.duration)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(CHANNEL_BATCHES);
    let mut collector = LinuxCollector::start(&cfg, tx).context("cannot start tracing")?;
    let netns = Netns::new();
    let mut attributor = Attributor::new(
        LiveSockets::new(netns.clone()),
        LiveProcesses::new(netns.clone()),
    )
    .infer_connects(crate::source::connects_inferred(collector.mechanisms()))
    .sparse(cfg.aggregate);
    // Attached: from here on only lookups need privilege (src/privilege.rs).
    // Before the snapshot, whose thread would otherwise keep everything.
    crate::privilege::drop_after_attach_or_warn();
    if let Ok(snap) = super::snapshot(&netns, super::SNAPSHOT_BUDGET).await {
        super::seed(&mut collector, &mut attributor, &snap);
    }
    eprintln!(
        "portwatch: attached {}",
        crate::source::describe(collector.mechanisms())
    );

    let mut pipeline = Pipeline::new(attributor, filter(&args), ephemeral_range(), sink(&args))
        .started_at(now_ns())
        .quiet(args.summary_only);

    // Closes waiting in the FIN_WAIT2 timewait sub-state are re-checked
    // this often.
    let mut recheck = tokio::time::interval(std::time::Duration::from_millis(100));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut open = true;
    loop {
        tokio::select! {
            _ = recheck.tick(), if pipeline.has_pending() => {
                open = quiet_on_broken_pipe(pipeline.poll(now_ns()).and_then(|()| pipeline.flush()))?;
                if !open { break; }
            }
            batch = rx.recv() => match batch {
                Some(batch) => {
                    pipeline.prefetch(&batch);
                    for msg in batch {
                        open = quiet_on_broken_pipe(pipeline.handle(msg))?;
                        if !open { break; }
                    }
                    if open && rx.is_empty() {
                        open = quiet_on_broken_pipe(pipeline.flush())?;
                    }
                    if !open { break; }
                }
                None => break,
            },
            _ = stop.wait() => break,
        }
    }

    // The run ends here; what the ring still holds happened before now.
    let ended = now_ns();
    // Detach, then take what the ring still holds before summarising.
    let ring_events = collector.ring_events();
    let stopper = tokio::spawn(collector.stop());
    while let Some(batch) = rx.recv().await {
        pipeline.prefetch(&batch);
        for msg in batch {
            if open {
                open = quiet_on_broken_pipe(pipeline.handle(msg))?;
            }
        }
    }
    let counts = stopper
        .await
        .context("the ring-buffer reader panicked")?
        .context("reading the ring buffer")?;
    if cfg.aggregate {
        // Chains the kernel found broken: userspace sees too few
        // transitions in this mode to follow them itself.
        let gaps = counts
            .totals
            .slots
            .get(portwatch_common::counts::GAPS as usize);
        if let (Some(&count), true) = (gaps, open) {
            if count > 0 {
                let lost = SourceMsg::Lost {
                    time: ended,
                    count,
                    reason: LostReason::Inferred,
                };
                open = quiet_on_broken_pipe(pipeline.handle(lost))?;
            }
        }
        pipeline.set_kernel_counts(counts.procs);
    }
    pipeline.set_ring_events(ring_events.load(std::sync::atomic::Ordering::Relaxed));
    if open {
        quiet_on_broken_pipe(pipeline.finish(ended))?;
    }
    Ok(())
}

/// The ETW collector feeds the same pipeline (src/source/windows).
/// `--netns`: a namespace inode, the path of a namespace file
/// (`/proc/PID/ns/net`, `/run/netns/NAME`), or a pid in it.
#[cfg(target_os = "linux")]
pub fn resolve_netns(spec: &str) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    // Pids stay below 2^22 (pid_max's ceiling); namespace inodes are far above.
    const PID_MAX_LIMIT: u64 = 1 << 22;
    let path = match spec.parse::<u64>() {
        Ok(n) if n >= PID_MAX_LIMIT => {
            return u32::try_from(n)
                .map_err(|_| anyhow::anyhow!("--netns {n}: not a namespace inode (too large)"));
        }
        Ok(pid) => format!("/proc/{pid}/ns/net"),
        Err(_) => spec.to_owned(),
    };
    let meta = std::fs::metadata(&path).with_context(|| {
        format!("--netns {spec}: cannot read {path}; give a namespace inode (ls -iL /proc/PID/ns/net), a pid in the namespace, or a path such as /run/netns/NAME")
    })?;
    u32::try_from(meta.ino()).map_err(|_| anyhow::anyhow!("--netns {spec}: inode out of range"))
}

#[cfg(windows)]
async fn live(args: TraceArgs) -> anyhow::Result<()> {
    let (filter, sink) = (filter(&args), sink(&args));
    crate::source::windows::live::trace(&args, filter, sink, quiet_on_broken_pipe).await
}
