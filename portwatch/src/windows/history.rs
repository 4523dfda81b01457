//! `portwatch history` on Windows: the AutoLogger's .etl file, decoded by
//! the live collector's decoders and connection table, becomes journal
//! records, and the journal's queries answer over them (`--first`, `--port`,
//! `--boot`, `--json`): the same answers and JSON as on Linux.

use crate::journal::Record;
use crate::model::Event;
use crate::source::windows::payload::filetime_to_unix_ns;

/// The file the AutoLogger writes, in the journal folder.
pub const ETL_NAME: &str = "portwatch.etl";

/// Journal records for the events of one .etl file, whose header says the
/// machine booted at `boot_filetime`: the boot id is the one this boot's
/// `journal::boot_id()` gives, and `mono_ns` the time since boot.
pub fn records(events: Vec<Event>, boot_filetime: i64) -> Vec<Record> {
    let boot_ns = filetime_to_unix_ns(boot_filetime);
    let boot_id = super::boot_id_from(boot_ns, 0);
    events
        .into_iter()
        .map(|event| {
            let mono_ns = u64::try_from(event.time - boot_ns).unwrap_or(0);
            Record::event(boot_id.clone(), mono_ns, event)
        })
        .collect()
}

/// `--journal` names the folder (or the .etl itself).
pub fn etl_path(journal: &std::path::Path) -> std::path::PathBuf {
    if journal
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("etl"))
    {
        journal.to_path_buf()
    } else {
        journal.join(ETL_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::history::{first_taker, How};
    use crate::model::{EventKind, TcpState};
    use crate::source::windows::conn::ConnTable;
    use crate::source::windows::payload::build::Payload;
    use crate::source::windows::tcpip;
    use crate::source::windows::{decode, PointerSize, Provider, RawEvent};

    /// A boot's worth of ETW events, manifest-shaped: a client connects from
    /// port 1433 (its ephemeral port) before SQL Server's listener fails.
    #[test]
    fn an_etl_boot_answers_who_took_the_port_first() {
        let p = PointerSize::Eight;
        let raw = |id, version, data: &[u8], time| {
            decode(&RawEvent {
                provider: Provider::Tcpip,
                id,
                version,
                pointer: p,
                time,
                header_pid: 0,
                data,
            })
            .unwrap()
        };
        let boot_ft: i64 = 116_444_736_000_000_000 + 1_700_000_000 * 10_000_000;
        let boot_ns = filetime_to_unix_ns(boot_ft);
        let state = |old: u32, new: u32| Payload::default().u32(old).u32(new).u32(0).u64(0xa0).0;
        let connect = Payload::default()
            .sockaddr("127.0.0.1:1433")
            .sockaddr("127.0.0.1:8080")
            .u32(0)
            .u32(1749)
            .u32(1)
            .u64(0xa0)
            .u64(1)
            .0;
        let bind_failed = Payload::default()
            .u64(0xb0)
            .sockaddr("0.0.0.0:1433")
            .u32(0xC000_020A)
            .u32(2000)
            .u32(1)
            .u32(2)
            .0;
        let mut conn = ConnTable::new();
        let mut msgs = Vec::new();
        let t = |s: i128| boot_ns + s * 1_000_000_000;
        for (d, time) in [
            (raw(tcpip::TCB_STATE_CHANGE, 0, &state(0, 2), t(5)), t(5)),
            (raw(tcpip::TCB_STATE_CHANGE, 0, &state(2, 4), t(5)), t(5)),
            (raw(tcpip::CONNECT_COMPLETE, 1, &connect, t(5)), t(5)),
            (
                raw(tcpip::LISTENER_BIND_FAILED_PORT, 0, &bind_failed, t(9)),
                t(9),
            ),
        ] {
            conn.push(d, time, &mut msgs);
        }
        let events: Vec<Event> = msgs
            .into_iter()
            .filter_map(|m| match m {
                crate::model::SourceMsg::Event(e, _) => Some(e),
                _ => None,
            })
            .collect();
        let recs = records(events, boot_ft);
        assert!(recs.iter().all(|r| r.boot_id == "boot-1700000000"));
        assert_eq!(recs[0].mono_ns, 5_000_000_000);
        let refs: Vec<&Record> = recs.iter().collect();
        let (first, how) = first_taker(&refs, 1433).expect("a taker");
        assert_eq!(how, How::Ephemeral);
        assert_eq!(first.event.pid, Some(1749));
        assert_eq!(first.event.old_state, Some(TcpState::SynSent));
        let failed = recs
            .iter()
            .find(|r| r.event.event == EventKind::Bind)
            .unwrap();
        assert_eq!(failed.event.errno.as_deref(), Some("EADDRINUSE"));
        assert_eq!(failed.event.pid, Some(2000));
    }

    #[test]
    fn the_journal_option_may_name_the_file_or_its_folder() {
        assert_eq!(
            etl_path("C:/x/boot.ETL".as_ref()),
            std::path::PathBuf::from("C:/x/boot.ETL")
        );
        assert_eq!(
            etl_path("C:/x".as_ref()),
            std::path::Path::new("C:/x").join(ETL_NAME)
        );
    }
}
