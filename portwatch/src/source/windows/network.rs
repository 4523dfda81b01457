//! Microsoft-Windows-Kernel-Network {7DD42A49-5329-4832-8DFD-43D979153A88}
//! and Microsoft-Windows-Winsock-AFD {E53C6823-7BB8-44BB-90DC-3F86090D48A6}.
//!
//! Kernel-Network (repnz/etw-providers-docs Manifests-*/
//! Microsoft-Windows-Kernel-Network.xml; the same layout as the classic
//! kernel logger's TcpIp MOF classes), all version 0:
//!
//! - 12/15 TCPIP Connection attempted/accepted (IPv4): `UInt32 PID, UInt32
//!   size, UInt32 daddr, UInt32 saddr, UInt16 dport, UInt16 sport, UInt16
//!   mss, UInt16 sackopt, UInt16 tsopt, UInt16 wsopt, UInt32 rcvwin, UInt16
//!   rcvwinscale, UInt16 sndwinscale, UInt32 seqnum, UInt32 connid`;
//! - 13 Disconnect issued (IPv4): `UInt32 PID, UInt32 size, UInt32 daddr,
//!   UInt32 saddr, UInt16 dport, UInt16 sport, UInt32 seqnum, UInt32 connid`;
//! - 28/31/29: the same for IPv6, with `Binary daddr, Binary saddr` of 16
//!   bytes each (IN6_ADDR; the MOF's TcpIp_TypeGroup2).
//!
//! Addresses and ports are in network byte order (MOF `NetworkByteOrder`,
//! manifest outType win:IPv4 / win:Port); `daddr` is the remote end.
//!
//! Winsock-AFD (Manifests-*/Microsoft-Windows-Winsock-AFD.xml): 1030
//! AfdBindWithAddressConnected v0 `UInt32 EnterExit, UInt32 Location,
//! Pointer Process, Pointer Endpoint, UInt32 Status, UInt32 AddressLen,
//! Binary Address`. AFD logs it in the caller's thread, so the header's
//! process id is the process that called bind().

use super::payload::{Reader, SockAddr};
use super::STATUS_PENDING;
use super::{family_of, set_status, tcb_id, DecodeError, Decoded, FlowKind, RawEvent};
use crate::model::{Attribution, Event, EventKind, Family};

pub const KN_CONNECT_V4: u16 = 12;
pub const KN_DISCONNECT_V4: u16 = 13;
pub const KN_ACCEPT_V4: u16 = 15;
pub const KN_CONNECT_V6: u16 = 28;
pub const KN_DISCONNECT_V6: u16 = 29;
pub const KN_ACCEPT_V6: u16 = 31;

pub const AFD_BIND_WITH_ADDRESS: u16 = 1030;

pub fn decode_kernel_network(raw: &RawEvent<'_>) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(
        raw.data,
        "Microsoft-Windows-Kernel-Network",
        raw.id,
        raw.version,
        raw.pointer,
    );
    let (what, v6, long) = match raw.id {
        KN_CONNECT_V4 => (FlowKind::Connected, false, true),
        KN_ACCEPT_V4 => (FlowKind::Accepted, false, true),
        KN_DISCONNECT_V4 => (FlowKind::Disconnected, false, false),
        KN_CONNECT_V6 => (FlowKind::Connected, true, true),
        KN_ACCEPT_V6 => (FlowKind::Accepted, true, true),
        KN_DISCONNECT_V6 => (FlowKind::Disconnected, true, false),
        _ => return Ok(Decoded::Ignored),
    };
    let pid = r.u32("PID")?;
    let _size = r.u32("size")?;
    let (daddr, saddr) = if v6 {
        (r.ipv6("daddr")?, r.ipv6("saddr")?)
    } else {
        (r.ipv4("daddr")?, r.ipv4("saddr")?)
    };
    let dport = r.port("dport")?;
    let sport = r.port("sport")?;
    if long {
        r.bytes("mss..wsopt", 8)?;
        r.u32("rcvwin")?;
        r.bytes("rcvwinscale..sndwinscale", 4)?;
    }
    r.u32("seqnum")?;
    r.u32("connid")?;
    let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
    Ok(Decoded::Flow {
        pid,
        local: SockAddr {
            family,
            addr: saddr,
            port: sport,
        },
        remote: SockAddr {
            family,
            addr: daddr,
            port: dport,
        },
        what,
    })
}

pub fn decode_afd(raw: &RawEvent<'_>) -> Result<Decoded, DecodeError> {
    if raw.id != AFD_BIND_WITH_ADDRESS {
        return Ok(Decoded::Ignored);
    }
    let mut r = Reader::new(
        raw.data,
        "Microsoft-Windows-Winsock-AFD",
        raw.id,
        raw.version,
        raw.pointer,
    );
    let _enter_exit = r.u32("EnterExit")?;
    let _location = r.u32("Location")?;
    let _process = r.pointer("Process")?;
    let endpoint = r.pointer("Endpoint")?;
    let status = r.u32("Status")?;
    let addr = r.sockaddr_with_len("AddressLen", "Address")?;
    if status == STATUS_PENDING {
        return Ok(Decoded::Ignored);
    }
    let mut ev = Event::new(raw.time, EventKind::Bind);
    // The caller's own thread: its process is the header's.
    ev.pid = Some(raw.header_pid);
    ev.attribution = Attribution::Current;
    ev.family = Some(family_of(addr.addr));
    ev.saddr = Some(addr.addr);
    ev.sport = Some(addr.port);
    set_status(&mut ev, status);
    ev.sock = Some(tcb_id(endpoint));
    Ok(Decoded::Event {
        event: Box::new(ev),
        tcb: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::payload::build::Payload;
    use super::super::{decode, PointerSize, Provider};
    use super::*;
    use std::net::IpAddr;

    fn raw(provider: Provider, id: u16, data: &[u8]) -> RawEvent<'_> {
        RawEvent {
            provider,
            id,
            version: 0,
            pointer: PointerSize::Eight,
            time: 5,
            header_pid: 3175,
            data,
        }
    }

    fn kn(id: u16, daddr: &[u8], saddr: &[u8], long: bool) -> Vec<u8> {
        let mut b = Payload::default()
            .u32(812)
            .u32(0)
            .raw(daddr)
            .raw(saddr)
            .port(1433)
            .port(50555);
        if long {
            b = b.u16(1460).u16(1).u16(0).u16(8).u32(65535).u16(8).u16(8);
        }
        let _ = id;
        b.u32(1).u32(0).0
    }

    #[test]
    fn kernel_network_flows_ipv4_and_ipv6() {
        let v4 = kn(KN_CONNECT_V4, &[10, 0, 0, 9], &[10, 0, 0, 5], true);
        match decode(&raw(Provider::KernelNetwork, KN_CONNECT_V4, &v4)).unwrap() {
            Decoded::Flow {
                pid,
                local,
                remote,
                what,
            } => {
                assert_eq!((pid, what), (812, FlowKind::Connected));
                assert_eq!(local.addr, "10.0.0.5".parse::<IpAddr>().unwrap());
                assert_eq!((local.port, remote.port), (50555, 1433));
                assert_eq!(remote.addr, "10.0.0.9".parse::<IpAddr>().unwrap());
            }
            other => panic!("{other:?}"),
        }
        let a6: [u8; 16] = "2001:db8::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let l6: [u8; 16] = "2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        for (id, long, kind) in [
            (KN_ACCEPT_V6, true, FlowKind::Accepted),
            (KN_DISCONNECT_V6, false, FlowKind::Disconnected),
        ] {
            let data = kn(id, &a6, &l6, long);
            match decode(&raw(Provider::KernelNetwork, id, &data)).unwrap() {
                Decoded::Flow { local, what, .. } => {
                    assert_eq!(what, kind);
                    assert_eq!(local.family, Family::Ipv6);
                    assert_eq!(local.addr, IpAddr::from(l6));
                }
                other => panic!("{other:?}"),
            }
            for n in 0..data.len() {
                assert!(decode(&raw(Provider::KernelNetwork, id, &data[..n])).is_err());
            }
        }
        // The short (disconnect) template is not long enough for a connect.
        let short = kn(KN_DISCONNECT_V4, &[1, 1, 1, 1], &[2, 2, 2, 2], false);
        assert!(decode(&raw(Provider::KernelNetwork, KN_CONNECT_V4, &short)).is_err());
        assert!(decode(&raw(Provider::KernelNetwork, KN_DISCONNECT_V4, &short)).is_ok());
    }

    #[test]
    fn afd_bind_outcomes_use_the_callers_pid() {
        for (status, want) in [
            (0u32, None),
            (0xC000_020A, Some("EADDRINUSE")),
            (0xC000_0022, Some("EACCES")),
        ] {
            for addr in ["0.0.0.0:1433", "[::]:1433"] {
                let data = Payload::default()
                    .u32(1)
                    .u32(10)
                    .u64(0xffff_0001)
                    .u64(0xffff_0002)
                    .u32(status)
                    .sockaddr(addr)
                    .0;
                let d = decode(&raw(Provider::WinsockAfd, AFD_BIND_WITH_ADDRESS, &data)).unwrap();
                let Decoded::Event { event, .. } = d else {
                    panic!("{d:?}")
                };
                assert_eq!(event.event, EventKind::Bind);
                assert_eq!(event.pid, Some(3175));
                assert_eq!(event.sport, Some(1433));
                assert_eq!(event.errno.as_deref(), want);
                assert_eq!(event.ret == Some(0), want.is_none());
                for n in 0..data.len() {
                    assert!(decode(&raw(
                        Provider::WinsockAfd,
                        AFD_BIND_WITH_ADDRESS,
                        &data[..n]
                    ))
                    .is_err());
                }
            }
        }
        assert_eq!(
            decode(&raw(Provider::WinsockAfd, 1000, &[])).unwrap(),
            Decoded::Ignored
        );
    }
}
