//! `portwatch who PORT`: every socket on a port right now, and who owns it.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;

use anyhow::Context as _;
use serde::Serialize;

use crate::attribution::ProcessLookup;
use crate::cli::WhoArgs;
use crate::model::{Family, Protocol, TcpState};
use crate::output::one_line;
use crate::procfd;
use crate::sockdiag::{Proto, SockDiag, SocketEntry};
use crate::system::{unit_from_cgroup, LiveProcesses};

/// One socket, with the trace schema's field names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SocketView {
    pub protocol: Protocol,
    pub family: Family,
    /// TCP state name; for UDP `UNCONN` or `ESTABLISHED`, as ss prints them.
    pub state: String,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub inode: u64,
    pub uid: u32,
    pub user: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// systemd unit or container the owner runs in.
    pub unit: Option<String>,
    /// Other processes sharing the socket (after fork or fd passing).
    pub also: Vec<u32>,
    /// Why there is no owner, when there is none.
    pub no_owner: Option<String>,
    /// For a socket with no owner: the process the journal saw create it.
    pub created_by: Option<CreatedBy>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CreatedBy {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(with = "crate::timefmt::rfc3339_ns")]
    pub time: i128,
}

/// Names the creators of ownerless sockets from the journal's records of
/// this boot: the latest record of the same connection that has a process.
pub fn add_creators(report: &mut WhoReport, records: &[crate::journal::Record], boot_id: &str) {
    for s in report.sockets.iter_mut().filter(|s| s.pid.is_none()) {
        let found = records.iter().rev().find(|r| {
            let e = &r.event;
            r.boot_id == boot_id
                && e.pid.is_some()
                && e.saddr == Some(s.saddr)
                && e.sport == Some(s.sport)
                && e.daddr == Some(s.daddr)
                && e.dport == Some(s.dport)
        });
        if let Some(r) = found {
            s.created_by = Some(CreatedBy {
                pid: r.event.pid,
                comm: r.event.comm.as_deref().map(String::from),
                time: r.event.time,
            });
        }
    }
}

#[derive(Debug, Serialize)]
pub struct WhoReport {
    pub port: u16,
    pub sockets: Vec<SocketView>,
    /// What could not be seen, and how to see it.
    pub missing: Option<String>,
}

fn state_name(e: &SocketEntry) -> String {
    match e.proto {
        Proto::Tcp => TcpState::from_kernel(e.state)
            .map_or_else(|| format!("STATE{}", e.state), |s| s.name().to_owned()),
        Proto::Udp if e.state == 1 => "ESTABLISHED".to_owned(),
        Proto::Udp => "UNCONN".to_owned(),
    }
}

fn user_name(uid: u32, cache: &mut HashMap<u32, Option<String>>) -> Option<String> {
    cache
        .entry(uid)
        .or_insert_with(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .clone()
}

/// Builds the report from a snapshot; `owners` maps inodes to processes.
pub fn report(
    port: u16,
    entries: Vec<SocketEntry>,
    owners: &HashMap<u64, Vec<procfd::SocketOwner>>,
    processes: &mut impl ProcessLookup,
    privileged: bool,
) -> WhoReport {
    let mut users = HashMap::new();
    let mut unowned_unknown = 0u64;
    let mut sockets: Vec<SocketView> = entries
        .into_iter()
        .map(|e| {
            let found = owners.get(&e.inode);
            let first = found.and_then(|v| v.first());
            let info = first.and_then(|o| processes.lookup(o.pid));
            let state = state_name(&e);
            let no_owner = if first.is_some() {
                None
            } else if e.inode == 0 {
                Some(match state.as_str() {
                    "TIME_WAIT" => {
                        "TIME_WAIT sockets belong to the kernel, not to a process".to_owned()
                    }
                    _ => {
                        "orphaned: its process closed it and the kernel is finishing the connection"
                            .to_owned()
                    }
                })
            } else if !privileged {
                unowned_unknown += 1;
                Some("owner not visible without root".to_owned())
            } else {
                Some("no process holds it open".to_owned())
            };
            let cgroup = info.as_ref().and_then(|i| i.cgroup.clone());
            SocketView {
                protocol: match e.proto {
                    Proto::Tcp => Protocol::Tcp,
                    Proto::Udp => Protocol::Udp,
                },
                family: match e.saddr {
                    IpAddr::V4(_) => Family::Ipv4,
                    IpAddr::V6(_) => Family::Ipv6,
                },
                state,
                saddr: e.saddr,
                sport: e.sport,
                daddr: e.daddr,
                dport: e.dport,
                inode: e.inode,
                uid: e.uid,
                user: user_name(e.uid, &mut users),
                pid: first.map(|o| o.pid),
                comm: first.map(|o| o.comm.clone()),
                cmdline: info.as_ref().and_then(|i| i.cmdline.clone()),
                unit: cgroup.as_deref().and_then(unit_from_cgroup),
                cgroup,
                also: found
                    .map(|v| v.iter().skip(1).map(|o| o.pid).collect())
                    .unwrap_or_default(),
                no_owner,
                created_by: None,
            }
        })
        .collect();
    // Listeners first, then by state and address, as an operator reads them.
    sockets.sort_by(|a, b| {
        (
            a.state != "LISTEN",
            a.protocol.name(),
            &a.state,
            a.saddr,
            a.daddr,
            a.dport,
        )
            .cmp(&(
                b.state != "LISTEN",
                b.protocol.name(),
                &b.state,
                b.saddr,
                b.daddr,
                b.dport,
            ))
    });
    WhoReport {
        port,
        sockets,
        missing: (unowned_unknown > 0).then(|| {
            format!(
                "the owners of {} belong to other users: run `sudo portwatch who {port}` to see them",
                crate::plural(unowned_unknown, "socket", "sockets")
            )
        }),
    }
}

fn endpoint(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V6(a) => format!("[{a}]:{p}"),
        IpAddr::V4(a) => format!("{a}:{p}"),
    }
}

pub fn write_text(r: &WhoReport, out: &mut impl Write) -> io::Result<()> {
    if r.sockets.is_empty() {
        writeln!(
            out,
            "nothing is bound to port {} (TCP or UDP, IPv4 or IPv6) in this network namespace",
            r.port
        )?;
    } else {
        writeln!(
            out,
            "{:<5} {:<11} {:<28} {:<28} {:>7} {:<15} {:<10} UNIT / COMMAND",
            "PROTO", "STATE", "LOCAL", "REMOTE", "PID", "COMM", "USER"
        )?;
        for s in &r.sockets {
            let who = match (&s.unit, &s.cmdline) {
                (Some(u), Some(c)) => format!("{u}  {}", one_line(c, 60)),
                (Some(u), None) => u.clone(),
                (None, Some(c)) => one_line(c, 80),
                (None, None) => match &s.created_by {
                    Some(c) => format!(
                        "created by {}[{}] (journal); {}",
                        c.comm.as_deref().unwrap_or("?"),
                        c.pid.map_or("?".to_owned(), |p| p.to_string()),
                        s.no_owner.clone().unwrap_or_default()
                    ),
                    None => s.no_owner.clone().unwrap_or_default(),
                },
            };
            writeln!(
                out,
                "{:<5} {:<11} {:<28} {:<28} {:>7} {:<15} {:<10} {}",
                s.protocol.name(),
                s.state,
                endpoint(s.saddr, s.sport),
                endpoint(s.daddr, s.dport),
                s.pid.map_or("-".to_owned(), |p| p.to_string()),
                s.comm.as_deref().unwrap_or("-"),
                s.user.clone().unwrap_or_else(|| s.uid.to_string()),
                who
            )?;
        }
    }
    if let Some(m) = &r.missing {
        writeln!(out, "note: {m}")?;
    }
    Ok(())
}

/// The sockets on `port` right now with their owners, and for ownerless
/// ones the creator the recorder's journal in `journal` names, if it exists.
pub fn snapshot(port: u16, journal: &std::path::Path) -> anyhow::Result<WhoReport> {
    let mut diag = SockDiag::new().context("cannot open a sock_diag netlink socket")?;
    let entries = diag
        .sockets_on_port(port)
        .with_context(|| format!("cannot list the sockets on port {port}"))?;
    let owners = crate::system::owners_of(&entries);
    let privileged = crate::source::linux::capabilities().is_root();
    let mut r = report(
        port,
        entries,
        &owners,
        &mut LiveProcesses::default(),
        privileged,
    );
    if r.sockets.iter().any(|s| s.pid.is_none()) && journal.is_dir() {
        match (crate::journal::read_dir(journal), crate::journal::boot_id()) {
            (Ok(outcome), Ok(boot)) => add_creators(&mut r, &outcome.records, &boot),
            (Err(e), _) => log::warn!("cannot read the journal in {}: {e}", journal.display()),
            (_, Err(e)) => log::warn!("cannot read the boot id: {e}"),
        }
    }
    Ok(r)
}

pub fn run(args: WhoArgs) -> anyhow::Result<()> {
    let r = snapshot(args.port, &args.journal)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if args.json {
        serde_json::to_writer(&mut out, &r)?;
        writeln!(out)?;
    } else {
        write_text(&r, &mut out)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::ProcessInfo;

    struct Procs;
    impl ProcessLookup for Procs {
        fn lookup(&mut self, pid: u32) -> Option<ProcessInfo> {
            Some(ProcessInfo {
                cmdline: Some(format!("/opt/mssql/bin/sqlservr\n--pid {pid}")),
                cgroup: Some("/system.slice/mssql-server.service".into()),
                netns: None,
                container_pid: None,
            })
        }
    }

    fn entry(proto: Proto, state: u8, sport: u16, dport: u16, inode: u64) -> SocketEntry {
        SocketEntry {
            proto,
            state,
            saddr: "0.0.0.0".parse().expect("ip"),
            sport,
            daddr: "10.0.0.5".parse().expect("ip"),
            dport,
            inode,
            uid: 0,
            ipv6_only: false,
        }
    }

    #[test]
    fn owners_units_and_ownerless_sockets_are_explained() {
        let owners = HashMap::from([(
            11,
            vec![
                procfd::SocketOwner {
                    pid: 900,
                    comm: "sqlservr".into(),
                },
                procfd::SocketOwner {
                    pid: 901,
                    comm: "sqlservr".into(),
                },
            ],
        )]);
        let r = report(
            1433,
            vec![
                entry(Proto::Tcp, 6, 1433, 50000, 0),
                entry(Proto::Udp, 7, 1433, 0, 12),
                entry(Proto::Tcp, 10, 1433, 0, 11),
            ],
            &owners,
            &mut Procs,
            false,
        );
        assert_eq!(r.sockets[0].state, "LISTEN", "listeners first");
        assert_eq!(r.sockets[0].pid, Some(900));
        assert_eq!(r.sockets[0].also, vec![901]);
        assert_eq!(r.sockets[0].unit.as_deref(), Some("mssql-server.service"));
        let tw = r
            .sockets
            .iter()
            .find(|s| s.state == "TIME_WAIT")
            .expect("tw");
        assert!(tw.no_owner.as_deref().is_some_and(|w| w.contains("kernel")));
        let udp = r.sockets.iter().find(|s| s.state == "UNCONN").expect("udp");
        assert_eq!(udp.pid, None);
        assert_eq!(
            r.missing.as_deref(),
            Some("the owners of 1 socket belong to other users: run `sudo portwatch who 1433` to see them")
        );
        let mut text = Vec::new();
        write_text(&r, &mut text).expect("write");
        let text = String::from_utf8(text).expect("utf8");
        assert_eq!(
            text.lines().count(),
            5,
            "header, 3 sockets, note; newlines in cmdlines flattened:\n{text}"
        );
        assert!(text.contains("mssql-server.service  /opt/mssql/bin/sqlservr --pid 900"));
    }
}
