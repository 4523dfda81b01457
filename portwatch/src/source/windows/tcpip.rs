//! Microsoft-Windows-TCPIP {2F07E2EE-15DB-40F1-90EF-9D7BA282188A}.
//!
//! Templates, from the manifests (repnz/etw-providers-docs
//! Manifests-Win7-7600 .. Manifests-Win10-18990/Microsoft-Windows-TCPIP.xml;
//! jdu2600/Windows10EtwEvents manifest/Microsoft-Windows-TCPIP.tsv for the
//! versions added since):
//!
//! - `TcpAccpetListenerRouteLookupFailureArgs` (sic), used by 1017
//!   TcpAcceptListenerComplete, 1033 TcpConnectTcbComplete, 1034
//!   TcpConnectTcbFailure, 1038 TcpCloseTcbRequest, 1039
//!   TcpAbortTcbRequest, 1040 TcpAbortTcbComplete, 1043
//!   TcpDisconnectTcbComplete, 1050 TcpConnectFailedPortAcquire:
//!   v0 `UInt32 LocalAddressLength, Binary LocalAddress, UInt32
//!   RemoteAddressLength, Binary RemoteAddress, UInt32 Status, UInt32
//!   ProcessId, UInt32 Compartment, Pointer Tcb`; v1 adds `UInt64
//!   ProcessStartKey`; 1043 v2 adds `Boolean Inspect`.
//! - 1051 TcpTcbStateChange v0: `UInt32 OldState, UInt32 NewState, UInt32
//!   SndNxt, Pointer Tcb` (states: TCP_CONNECTION_STATE_ValueMap).
//! - 1052/1053/1054 Tcp{Endpoint{Acquire,Failed},Global}PortReservation v0:
//!   `UInt32 ProcessId, UInt32 Status, UInt16 StartPort, UInt16
//!   NumberOfPorts`; v1 adds `UInt64 ProcessStartKey`.
//! - 1110 TcpGlobalParameters v0: `UInt32 AddressFamily, 8 x UInt8, UInt32
//!   KeepAliveTime, UInt32 KeepAliveInterval, UInt32 TcpTimedWaitDelay, ...`.
//! - 1122 TcpListenerBindFailedPort (`TcpListenerActivationFailedAfArgs`)
//!   v0: `Pointer Listener, UInt32 AddressLength, Binary SocketAddress,
//!   UInt32 Status, UInt32 ProcessId, UInt32 CompartmentId, UInt32
//!   AddressFamily`; v1 adds `UInt64 ProcessStartKey`.
//! - 1300 TcpConnectionRundown v0: `Pointer Tcb, UInt32 LocalAddressLength,
//!   Binary LocalAddress, UInt32 RemoteAddressLength, Binary RemoteAddress,
//!   UInt32 State, UInt32 Pid`; v1-v3 append fields.

use super::payload::{Reader, SockAddr, AF_INET, AF_INET6};
use super::{family_of, set_status, tcb_id, tcb_state, Decoded, RawEvent, Reservation};
use super::{DecodeError, STATUS_PENDING};
use crate::errno;
use crate::model::{Attribution, Event, EventKind, Family, Protocol};

pub const ACCEPT_COMPLETE: u16 = 1017;
pub const CONNECT_COMPLETE: u16 = 1033;
pub const CONNECT_FAILURE: u16 = 1034;
pub const CLOSE_REQUEST: u16 = 1038;
pub const ABORT_REQUEST: u16 = 1039;
pub const ABORT_COMPLETE: u16 = 1040;
pub const DISCONNECT_COMPLETE: u16 = 1043;
pub const CONNECT_FAILED_PORT_ACQUIRE: u16 = 1050;
pub const TCB_STATE_CHANGE: u16 = 1051;
pub const ENDPOINT_ACQUIRE_PORT_RESERVATION: u16 = 1052;
pub const ENDPOINT_FAILED_PORT_RESERVATION: u16 = 1053;
pub const GLOBAL_PORT_RESERVATION: u16 = 1054;
pub const GLOBAL_PARAMETERS: u16 = 1110;
pub const LISTENER_BIND_FAILED_PORT: u16 = 1122;
pub const CONNECTION_RUNDOWN: u16 = 1300;

const NAME: &str = "Microsoft-Windows-TCPIP";

/// The fields of the connection template every version shares.
struct Conn {
    local: SockAddr,
    remote: SockAddr,
    status: u32,
    pid: u32,
    tcb: u64,
}

fn conn(r: &mut Reader<'_>) -> Result<Conn, DecodeError> {
    let local = r.sockaddr_with_len("LocalAddressLength", "LocalAddress")?;
    let remote = r.sockaddr_with_len("RemoteAddressLength", "RemoteAddress")?;
    let status = r.u32("Status")?;
    let pid = r.u32("ProcessId")?;
    let _compartment = r.u32("Compartment")?;
    let tcb = r.pointer("Tcb")?;
    Ok(Conn {
        local,
        remote,
        status,
        pid,
        tcb,
    })
}

/// v1 and later append ProcessStartKey (UInt64); a payload that stops inside
/// it is damaged, not a v0.
fn start_key(r: &mut Reader<'_>, version: u8) -> Result<(), DecodeError> {
    if version >= 1 {
        r.u64("ProcessStartKey")?;
    }
    Ok(())
}

fn tcp_event(kind: EventKind, time: i128, pid: u32, local: SockAddr, remote: SockAddr) -> Event {
    let mut ev = Event::new(time, kind);
    ev.pid = Some(pid);
    ev.family = Some(local.family);
    ev.protocol = Some(Protocol::Tcp);
    ev.saddr = Some(local.addr);
    ev.sport = Some(local.port);
    ev.daddr = Some(remote.addr);
    ev.dport = Some(remote.port);
    ev.attribution = Attribution::Current;
    ev
}

pub fn decode(raw: &RawEvent<'_>) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(raw.data, NAME, raw.id, raw.version, raw.pointer);
    match raw.id {
        CONNECT_COMPLETE | CONNECT_FAILURE | CONNECT_FAILED_PORT_ACQUIRE => {
            let c = conn(&mut r)?;
            start_key(&mut r, raw.version)?;
            if c.status == STATUS_PENDING {
                return Ok(Decoded::Ignored);
            }
            let mut ev = tcp_event(EventKind::Connect, raw.time, c.pid, c.local, c.remote);
            if raw.id == CONNECT_FAILED_PORT_ACQUIRE {
                // No local port could be had: ephemeral-port exhaustion,
                // whatever status the stack attached.
                ev.set_ret(-errno::EADDRNOTAVAIL);
            } else if raw.id == CONNECT_FAILURE && c.status == 0 {
                // A failure event without a status still failed.
                ev.set_ret(-103);
            } else {
                set_status(&mut ev, c.status);
            }
            ev.sock = Some(tcb_id(c.tcb));
            Ok(Decoded::Event {
                event: Box::new(ev),
                tcb: Some(c.tcb),
            })
        }
        ACCEPT_COMPLETE | CLOSE_REQUEST | ABORT_REQUEST | ABORT_COMPLETE | DISCONNECT_COMPLETE => {
            let c = conn(&mut r)?;
            start_key(&mut r, raw.version)?;
            if raw.id == DISCONNECT_COMPLETE && raw.version >= 2 {
                r.u8("Inspect")?;
            }
            Ok(Decoded::Owner {
                tcb: c.tcb,
                pid: c.pid,
                local: c.local,
                remote: c.remote,
            })
        }
        TCB_STATE_CHANGE => {
            let old = r.u32("OldState")?;
            let new = r.u32("NewState")?;
            let _snd_nxt = r.u32("SndNxt")?;
            let tcb = r.pointer("Tcb")?;
            let state = |field, n| {
                tcb_state(n).ok_or_else(|| r.malformed(field, format!("unknown TCB state {n}")))
            };
            Ok(Decoded::TcbState {
                tcb,
                old: state("OldState", old)?,
                new: state("NewState", new)?,
            })
        }
        ENDPOINT_ACQUIRE_PORT_RESERVATION
        | ENDPOINT_FAILED_PORT_RESERVATION
        | GLOBAL_PORT_RESERVATION => {
            let pid = r.u32("ProcessId")?;
            let status = r.u32("Status")?;
            let start = r.u16("StartPort")?;
            let count = r.u16("NumberOfPorts")?;
            start_key(&mut r, raw.version)?;
            let mut probe = Event::new(raw.time, EventKind::Bind);
            set_status(&mut probe, status);
            let mut ret = probe.ret.unwrap_or(0);
            if raw.id == ENDPOINT_FAILED_PORT_RESERVATION && ret == 0 {
                ret = -errno::EADDRINUSE;
            }
            Ok(Decoded::PortReservation(Reservation {
                pid,
                ret,
                start,
                count,
                scope: if raw.id == GLOBAL_PORT_RESERVATION {
                    "global"
                } else {
                    "endpoint"
                },
            }))
        }
        GLOBAL_PARAMETERS => {
            let af = r.u32("AddressFamily")?;
            r.bytes("EnablePMTUDiscovery..TcpMaxDataRetransmissions", 8)?;
            let _keepalive_time = r.u32("KeepAliveTime")?;
            let _keepalive_interval = r.u32("KeepAliveInterval")?;
            let delay = r.u32("TcpTimedWaitDelay")?;
            let family = match u16::try_from(af) {
                Ok(AF_INET) => Family::Ipv4,
                Ok(AF_INET6) => Family::Ipv6,
                _ => return Err(r.malformed("AddressFamily", format!("unknown family {af}"))),
            };
            Ok(Decoded::TimeWaitDelay {
                family,
                seconds: delay,
            })
        }
        LISTENER_BIND_FAILED_PORT => {
            let listener = r.pointer("Listener")?;
            let addr = r.sockaddr_with_len("AddressLength", "SocketAddress")?;
            let status = r.u32("Status")?;
            let pid = r.u32("ProcessId")?;
            let _compartment = r.u32("CompartmentId")?;
            let _af = r.u32("AddressFamily")?;
            start_key(&mut r, raw.version)?;
            let mut ev = Event::new(raw.time, EventKind::Bind);
            ev.pid = Some(pid);
            ev.family = Some(family_of(addr.addr));
            ev.protocol = Some(Protocol::Tcp);
            ev.saddr = Some(addr.addr);
            ev.sport = Some(addr.port);
            ev.attribution = Attribution::Current;
            // The listener could not take its port: EADDRINUSE unless the
            // status says otherwise (EACCES for an excluded port).
            match super::ntstatus_errno(status) {
                Some(e) => ev.set_ret(-e),
                None => ev.set_ret(-errno::EADDRINUSE),
            }
            ev.sock = Some(tcb_id(listener));
            Ok(Decoded::Event {
                event: Box::new(ev),
                tcb: None,
            })
        }
        CONNECTION_RUNDOWN => {
            let tcb = r.pointer("Tcb")?;
            let local = r.sockaddr_with_len("LocalAddressLength", "LocalAddress")?;
            let remote = r.sockaddr_with_len("RemoteAddressLength", "RemoteAddress")?;
            let _state = r.u32("State")?;
            let pid = r.u32("Pid")?;
            Ok(Decoded::Owner {
                tcb,
                pid,
                local,
                remote,
            })
        }
        _ => Ok(Decoded::Ignored),
    }
}

#[cfg(test)]
mod tests {
    use super::super::payload::build::Payload;
    use super::super::{decode as decode_any, PointerSize, Provider};
    use super::*;
    use crate::model::TcpState;

    const TCB: u64 = 0xffff_a001_2345_6780;

    fn raw(id: u16, version: u8, pointer: PointerSize, data: &[u8]) -> RawEvent<'_> {
        RawEvent {
            provider: Provider::Tcpip,
            id,
            version,
            pointer,
            time: 1_000,
            header_pid: 4,
            data,
        }
    }

    /// The shared connection template, v0 or v1 (+ProcessStartKey).
    fn conn_payload(p: PointerSize, v: u8, local: &str, remote: &str, status: u32) -> Vec<u8> {
        let mut b = Payload::default()
            .sockaddr(local)
            .sockaddr(remote)
            .u32(status)
            .u32(4242)
            .u32(1)
            .ptr(p, TCB);
        if v >= 1 {
            b = b.u64(77);
        }
        b.0
    }

    fn event(d: Decoded) -> (Event, Option<u64>) {
        match d {
            Decoded::Event { event, tcb } => (*event, tcb),
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn port_acquire_failure_is_eaddrnotavail_with_pid_every_version_and_family() {
        for p in [PointerSize::Four, PointerSize::Eight] {
            for v in [0, 1] {
                for (l, r) in [
                    ("10.0.0.5:0", "10.0.0.9:1433"),
                    ("[2001:db8::5]:0", "[2001:db8::9]:1433"),
                ] {
                    let data = conn_payload(p, v, l, r, 0xC000_0209);
                    let (ev, tcb) =
                        event(decode_any(&raw(CONNECT_FAILED_PORT_ACQUIRE, v, p, &data)).unwrap());
                    assert_eq!(ev.event, EventKind::Connect);
                    assert_eq!(ev.errno.as_deref(), Some("EADDRNOTAVAIL"));
                    assert_eq!(ev.pid, Some(4242));
                    assert_eq!(ev.dport, Some(1433));
                    assert_eq!(
                        ev.daddr,
                        Some(
                            r.rsplit_once(':')
                                .unwrap()
                                .0
                                .trim_matches(['[', ']'])
                                .parse()
                                .unwrap()
                        )
                    );
                    assert_eq!(
                        tcb,
                        Some(
                            TCB & if p == PointerSize::Four {
                                0xffff_ffff
                            } else {
                                u64::MAX
                            }
                        )
                    );
                    assert_eq!(ev.attribution, Attribution::Current);
                }
            }
        }
    }

    #[test]
    fn connect_complete_and_failure() {
        let p = PointerSize::Eight;
        let ok = conn_payload(p, 1, "10.0.0.5:50123", "10.0.0.9:443", 0);
        let (ev, _) = event(decode(&raw(CONNECT_COMPLETE, 1, p, &ok)).unwrap());
        assert_eq!((ev.ret, ev.sport), (Some(0), Some(50123)));
        let refused = conn_payload(p, 0, "10.0.0.5:50124", "10.0.0.9:444", 0xC000_0236);
        let (ev, _) = event(decode(&raw(CONNECT_FAILURE, 0, p, &refused)).unwrap());
        assert_eq!(ev.errno.as_deref(), Some("ECONNREFUSED"));
        let pending = conn_payload(p, 0, "10.0.0.5:1", "10.0.0.9:2", STATUS_PENDING);
        assert_eq!(
            decode(&raw(CONNECT_COMPLETE, 0, p, &pending)).unwrap(),
            Decoded::Ignored
        );
    }

    #[test]
    fn accepts_closes_and_rundown_name_the_connection_owner() {
        let p = PointerSize::Eight;
        for (id, v) in [
            (ACCEPT_COMPLETE, 1),
            (CLOSE_REQUEST, 0),
            (ABORT_REQUEST, 1),
            (DISCONNECT_COMPLETE, 1),
        ] {
            let data = conn_payload(p, v, "[::1]:1433", "[::1]:50000", 0);
            match decode(&raw(id, v, p, &data)).unwrap() {
                Decoded::Owner {
                    tcb, pid, local, ..
                } => {
                    assert_eq!((tcb, pid, local.port), (TCB, 4242, 1433));
                    assert_eq!(local.family, Family::Ipv6);
                }
                other => panic!("{id}: {other:?}"),
            }
        }
        // 1043 v2 appends a Boolean.
        let mut v2 = conn_payload(p, 1, "1.2.3.4:1", "5.6.7.8:2", 0);
        assert!(decode(&raw(DISCONNECT_COMPLETE, 2, p, &v2)).is_err());
        v2.push(1);
        assert!(matches!(
            decode(&raw(DISCONNECT_COMPLETE, 2, p, &v2)).unwrap(),
            Decoded::Owner { .. }
        ));
        let rundown = Payload::default()
            .ptr(p, TCB)
            .sockaddr("127.0.0.1:8080")
            .sockaddr("127.0.0.1:50001")
            .u32(4)
            .u32(900)
            .0;
        match decode(&raw(CONNECTION_RUNDOWN, 0, p, &rundown)).unwrap() {
            Decoded::Owner { pid, remote, .. } => assert_eq!((pid, remote.port), (900, 50001)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn state_changes_carry_no_pid_only_the_tcb() {
        for p in [PointerSize::Four, PointerSize::Eight] {
            let data = Payload::default()
                .u32(6)
                .u32(10)
                .u32(0x1234)
                .ptr(p, 0x8000_1000)
                .0;
            assert_eq!(
                decode(&raw(TCB_STATE_CHANGE, 0, p, &data)).unwrap(),
                Decoded::TcbState {
                    tcb: 0x8000_1000,
                    old: TcpState::FinWait2,
                    new: TcpState::TimeWait
                }
            );
        }
        let bad = Payload::default().u32(6).u32(42).u32(0).u64(1).0;
        let e = decode(&raw(TCB_STATE_CHANGE, 0, PointerSize::Eight, &bad)).unwrap_err();
        assert!(e.to_string().contains("NewState"), "{e}");
    }

    #[test]
    fn listener_bind_failure_names_pid_and_port() {
        for v in [0, 1] {
            for addr in ["0.0.0.0:1433", "[::]:1433"] {
                let mut b = Payload::default()
                    .ptr(PointerSize::Eight, 0xabc)
                    .sockaddr(addr)
                    .u32(0xC000_020A)
                    .u32(3175)
                    .u32(1)
                    .u32(2);
                if v == 1 {
                    b = b.u64(9);
                }
                let (ev, _) = event(
                    decode(&raw(LISTENER_BIND_FAILED_PORT, v, PointerSize::Eight, &b.0)).unwrap(),
                );
                assert_eq!(ev.event, EventKind::Bind);
                assert_eq!((ev.pid, ev.sport), (Some(3175), Some(1433)));
                assert_eq!(ev.errno.as_deref(), Some("EADDRINUSE"));
            }
        }
    }

    #[test]
    fn reservations_and_time_wait_delay() {
        for v in [0, 1] {
            let mut b = Payload::default().u32(500).u32(0).u16(50000).u16(100);
            if v == 1 {
                b = b.u64(1);
            }
            assert_eq!(
                decode(&raw(GLOBAL_PORT_RESERVATION, v, PointerSize::Eight, &b.0)).unwrap(),
                Decoded::PortReservation(Reservation {
                    pid: 500,
                    ret: 0,
                    start: 50000,
                    count: 100,
                    scope: "global"
                })
            );
        }
        let failed = Payload::default().u32(7).u32(0).u16(1).u16(1).0;
        match decode(&raw(
            ENDPOINT_FAILED_PORT_RESERVATION,
            0,
            PointerSize::Eight,
            &failed,
        )) {
            Ok(Decoded::PortReservation(r)) => assert!(r.ret < 0),
            other => panic!("{other:?}"),
        }
        for (af, fam) in [(2u32, Family::Ipv4), (23, Family::Ipv6)] {
            let g = Payload::default()
                .u32(af)
                .raw(&[1; 8])
                .u32(7_200_000)
                .u32(1000)
                .u32(30)
                .u32(1)
                .u32(60)
                .u8(0)
                .u8(0)
                .u32(0)
                .u32(0)
                .0;
            assert_eq!(
                decode(&raw(GLOBAL_PARAMETERS, 0, PointerSize::Eight, &g)).unwrap(),
                Decoded::TimeWaitDelay {
                    family: fam,
                    seconds: 30
                }
            );
        }
    }

    #[test]
    fn truncated_and_malformed_payloads_are_errors_at_every_length() {
        let p = PointerSize::Eight;
        let full = conn_payload(p, 1, "[2001:db8::5]:0", "[2001:db8::9]:1433", 0);
        for n in 0..full.len() {
            let r = decode(&raw(CONNECT_FAILED_PORT_ACQUIRE, 1, p, &full[..n]));
            assert!(r.is_err(), "{n} of {} bytes decoded: {r:?}", full.len());
        }
        // A length field larger than the payload.
        let mut lying = full.clone();
        lying[0] = 0xff;
        assert!(decode(&raw(CONNECT_COMPLETE, 1, p, &lying)).is_err());
        // An address family that is neither AF_INET nor AF_INET6.
        let mut fam = full.clone();
        fam[4] = 99;
        let e = decode(&raw(CONNECT_COMPLETE, 1, p, &fam)).unwrap_err();
        assert!(e.to_string().contains("family 99"), "{e}");
        // A newer template version decodes by its known prefix.
        let mut newer = full;
        newer.extend_from_slice(&[0; 12]);
        assert!(decode(&raw(CONNECT_FAILED_PORT_ACQUIRE, 5, p, &newer)).is_ok());
        // Unknown ids are ignored whatever their bytes.
        assert_eq!(decode(&raw(9999, 0, p, &[1, 2])).unwrap(), Decoded::Ignored);
    }
}
