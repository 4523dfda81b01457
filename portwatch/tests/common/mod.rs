//! What several test binaries share.
#![allow(dead_code)]

use portwatch::journal::{JournalConfig, JournalWriter, Record};
use portwatch::model::{Event, EventKind};

/// The boot id of the records [`journal_with_a_record`] writes.
pub const BOOT: &str = "0d6cbd14-1c4a-4b4e-9fd9-8b7e0e3b2a11";

/// A journal in `dir` holding one record: `server` (pid 42) listening on
/// 0.0.0.0:1433 at 2026-11-23T22:01:02Z.
pub fn journal_with_a_record(dir: &std::path::Path) {
    journal_with_a_listener(dir, "server", "/usr/bin/server --port 1433");
}

/// [`journal_with_a_record`] with this command name and command line.
pub fn journal_with_a_listener(dir: &std::path::Path, comm: &str, cmdline: &str) {
    let mut w = JournalWriter::open(dir, JournalConfig::default()).expect("journal");
    let mut ev = Event::new(1_795_471_262_000_000_000, EventKind::Listen);
    ev.pid = Some(42);
    ev.comm = Some(comm.into());
    ev.cmdline = Some(cmdline.into());
    ev.saddr = Some("0.0.0.0".parse().expect("ip"));
    ev.sport = Some(1433);
    w.append(&Record::event(BOOT.into(), 1, ev))
        .expect("append");
    w.sync().expect("sync");
}
