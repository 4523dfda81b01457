//! Who holds the port a bind() could not get: the sockets of the binder's
//! own network namespace that conflict with it, by protocol and address.

use std::net::{IpAddr, Ipv6Addr};

use super::{Attributor, PortSocket, ProcessLookup, SocketProbe};
use crate::model::{Event, Family, Holder, Protocol, TcpState};

fn mapped(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Whether a bind to `want` conflicts with a socket bound to `have`
/// (`have_v6only`: IPV6_V6ONLY of an IPv6 socket). A wildcard conflicts with
/// every address of its family, and an IPv6 wildcard without V6ONLY with
/// IPv4 too; two specific addresses conflict only when equal (IPv4-mapped
/// IPv6 addresses are their IPv4 address).
pub fn overlaps(want: IpAddr, have: IpAddr, have_v6only: bool) -> bool {
    let v4ish = |a: IpAddr| match a {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    if want.is_unspecified() || have.is_unspecified() {
        return match (want, have) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                // Same family; an IPv6 V6ONLY wildcard still holds IPv4-mapped
                // addresses out of bounds.
                !(have_v6only && have.is_unspecified() && v4ish(want) && !want.is_unspecified())
            }
            // An IPv4 bind against an IPv6 socket: only a dual-stack wildcard
            // or an IPv4-mapped address covers it.
            (IpAddr::V4(_), IpAddr::V6(_)) => {
                (have.is_unspecified() && !have_v6only) || v4ish(have)
            }
            // An IPv6 bind against an IPv4 socket: the wildcard (dual-stack
            // unless the binder set V6ONLY, which the hook cannot see) or an
            // IPv4-mapped address.
            (IpAddr::V6(_), IpAddr::V4(_)) => want.is_unspecified() || v4ish(want),
        };
    }
    mapped(want) == mapped(have)
}

impl<S: SocketProbe, P: ProcessLookup> Attributor<S, P> {
    /// Who holds the port `ev` (a failed bind) asked for. The live socket
    /// table says which sockets are bound there; the owner comes from the
    /// socket's process, or for a TIME_WAIT remnant from the process this
    /// trace saw create it.
    /// Err says why no holder could be looked for at all.
    pub(super) fn holder(&mut self, ev: &Event) -> Result<Option<Holder>, String> {
        let (Some(port), Some(want)) = (ev.sport, ev.saddr) else {
            return Ok(None);
        };
        let netns = ev.netns;
        let conflicts = |protocol: Protocol, addr: IpAddr, v6only: bool| {
            ev.protocol.is_none_or(|p| p == protocol) && overlaps(want, addr, v6only)
        };
        let table = self.sockets.on_port(netns, port);
        let sockets: Vec<PortSocket> = table
            .as_ref()
            .map(|t| {
                t.iter()
                    .filter(|s| conflicts(s.protocol, s.saddr, s.v6only))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let family_of = |a: &IpAddr| match a {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        };
        let rank = |s: &PortSocket| {
            let mut r = 0;
            if s.state == Some(TcpState::Listen) {
                r += 8;
            }
            if s.pid.is_some() {
                r += 4;
            }
            if s.protocol == Protocol::Tcp {
                r += 2;
            }
            if Some(family_of(&s.saddr)) == ev.family {
                r += 1;
            }
            r
        };
        if let Some(best) = sockets.iter().max_by_key(|s| rank(s)) {
            let mut h = Holder {
                pid: best.pid,
                comm: best.comm.clone(),
                state: best.state,
                protocol: Some(best.protocol),
                saddr: best.saddr,
                sport: best.sport,
                daddr: best.daddr,
                dport: best.dport,
            };
            // The snapshot is taken when the bind's event is processed, a
            // little after it happened; what the trace saw of that connection
            // up to the bind is the state it held the port in.
            let seen = self.origins.get(&super::NsKey::new(
                netns,
                (best.saddr, best.sport, best.daddr, best.dport),
            ));
            if let Some(k) = seen {
                if k.state.is_some() && k.state != Some(TcpState::Close) {
                    h.state = k.state;
                }
            }
            if h.pid.is_none() {
                let listener = || {
                    self.listeners
                        .on_port(netns, port)
                        .find(|(k, _, certain)| *certain && k.addr == best.saddr)
                        .map(|(_, known, _)| known)
                };
                let known = seen.or_else(|| {
                    (best.state == Some(TcpState::Listen))
                        .then(listener)
                        .flatten()
                });
                if let Some(k) = known {
                    h.pid = k.pid;
                    h.comm = k.comm.as_deref().map(String::from);
                }
            }
            return Ok(Some(h));
        }
        // Not in this namespace's table (or the table could not be read),
        // but this trace saw a conflicting listener start in this namespace.
        let seen = if ev.protocol.is_some_and(|p| p != Protocol::Tcp) {
            None
        } else {
            self.listeners
                .on_port(netns, port)
                .find(|(k, _, certain)| *certain && overlaps(want, k.addr, false))
        };
        match (seen, table) {
            (None, Err(why)) => Err(why),
            (None, Ok(_)) => Ok(None),
            (Some((k, known, _)), _) => Ok(Some(Holder {
                pid: known.pid,
                comm: known.comm.as_deref().map(String::from),
                state: Some(TcpState::Listen),
                protocol: Some(Protocol::Tcp),
                saddr: k.addr,
                sport: port,
                daddr: match k.family {
                    Family::Ipv6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    Family::Ipv4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                },
                dport: 0,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::overlaps;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn wildcards_overlap_their_family_and_specific_addresses_only_themselves() {
        assert!(overlaps(ip("0.0.0.0"), ip("127.0.0.1"), false));
        assert!(overlaps(ip("127.0.0.1"), ip("0.0.0.0"), false));
        assert!(overlaps(ip("127.0.0.1"), ip("127.0.0.1"), false));
        assert!(!overlaps(ip("127.0.0.1"), ip("10.0.0.1"), false));
        assert!(!overlaps(ip("::1"), ip("::2"), false));
        assert!(overlaps(ip("::"), ip("::1"), false));
    }

    #[test]
    fn dual_stack_sockets_overlap_ipv4_unless_v6only() {
        assert!(overlaps(ip("127.0.0.1"), ip("::"), false));
        assert!(!overlaps(ip("127.0.0.1"), ip("::"), true));
        assert!(overlaps(ip("0.0.0.0"), ip("::ffff:127.0.0.1"), true));
        assert!(overlaps(ip("::ffff:10.0.0.1"), ip("10.0.0.1"), false));
        assert!(!overlaps(ip("::1"), ip("0.0.0.0"), false));
        assert!(overlaps(ip("::"), ip("0.0.0.0"), false));
    }
}
