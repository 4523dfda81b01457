//! `portwatch record`: the long-running recorder behind `history`.

use std::time::Duration;

use anyhow::Context as _;

use crate::attribution::Attributor;
use crate::cli::RecordArgs;
use crate::journal::{self, JournalConfig, JournalWriter, Record};
use crate::model::{Event, EventKind, SourceMsg, TcpState};
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
        fsync: args.fsync.policy(),
        ..JournalConfig::default()
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
    // Attached: from here on only lookups need privilege (src/privilege.rs).
    // Before the snapshot, whose thread would otherwise keep everything.
    crate::privilege::drop_after_attach_or_warn();
    if let Ok(snap) = super::snapshot(&netns, super::SNAPSHOT_BUDGET).await {
        super::seed(&mut collector, &mut attributor, &snap);
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
                let rec = Record {
                    boot_id: boot_id.clone(),
                    mono_ns: if ev.boot_ns != 0 {
                        ev.boot_ns
                    } else {
                        clock.get().boot_ns(ev.time)
                    },
                    event: ev,
                };
                writer.append(&rec).context("writing the journal")?;
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
    writer.sync().context("syncing the journal")?;
    Ok(())
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
