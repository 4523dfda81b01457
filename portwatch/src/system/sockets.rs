//! sock_diag in the network namespace of each event's socket, so that
//! TIME_WAIT confirmation and port holders are looked up where the socket
//! lives (a container's own table), never in portwatch's by mistake.

use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroUsize;

use lru::LruCache;

use super::netns::{run_in, Netns};
use super::owners_of;
use crate::attribution::{PortSocket, SocketProbe, Tuple};
use crate::model::{PoolUse, Protocol, TcpState};
use crate::sockdiag::{Proto, SockDiag, SocketEntry, TCP_ALL_STATES};
use crate::sysctl::{parse_port_range, PortSet};

/// How long a pool figure is reused: an exhaustion storm fails thousands
/// of connects a second, each wanting the figure for its destination.
const POOL_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// A namespace's ephemeral range and reserved ports.
#[derive(Clone, Debug)]
struct PortConfig {
    low: u16,
    high: u16,
    reserved: PortSet,
}

fn port_config(ns: Option<&std::os::fd::OwnedFd>) -> Result<PortConfig, String> {
    let read = |name: &'static str| {
        run_in(ns, move || {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        })
        .map_err(|e| format!("cannot read net.ipv4.{name} there: {e}"))
    };
    let (low, high) = parse_port_range(&read("ip_local_port_range")?)
        .ok_or_else(|| "net.ipv4.ip_local_port_range does not parse".to_owned())?;
    let reserved = PortSet::parse(read("ip_local_reserved_ports")?.trim()).unwrap_or_default();
    Ok(PortConfig {
        low,
        high,
        reserved,
    })
}

/// Netlink sockets kept open in other namespaces, least recently used
/// recycled first: one fd each.
const MAX_DIAGS: usize = 64;

/// sock_diag per namespace. If no netlink socket can be opened, TIME_WAIT
/// confirmation and holder lookups report nothing rather than guess.
pub struct LiveSockets {
    own: Option<SockDiag>,
    others: LruCache<u64, SockDiag>,
    netns: Netns,
    /// Kinds of failure already warned about: each is said once.
    warned: HashSet<&'static str>,
    /// Recent pool figures, by namespace and destination.
    pools: LruCache<(Option<u64>, IpAddr, u16), (std::time::Instant, PoolUse)>,
}

impl LiveSockets {
    pub fn new(netns: Netns) -> Self {
        let own = match SockDiag::new() {
            Ok(d) => Some(d),
            Err(e) => {
                log::warn!("sock_diag unavailable ({e}); TIME_WAIT confirmation and port holders will be missing");
                None
            }
        };
        LiveSockets {
            own,
            others: LruCache::new(NonZeroUsize::new(MAX_DIAGS).unwrap_or(NonZeroUsize::MIN)),
            netns,
            warned: HashSet::new(),
            pools: LruCache::new(NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// Namespace `netns`'s port configuration and every TCP socket in it.
    fn dump(&mut self, netns: Option<u64>) -> Result<(PortConfig, Vec<SocketEntry>), String> {
        let ns = match netns {
            Some(ino) if Some(ino) != self.netns.own() => Some(
                self.netns
                    .get(ino)
                    .ok_or_else(|| format!("no live process left in network namespace {ino}"))?,
            ),
            _ => None,
        };
        let cfg = port_config(ns.as_deref())?;
        let sockets = self
            .diag(netns)?
            .tcp_sockets(TCP_ALL_STATES)
            .map_err(|e| format!("sock_diag dump failed: {e}"))?;
        Ok((cfg, sockets))
    }

    /// Namespace `netns`'s whole TCP table with its range and reserved
    /// ports: one dump serves every destination a live view counts.
    pub fn table(&mut self, netns: Option<u64>) -> Result<crate::view::NsTable, String> {
        let (cfg, sockets) = self.dump(netns)?;
        Ok(crate::view::NsTable {
            netns,
            low: cfg.low,
            high: cfg.high,
            reserved: cfg.reserved,
            sockets: sockets
                .into_iter()
                .filter_map(|e| {
                    let state = TcpState::from_kernel(e.state)?;
                    Some((state, (e.saddr, e.sport, e.daddr, e.dport)))
                })
                .collect(),
        })
    }

    fn pool_now(
        &mut self,
        netns: Option<u64>,
        daddr: IpAddr,
        dport: u16,
    ) -> Result<PoolUse, String> {
        let (cfg, sockets) = self.dump(netns)?;
        let same = |a: IpAddr| crate::attribution::overlaps(a, daddr, false) && !a.is_unspecified();
        let mut pool = PoolUse {
            in_use: 0,
            by_state: Default::default(),
            capacity: u64::from(
                (u32::from(cfg.high) + 1)
                    .saturating_sub(u32::from(cfg.low))
                    .saturating_sub(cfg.reserved.count_within(cfg.low, cfg.high)),
            ),
            range_low: cfg.low,
            range_high: cfg.high,
        };
        for e in sockets {
            if e.dport != dport
                || !same(e.daddr)
                || e.sport < cfg.low
                || e.sport > cfg.high
                || cfg.reserved.contains(e.sport)
            {
                continue;
            }
            let state = TcpState::from_kernel(e.state).map_or("?", |s| s.name());
            *pool.by_state.entry(state.to_owned()).or_default() += 1;
            pool.in_use += 1;
        }
        Ok(pool)
    }

    fn warn_once(&mut self, kind: &'static str, msg: std::fmt::Arguments<'_>) {
        if self.warned.insert(kind) {
            log::warn!("{msg} (said once; later failures of this kind are at debug level)");
        } else {
            log::debug!("{msg}");
        }
    }

    /// The sock_diag socket for namespace `netns`. None (and why) when
    /// that namespace cannot be entered: no live process is left in it, or
    /// entering it is not permitted.
    fn diag(&mut self, netns: Option<u64>) -> Result<&mut SockDiag, String> {
        let ino = match netns {
            Some(ino) if Some(ino) != self.netns.own() => ino,
            // Portwatch's own namespace, or (without kernel BTF and /proc
            // details) the best there is.
            _ => {
                return self
                    .own
                    .as_mut()
                    .ok_or_else(|| "sock_diag is unavailable".to_owned())
            }
        };
        if !self.others.contains(&ino) {
            let Some(fd) = self.netns.get(ino) else {
                let why = format!("no live process left in network namespace {ino} to look in");
                self.warn_once("netns-gone", format_args!("{why}"));
                return Err(why);
            };
            match SockDiag::in_netns(fd) {
                Ok(d) => {
                    self.others.put(ino, d);
                }
                Err(e) => {
                    let why = format!("cannot enter network namespace {ino}: {e}");
                    self.warn_once("netns-enter", format_args!("{why}"));
                    return Err(why);
                }
            }
        }
        self.others
            .get_mut(&ino)
            .ok_or_else(|| format!("network namespace {ino} vanished"))
    }
}

impl SocketProbe for LiveSockets {
    fn tcp_state(
        &mut self,
        netns: Option<u64>,
        (saddr, sport, daddr, dport): Tuple,
    ) -> Option<TcpState> {
        let result = self
            .diag(netns)
            .ok()?
            .tcp_lookup(saddr, sport, daddr, dport);
        match result {
            Ok(found) => found.and_then(|s| TcpState::from_kernel(s.state)),
            Err(e) => {
                self.warn_once("lookup", format_args!("sock_diag lookup failed: {e}"));
                None
            }
        }
    }

    fn tcp_states(
        &mut self,
        netns: Option<u64>,
        tuples: &[Tuple],
        out: &mut Vec<Option<TcpState>>,
    ) {
        let result = match self.diag(netns) {
            Ok(diag) => diag.tcp_lookup_many(tuples),
            Err(_) => return out.resize(out.len() + tuples.len(), None),
        };
        match result {
            Ok(found) => out.extend(
                found
                    .into_iter()
                    .map(|e| e.and_then(|s| TcpState::from_kernel(s.state))),
            ),
            Err(e) => {
                self.warn_once("lookup", format_args!("sock_diag lookups failed: {e}"));
                out.resize(out.len() + tuples.len(), None);
            }
        }
    }

    fn pool(&mut self, netns: Option<u64>, daddr: IpAddr, dport: u16) -> Result<PoolUse, String> {
        let key = (netns, daddr, dport);
        if let Some((at, pool)) = self.pools.get(&key) {
            if at.elapsed() < POOL_TTL {
                return Ok(pool.clone());
            }
        }
        let pool = self.pool_now(netns, daddr, dport)?;
        self.pools
            .put(key, (std::time::Instant::now(), pool.clone()));
        Ok(pool)
    }

    fn on_port(&mut self, netns: Option<u64>, port: u16) -> Result<Vec<PortSocket>, String> {
        let entries = match self.diag(netns)?.sockets_on_port(port) {
            Ok(e) => e,
            Err(e) => {
                let why = format!("sock_diag dump failed: {e}");
                self.warn_once("dump", format_args!("{why}"));
                return Err(why);
            }
        };
        let owners = owners_of(&entries);
        Ok(entries
            .into_iter()
            .map(|e| {
                let owner = owners.get(&e.inode).and_then(|v| v.first());
                PortSocket {
                    protocol: match e.proto {
                        Proto::Tcp => Protocol::Tcp,
                        Proto::Udp => Protocol::Udp,
                    },
                    state: match e.proto {
                        Proto::Tcp => TcpState::from_kernel(e.state),
                        Proto::Udp => None,
                    },
                    saddr: e.saddr,
                    sport: e.sport,
                    daddr: e.daddr,
                    dport: e.dport,
                    pid: owner.map(|o| o.pid),
                    comm: owner.map(|o| o.comm.clone()),
                    v6only: e.ipv6_only,
                }
            })
            .collect())
    }
}
