//! `portwatch record`: the long-running recorder behind `history`.

use std::time::Duration;

use anyhow::Context as _;

use crate::attribution::Attributor;
use crate::cli::RecordArgs;
use crate::journal::{self, JournalConfig, JournalWriter, Mark, Record};
use crate::model::{Attribution, Event, EventKind, Family, Protocol, SourceMsg, TcpState};
use crate::source::linux::decode::Clock;
use crate::source::linux::{CollectorConfig, LinuxCollector, CHANNEL_BATCHES};
use crate::system::{LiveProcesses, LiveSockets, Netns};

/// What the journal keeps: how ports are taken (bind, listen, the local port
/// of an outgoing connection), given back (close), and every failure. The
/// intermediate states of a connection would only dilute it.
pub fn journal_worthy(ev: &Event) -> bool {
    match ev.event {
        EventKind::Bind | EventKind::Listen | EventKind::Timewait | EventKind::Lost => true,
        // A successful connect is journaled by its SYN_SENT -> ESTABLISHED,
        // which also carries the local port the kernel chose.
        EventKind::Connect => ev.is_failure(),
        EventKind::State => {
            ev.new_state == Some(TcpState::Close)
                || (ev.old_state == Some(TcpState::SynSent)
                    && ev.new_state == Some(TcpState::Established))
        }
    }
}

/// What the recorder's loop hands to attribution.
enum Work {
    Batch(Vec<SourceMsg>),
    /// Re-check closes still in the FIN_WAIT2 timewait sub-state; `last`
    /// when the recorder stops.
    Recheck {
        last: bool,
    },
}

/// Tells systemd (Type=notify) that the recorder is attached.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot notify systemd: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = result {
        log::warn!("cannot notify systemd: {e}");
    }
}

pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    let cfg = JournalConfig {
        max_total_bytes: args.max_size,
        // Four segments at least under the cap, so that `--max-size 1M`
        // works and deleting the oldest never takes most of the journal.
        segment_bytes: (args.max_size / 4).clamp(journal::MIN_SEGMENT_BYTES, 4 << 20),
        fsync: args.fsync.policy(),
    };
    let mut writer = JournalWriter::open(&args.journal, cfg)
        .with_context(|| format!("cannot open the journal in {}", args.journal.display()))?;
    let boot_id = journal::boot_id().context("cannot read the boot id")?;
    // For events the kernel did not stamp (TIME_WAIT seen by a re-check);
    // refreshed with the collector's, so a wall-clock step moves only what
    // comes after it.
    let clock = std::cell::Cell::new(Clock::new());

    let mut stop = super::Stop::install(args.duration)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(CHANNEL_BATCHES);
    let mut collector = LinuxCollector::start(
        &CollectorConfig {
            lost_poll: Duration::from_millis(500),
            ..CollectorConfig::default()
        },
        tx,
    )
    .context("cannot start recording")?;
    let netns = Netns::new();
    let mut attributor = Attributor::new(
        LiveSockets::new(netns.clone()),
        LiveProcesses::new(netns.clone()),
    )
    .infer_connects(crate::source::connects_inferred(collector.mechanisms()));
    // From here on, every port taken is an event: say so first, then what
    // was taken already.
    let started = crate::timefmt::now_ns();
    let mark = |time: i128, mark: Mark| Record {
        mark: Some(mark),
        ..Record::event(
            boot_id.clone(),
            journal::mono_ns(),
            Event::new(time, EventKind::State),
        )
    };
    writer
        .append(&mark(started, Mark::Started))
        .context("writing the journal")?;
    // Attached: from here on only lookups need privilege (src/privilege.rs).
    // Before the snapshot, whose thread would otherwise keep everything.
    crate::privilege::drop_after_attach_or_warn();
    let ns = netns.clone();
    let existing = super::off_thread(super::SNAPSHOT_BUDGET, move || {
        let snap = crate::system::snapshot::take(&ns);
        let events = existing_sockets(&snap, &mut LiveProcesses::new(ns), started);
        (snap, events)
    })
    .await;
    match existing {
        Ok((snap, events)) => {
            super::seed(&mut collector, &mut attributor, &snap);
            let mono = journal::mono_ns();
            for event in events {
                let rec = Record {
                    mark: Some(Mark::Existing),
                    ..Record::event(boot_id.clone(), mono, event)
                };
                writer.append(&rec).context("writing the journal")?;
            }
            if !snap.unreadable.is_empty() {
                let why = snap
                    .unreadable
                    .iter()
                    .map(|(ino, why)| format!("network namespace {ino}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                writer
                    .append(&mark(started, Mark::SnapshotIncomplete { why }))
                    .context("writing the journal")?;
            }
        }
        Err(why) => {
            eprintln!("portwatch: warning: listing the sockets that predate the recorder: {why}; the journal says so");
            writer
                .append(&mark(started, Mark::SnapshotIncomplete { why }))
                .context("writing the journal")?;
        }
    }
    eprintln!(
        "portwatch: attached {}; recording to {}",
        crate::source::describe(collector.mechanisms()),
        args.journal.display()
    );
    notify_ready();

    let mut append = |writer: &mut JournalWriter, work: Work| -> anyhow::Result<()> {
        let events: Vec<Event> = match work {
            Work::Batch(batch) => {
                attributor.prefetch(&batch);
                batch
                    .into_iter()
                    .flat_map(|msg| attributor.process(msg))
                    .collect()
            }
            Work::Recheck { last } => attributor.poll(crate::timefmt::now_ns(), last),
        };
        for ev in events {
            if journal_worthy(&ev) {
                let mono_ns = if ev.boot_ns != 0 {
                    ev.boot_ns
                } else {
                    clock.get().boot_ns(ev.time)
                };
                let time = ev.time;
                writer
                    .append(&Record::event(boot_id.clone(), mono_ns, ev))
                    .context("writing the journal")?;
                // What deleting the oldest segments took is gone: say when.
                let segments = writer.take_deleted();
                if segments > 0 {
                    let rec = Record {
                        mark: Some(Mark::Deleted { segments }),
                        ..Record::event(
                            boot_id.clone(),
                            mono_ns,
                            Event::new(time, EventKind::State),
                        )
                    };
                    writer.append(&rec).context("writing the journal")?;
                }
            }
        }
        Ok(())
    };

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => append(&mut writer, Work::Batch(batch))?,
                None => break,
            },
            _ = tick.tick() => {
                let mut c = clock.get();
                c.refresh();
                clock.set(c);
                append(&mut writer, Work::Recheck { last: false })?;
                writer.sync_if_due().context("syncing the journal")?;
            }
            _ = stop.wait() => break,
        }
    }
    let stopper = tokio::spawn(collector.stop());
    while let Some(batch) = rx.recv().await {
        append(&mut writer, Work::Batch(batch))?;
    }
    stopper
        .await
        .context("the ring-buffer reader panicked")?
        .context("reading the ring buffer")?;
    append(&mut writer, Work::Recheck { last: true })?;
    writer
        .append(&mark(crate::timefmt::now_ns(), Mark::Stopped))
        .context("writing the journal")?;
    writer.sync().context("syncing the journal")?;
    Ok(())
}

/// The sockets of the start-up snapshot as events for the journal (TCP
/// listeners and connections; TIME_WAIT and orphans have no owner), with
/// their owners' command lines and cgroups where /proc still shows them.
fn existing_sockets(
    snap: &crate::system::snapshot::StartSnapshot,
    processes: &mut impl crate::attribution::ProcessLookup,
    time: i128,
) -> Vec<Event> {
    use crate::system::snapshot::SeedOwner;
    let mut infos = std::collections::HashMap::new();
    let mut event =
        |kind, netns: u64, tuple: crate::attribution::Tuple, state, owner: Option<&SeedOwner>| {
            let (saddr, sport, daddr, dport) = tuple;
            let mut ev = Event::new(time, kind);
            ev.family = Some(match saddr {
                std::net::IpAddr::V4(_) => Family::Ipv4,
                std::net::IpAddr::V6(_) => Family::Ipv6,
            });
            ev.protocol = Some(Protocol::Tcp);
            (ev.saddr, ev.sport, ev.daddr, ev.dport) =
                (Some(saddr), Some(sport), Some(daddr), Some(dport));
            ev.new_state = state;
            ev.netns = Some(netns);
            if let Some(o) = owner {
                (ev.pid, ev.tid, ev.uid) = (Some(o.pid), Some(o.pid), Some(o.uid));
                ev.comm = Some(o.comm.as_str().into());
                ev.attribution = Attribution::Remembered;
                let info = infos
                    .entry(o.pid)
                    .or_insert_with(|| processes.lookup(o.pid))
                    .clone();
                if let Some(info) = info {
                    (ev.cmdline, ev.cgroup, ev.container_pid) = (
                        info.cmdline.map(Into::into),
                        info.cgroup.map(Into::into),
                        info.container_pid,
                    );
                }
            }
            ev
        };
    let unspecified = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        std::net::IpAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let mut out = Vec::new();
    for l in &snap.listeners {
        let tuple = (l.addr, l.port, unspecified(&l.addr), 0);
        out.push(event(
            EventKind::Listen,
            l.netns,
            tuple,
            Some(TcpState::Listen),
            l.owner.as_ref(),
        ));
    }
    for c in &snap.connections {
        let mut ev = event(
            EventKind::State,
            c.netns,
            c.tuple,
            TcpState::from_kernel(c.state),
            c.owner.as_ref(),
        );
        ev.side = Some(c.side);
        out.push(ev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(old: TcpState, new: TcpState) -> Event {
        let mut ev = Event::new(0, EventKind::State);
        ev.old_state = Some(old);
        ev.new_state = Some(new);
        ev
    }

    #[test]
    fn the_journal_keeps_port_acquisitions_releases_and_failures() {
        assert!(journal_worthy(&Event::new(0, EventKind::Bind)));
        assert!(journal_worthy(&Event::new(0, EventKind::Listen)));
        assert!(journal_worthy(&Event::new(0, EventKind::Timewait)));
        assert!(journal_worthy(&Event::lost(
            0,
            3,
            crate::model::LostReason::RingBuffer
        )));
        let mut connect = Event::new(0, EventKind::Connect);
        connect.set_ret(-99);
        assert!(journal_worthy(&connect));
        connect.set_ret(0);
        assert!(!journal_worthy(&connect));
        assert!(journal_worthy(&state(
            TcpState::SynSent,
            TcpState::Established
        )));
        assert!(journal_worthy(&state(TcpState::LastAck, TcpState::Close)));
        assert!(!journal_worthy(&state(
            TcpState::Established,
            TcpState::FinWait1
        )));
        assert!(!journal_worthy(&state(
            TcpState::SynRecv,
            TcpState::Established
        )));
    }
}
