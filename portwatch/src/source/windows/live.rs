//! `portwatch trace` on Windows: the ETW session feeding the shared
//! pipeline (attribution, filters, aggregation, text/JSON output).

use std::io;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::time::Duration;

use anyhow::Context as _;

use super::conn::ConnTable;
use super::session::{open, OwnedEvent, Session, Source, SESSION_NAME};
use super::{decode, DecodeError};
use crate::aggregate::PortRange;
use crate::attribution::Attributor;
use crate::cli::TraceArgs;
use crate::filter::EventFilter;
use crate::model::LostReason;
use crate::model::{Family, SourceMsg};
use crate::output::Sink;
use crate::pipeline::Pipeline;
use crate::timefmt::now_ns;
use crate::windows::netsh;
use crate::windows::sys::{self, WinProcesses, WinSockets};

/// Events waiting between ETW's callback thread and the pipeline.
const CHANNEL: usize = 65536;
const BATCH: usize = 8192;

type Quiet = fn(io::Result<()>) -> anyhow::Result<bool>;

struct Loop {
    pipeline: Pipeline<WinSockets, WinProcesses>,
    conn: ConnTable,
    names: WinProcesses,
    msgs: Vec<SourceMsg>,
    undecodable: u64,
    first_error: Option<DecodeError>,
}

impl Loop {
    fn take(&mut self, ev: OwnedEvent) {
        match decode(&ev.raw()) {
            Ok(d) => self.conn.push(d, ev.time, &mut self.msgs),
            Err(e) => {
                self.undecodable += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Hands what has accumulated to the pipeline.
    fn flush(&mut self, quiet: Quiet) -> anyhow::Result<bool> {
        for mut msg in self.msgs.drain(..) {
            if let SourceMsg::Event(ev, _) = &mut msg {
                if ev.comm.is_none() {
                    ev.comm = ev.pid.and_then(|p| self.names.name(p)).map(Into::into);
                }
            }
            if !quiet(self.pipeline.handle(msg))? {
                return Ok(false);
            }
        }
        quiet(self.pipeline.flush())
    }

    fn drain(&mut self, rx: &Receiver<OwnedEvent>) -> bool {
        for _ in 0..BATCH {
            match rx.try_recv() {
                Ok(ev) => self.take(ev),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        true
    }
}

/// The dynamic port range as the aggregation's ephemeral range.
fn dynamic_range() -> Option<PortRange> {
    let text = sys::netsh("int ipv4 show dynamicport tcp").ok()?;
    let d = netsh::parse_dynamic_port(&text).ok()?;
    Some(PortRange {
        low: d.start,
        high: d.end(),
    })
}

pub async fn trace(
    args: &TraceArgs,
    filter: EventFilter,
    sink: Box<dyn Sink>,
    quiet: Quiet,
) -> anyhow::Result<()> {
    let mut session = Session::start(SESSION_NAME).context("cannot start tracing")?;
    let (tx, rx) = sync_channel(CHANNEL);
    let opened = open(Source::RealTime(SESSION_NAME), tx).context("cannot start tracing")?;
    let consumer = std::thread::Builder::new()
        .name("etw-consumer".into())
        .spawn(move || opened.process())
        .context("cannot start the ETW consumer thread")?;
    let mut ctrl_c = tokio::signal::windows::ctrl_c().context("installing the Ctrl-C handler")?;
    let mut ctrl_break =
        tokio::signal::windows::ctrl_break().context("installing the Ctrl-Break handler")?;
    eprintln!(
        "portwatch: attached state=etw Microsoft-Windows-TCPIP TcpTcbStateChange, connect=etw TCPIP TcpConnectTcbComplete/Failure/FailedPortAcquire, bind=etw Winsock-AFD AfdBindWithAddress + TCPIP TcpListenerBindFailedPort, timewait=etw TCB state (session {SESSION_NAME})"
    );

    let mut lp = Loop {
        pipeline: Pipeline::new(
            Attributor::new(WinSockets, WinProcesses::default()),
            filter,
            dynamic_range(),
            sink,
        )
        .quiet(args.summary_only),
        conn: ConnTable::new(),
        names: WinProcesses::default(),
        msgs: Vec::new(),
        undecodable: 0,
        first_error: None,
    };
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut lost_poll = tokio::time::interval(Duration::from_millis(250));
    let mut lost_seen = (0u64, 0u64);
    let mut open = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let alive = lp.drain(&rx);
                lp.conn.release_expired(now_ns(), &mut lp.msgs);
                open = lp.flush(quiet)?;
                if !open || !alive { break; }
            }
            _ = lost_poll.tick() => {
                if let Some((events, buffers)) = session.lost() {
                    let delta = events.saturating_sub(lost_seen.0) + buffers.saturating_sub(lost_seen.1);
                    lost_seen = (events, buffers);
                    if delta > 0 {
                        lp.msgs.push(SourceMsg::Lost {
                            time: now_ns(),
                            count: delta,
                            reason: LostReason::RingBuffer,
                        });
                    }
                }
            }
            _ = ctrl_c.recv() => break,
            _ = ctrl_break.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
    }

    // Final loss figures, then stop: ProcessTrace returns and the
    // consumer thread ends; take what it still delivered.
    if let Some((events, buffers)) = session.lost() {
        let delta = events.saturating_sub(lost_seen.0) + buffers.saturating_sub(lost_seen.1);
        if delta > 0 {
            lp.msgs.push(SourceMsg::Lost {
                time: now_ns(),
                count: delta,
                reason: LostReason::RingBuffer,
            });
        }
    }
    session.stop();
    let consumed = consumer.join();
    while lp.drain(&rx) {
        if rx.try_recv().is_err() {
            break;
        }
    }
    lp.conn.release_expired(i128::MAX, &mut lp.msgs);
    if open {
        open = lp.flush(quiet)?;
    }
    if open {
        quiet(lp.pipeline.finish(now_ns()))?;
    }
    for (family, seconds) in &lp.conn.notes.time_wait_delay {
        let f = match family {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        };
        eprintln!("portwatch: TIME_WAIT lasts {seconds} s for {f} (TcpGlobalParameters)");
    }
    if lp.undecodable > 0 {
        eprintln!(
            "portwatch: {} events could not be decoded (first: {}); please report it with your Windows build number",
            lp.undecodable,
            lp.first_error.map_or_else(String::new, |e| e.to_string())
        );
    }
    match consumed {
        Ok(r) => r.map(|_| ()).context("reading the ETW session"),
        Err(_) => anyhow::bail!("the ETW consumer thread panicked"),
    }
}

/// Reads an .etl file (the AutoLogger's) into model events, through the
/// same decoders and connection table as a live trace. Returns the events
/// and the boot time of the trace (FILETIME).
pub fn read_etl(path: &std::path::Path) -> anyhow::Result<(Vec<crate::model::Event>, i64)> {
    let (tx, rx) = sync_channel(CHANNEL);
    let opened =
        open(Source::File(path), tx).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = std::thread::spawn(move || opened.process());
    let mut conn = ConnTable::new();
    let mut msgs = Vec::new();
    for ev in rx.iter() {
        if let Ok(d) = decode(&ev.raw()) {
            conn.push(d, ev.time, &mut msgs);
        }
    }
    conn.release_expired(i128::MAX, &mut msgs);
    let boot = match reader.join() {
        Ok(r) => r.with_context(|| format!("cannot read {}", path.display()))?,
        Err(_) => anyhow::bail!("the .etl reader thread panicked"),
    };
    let events = msgs
        .into_iter()
        .filter_map(|m| match m {
            // No names: the processes of a past boot are gone, and their
            // pids may belong to others now.
            SourceMsg::Event(e, _) => Some(e),
            SourceMsg::Lost { .. } => None,
        })
        .collect();
    Ok((events, boot))
}
