//! `who`'s report, built from a socket snapshot: every socket that matches
//! the query, each with every process holding it, and on request counts by
//! state and owner and what occupies the ephemeral range towards one
//! destination. Pure: the snapshot and the process lookups come in.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Serialize;

use crate::aggregate::PortRange;
use crate::attribution::ProcessLookup;
pub use crate::filter::{parse_state, Remote};
use crate::model::{Family, Protocol, SocketEnds, TcpState};
use crate::procfd;
use crate::sockdiag::{Proto, SocketEntry};
use crate::sysctl::PortSet;
use crate::system::unit_from_cgroup;

/// Which sockets a `who` asks about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Query {
    /// The local port.
    pub port: Option<u16>,
    /// The remote end: an address, a port, or both.
    pub remote: Option<Remote>,
    /// Kernel state names (`TIME_WAIT`, `LISTEN`, `UNCONN` ...); empty: all.
    pub states: Vec<String>,
    /// A destination whose ephemeral ports are in question: TCP sockets
    /// towards it whose local port lies in the ephemeral range.
    pub to: Option<(IpAddr, u16)>,
}

/// Another process holding the same socket (after fork or fd passing).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sharer {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Option<String>,
    pub unit: Option<String>,
}

/// One socket, with the trace schema's field names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SocketView {
    #[serde(flatten)]
    pub ends: SocketEnds,
    pub inode: u64,
    /// The socket's owner as the kernel reports it; for a TIME_WAIT socket
    /// (which keeps no owner) the creator's, when the journal knows it.
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// systemd unit or container the owner runs in.
    pub unit: Option<smol_str::SmolStr>,
    /// The container runtime and id and the Kubernetes pod uid, from the
    /// cgroup path (see [`crate::workload::Workload`]).
    pub container_runtime: Option<smol_str::SmolStr>,
    pub container_id: Option<smol_str::SmolStr>,
    pub pod_uid: Option<smol_str::SmolStr>,
    /// Other processes sharing the socket (after fork or fd passing).
    pub also: Vec<Sharer>,
    /// Why there is no owner, when there is none.
    pub no_owner: Option<String>,
    /// For a socket with no owner: the process the journal saw create it.
    pub created_by: Option<CreatedBy>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CreatedBy {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    #[serde(with = "crate::timefmt::rfc3339_ns")]
    pub time: i128,
}

/// What occupies the ephemeral range towards one destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Towards {
    pub daddr: IpAddr,
    pub dport: u16,
    pub ephemeral_range: Option<PortRange>,
    /// Ports of the range usable towards it (the range less reserved ports).
    pub capacity: Option<u32>,
    /// Sockets towards it whose local port lies in the range.
    pub in_use: u64,
    /// `in_use` by state.
    pub by_state: BTreeMap<String, u64>,
}

/// Sockets of one state held by one owner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Count {
    pub count: u64,
    pub protocol: Protocol,
    pub state: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct WhoReport {
    pub port: Option<u16>,
    pub sockets: Vec<SocketView>,
    /// With --to: the destination's ephemeral ports.
    pub to: Option<Towards>,
    /// With --count: the sockets counted by state and owner, most first.
    pub counts: Option<Vec<Count>>,
    /// What could not be seen, and how to see it.
    pub missing: Option<String>,
}

/// Names the creators of ownerless sockets from the journal's records of
/// this boot: the latest record of the same connection that has a process.
/// A TIME_WAIT socket keeps no owner, so the creator's user is its user.
pub fn add_creators(report: &mut WhoReport, records: &[crate::journal::Record], boot_id: &str) {
    let mut users = HashMap::new();
    for s in report.sockets.iter_mut().filter(|s| s.pid.is_none()) {
        let found = records.iter().rev().find(|r| {
            let e = &r.event;
            r.boot_id == boot_id
                && e.pid.is_some()
                && e.saddr == Some(s.ends.saddr)
                && e.sport == Some(s.ends.sport)
                && e.daddr == Some(s.ends.daddr)
                && e.dport == Some(s.ends.dport)
        });
        if let Some(r) = found {
            if s.uid.is_none() {
                s.uid = r.event.uid;
                s.user = r.event.uid.and_then(|u| user_name(u, &mut users));
            }
            s.created_by = Some(CreatedBy {
                pid: r.event.pid,
                comm: r.event.comm.as_deref().map(String::from),
                uid: r.event.uid,
                time: r.event.time,
            });
        }
    }
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

/// Whether a snapshot entry answers the query (the port range matters for
/// `--to` only).
pub fn selects(q: &Query, e: &SocketEntry, range: Option<PortRange>) -> bool {
    q.port.is_none_or(|p| e.sport == p)
        && q.remote.is_none_or(|r| r.matches(e.daddr, e.dport))
        && (q.states.is_empty() || q.states.contains(&state_name(e)))
        && q.to.is_none_or(|(a, p)| {
            e.proto == Proto::Tcp
                && Remote {
                    addr: Some(a),
                    port: Some(p),
                }
                .matches(e.daddr, e.dport)
                && range.is_some_and(|r| (r.low..=r.high).contains(&e.sport))
        })
}

/// Builds the report from a snapshot already narrowed to the query;
/// `owners` maps inodes to every process holding each.
pub fn report(
    port: Option<u16>,
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
            let found = owners.get(&e.inode).map(Vec::as_slice).unwrap_or_default();
            let first = found.first();
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
            // A TIME_WAIT socket keeps no owner: the kernel reports uid 0.
            let uid = (state != "TIME_WAIT").then_some(e.uid);
            let cgroup = info.as_ref().and_then(|i| i.cgroup.clone());
            let workload = crate::workload::Workload::of(cgroup.as_deref());
            let also = found
                .iter()
                .skip(1)
                .map(|o| {
                    let info = processes.lookup(o.pid);
                    Sharer {
                        pid: o.pid,
                        comm: o.comm.clone(),
                        cmdline: info.as_ref().and_then(|i| i.cmdline.clone()),
                        unit: info
                            .as_ref()
                            .and_then(|i| i.cgroup.as_deref())
                            .and_then(unit_from_cgroup),
                    }
                })
                .collect();
            SocketView {
                ends: SocketEnds {
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
                },
                inode: e.inode,
                uid,
                user: uid.and_then(|u| user_name(u, &mut users)),
                pid: first.map(|o| o.pid),
                comm: first.map(|o| o.comm.clone()),
                cmdline: info.as_ref().and_then(|i| i.cmdline.clone()),
                unit: workload.unit,
                container_runtime: workload.container_runtime,
                container_id: workload.container_id,
                pod_uid: workload.pod_uid,
                cgroup,
                also,
                no_owner,
                created_by: None,
            }
        })
        .collect();
    sockets.sort_by(|a, b| a.ends.reading_order().cmp(&b.ends.reading_order()));
    WhoReport {
        port,
        sockets,
        to: None,
        counts: None,
        missing: (unowned_unknown > 0).then(|| {
            let again = port.map_or_else(|| "who".to_owned(), |p| format!("who {p}"));
            format!(
                "the owners of {} belong to other users: run `sudo portwatch {again}` to see them",
                crate::plural(unowned_unknown, "socket", "sockets")
            )
        }),
    }
}

/// What [`counts`] groups by: protocol, state, pid, comm, user.
type CountKey = (
    Protocol,
    String,
    Option<u32>,
    Option<String>,
    Option<String>,
);

/// The sockets counted by state and owner (for a socket no process holds,
/// the creator the journal names, if any), most first.
pub fn counts(sockets: &[SocketView]) -> Vec<Count> {
    let mut by: BTreeMap<CountKey, u64> = BTreeMap::new();
    for s in sockets {
        let (pid, comm) = match (&s.pid, &s.created_by) {
            (Some(p), _) => (Some(*p), s.comm.clone()),
            (None, Some(c)) => (c.pid, c.comm.clone()),
            (None, None) => (None, None),
        };
        *by.entry((
            s.ends.protocol,
            s.ends.state.clone(),
            pid,
            comm,
            s.user.clone(),
        ))
        .or_default() += 1;
    }
    let mut out: Vec<Count> = by
        .into_iter()
        .map(|((protocol, state, pid, comm, user), count)| Count {
            count,
            protocol,
            state,
            pid,
            comm,
            user,
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cmp(b)));
    out
}

/// What the sockets of a `--to` report take of the destination's range.
pub fn towards(
    (daddr, dport): (IpAddr, u16),
    sockets: &[SocketView],
    range: Option<PortRange>,
    reserved: Option<&PortSet>,
) -> Towards {
    let mut by_state = BTreeMap::new();
    for s in sockets {
        *by_state.entry(s.ends.state.clone()).or_default() += 1;
    }
    Towards {
        daddr,
        dport,
        ephemeral_range: range,
        capacity: range.map(|r| {
            r.size()
                .saturating_sub(reserved.map_or(0, |p| p.count_within(r.low, r.high)))
        }),
        in_use: sockets.len() as u64,
        by_state,
    }
}
