//! The Windows collector: Event Tracing for Windows (ETW).
//!
//! ETW events reach us as (provider, event id, template version, payload
//! bytes, header). Everything that turns those into portwatch's model is a
//! pure function here, built and unit-tested on every platform and fuzzed
//! (`cargo +nightly fuzz run etw_decode` in portwatch/fuzz):
//!
//! - [`tcpip`]: Microsoft-Windows-TCPIP, the TCB state machine (1051, no
//!   pid), connects (1033/1034), port exhaustion (1050), listener bind
//!   failures (1122), port reservations (1052-1054), TIME_WAIT delay (1110)
//!   and the connection-object owners (accepts 1017, closes 1038/1039/1043,
//!   rundown 1300);
//! - [`network`]: Microsoft-Windows-Kernel-Network (connects, accepts,
//!   disconnects with pids, IPv4 and IPv6) and Microsoft-Windows-Winsock-AFD
//!   (bind outcomes with the caller's pid);
//! - [`conn`]: attribution of TCB state changes through the connection
//!   object, as the Linux collector attributes softirq transitions through
//!   the socket.
//!
//! Field layouts follow the published manifests as dumped by
//! github.com/repnz/etw-providers-docs (Manifests-Win7-7600,
//! Manifests-Win10-10240/17134/18990, `Microsoft-Windows-TCPIP.xml` etc.)
//! and github.com/jdu2600/Windows10EtwEvents (`manifest/*.tsv`, every
//! template version through Windows 11). Later template versions only
//! append fields, so an unknown newer version is decoded by its known
//! prefix.
//!
//! The live session (Windows only) is in `session`, the trace loop in `live`.

pub mod conn;
pub mod network;
pub mod payload;
pub mod tcpip;

#[cfg(windows)]
pub mod live;
#[cfg(windows)]
pub mod session;

use std::net::IpAddr;

pub use payload::{DecodeError, PointerSize, SockAddr};

use crate::errno;
use crate::model::{Event, Family, TcpState};

/// The providers portwatch decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Microsoft-Windows-TCPIP {2F07E2EE-15DB-40F1-90EF-9D7BA282188A}
    Tcpip,
    /// Microsoft-Windows-Kernel-Network {7DD42A49-5329-4832-8DFD-43D979153A88}
    KernelNetwork,
    /// Microsoft-Windows-Winsock-AFD {E53C6823-7BB8-44BB-90DC-3F86090D48A6}
    WinsockAfd,
}

impl Provider {
    pub const ALL: [Provider; 3] = [
        Provider::Tcpip,
        Provider::KernelNetwork,
        Provider::WinsockAfd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Tcpip => "Microsoft-Windows-TCPIP",
            Provider::KernelNetwork => "Microsoft-Windows-Kernel-Network",
            Provider::WinsockAfd => "Microsoft-Windows-Winsock-AFD",
        }
    }

    pub fn guid(self) -> &'static str {
        match self {
            Provider::Tcpip => "{2F07E2EE-15DB-40F1-90EF-9D7BA282188A}",
            Provider::KernelNetwork => "{7DD42A49-5329-4832-8DFD-43D979153A88}",
            Provider::WinsockAfd => "{E53C6823-7BB8-44BB-90DC-3F86090D48A6}",
        }
    }

    /// The GUID as (data1, data2, data3, data4), the layout of `GUID`.
    pub fn guid_parts(self) -> (u32, u16, u16, [u8; 8]) {
        match self {
            Provider::Tcpip => (
                0x2F07E2EE,
                0x15DB,
                0x40F1,
                [0x90, 0xEF, 0x9D, 0x7B, 0xA2, 0x82, 0x18, 0x8A],
            ),
            Provider::KernelNetwork => (
                0x7DD42A49,
                0x5329,
                0x4832,
                [0x8D, 0xFD, 0x43, 0xD9, 0x79, 0x15, 0x3A, 0x88],
            ),
            Provider::WinsockAfd => (
                0xE53C6823,
                0x7BB8,
                0x44BB,
                [0x90, 0xDC, 0x3F, 0x86, 0x09, 0x0D, 0x48, 0xA6],
            ),
        }
    }

    /// Which provider a GUID (as its parts) names.
    pub fn from_guid_parts(parts: (u32, u16, u16, [u8; 8])) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.guid_parts() == parts)
    }

    /// The keywords portwatch enables: the connection lifecycle and its
    /// failures, never the per-packet send/receive paths (manifest
    /// `<keyword>` masks).
    pub fn keywords(self) -> u64 {
        match self {
            // ut:TcpipEndpoint 0x1 | ut:TcpipListener 0x2 | ut:TcpipTcb 0x4 |
            // ut:TcpipBind 0x8 | ut:TcpipDiagnosis 0x80 | ut:Endpoint 0x400 |
            // ut:ConnectPath 0x4_0000_0000 | ut:ClosePath 0x10_0000_0000 |
            // ut:Configuration 0x40_0000_0000 | ut:Global 0x80_0000_0000
            Provider::Tcpip => 0x1 | 0x2 | 0x4 | 0x8 | 0x80 | 0x400 | 0xD4_0000_0000,
            // KERNEL_NETWORK_KEYWORD_IPV4 0x10 | _IPV6 0x20
            Provider::KernelNetwork => 0x10 | 0x20,
            // AFD_KW_SOURCE_WINSOCK and the rest: AFD has no per-call keyword
            // for bind alone; level Informational keeps the data path out.
            Provider::WinsockAfd => u64::MAX,
        }
    }
}

impl Provider {
    /// The events portwatch decodes: the session filters each provider to
    /// these (EVENT_FILTER_TYPE_EVENT_ID), so that Kernel-Network's
    /// per-packet send/receive events and AFD's per-call data events, which
    /// share their keywords and level with the ones wanted, never leave the
    /// kernel.
    pub fn event_ids(self) -> &'static [u16] {
        match self {
            Provider::Tcpip => &[
                tcpip::ACCEPT_COMPLETE,
                tcpip::CONNECT_COMPLETE,
                tcpip::CONNECT_FAILURE,
                tcpip::CLOSE_REQUEST,
                tcpip::ABORT_REQUEST,
                tcpip::ABORT_COMPLETE,
                tcpip::DISCONNECT_COMPLETE,
                tcpip::CONNECT_FAILED_PORT_ACQUIRE,
                tcpip::TCB_STATE_CHANGE,
                tcpip::ENDPOINT_ACQUIRE_PORT_RESERVATION,
                tcpip::ENDPOINT_FAILED_PORT_RESERVATION,
                tcpip::GLOBAL_PORT_RESERVATION,
                tcpip::GLOBAL_PARAMETERS,
                tcpip::LISTENER_BIND_FAILED_PORT,
                tcpip::CONNECTION_RUNDOWN,
            ],
            Provider::KernelNetwork => &[
                network::KN_CONNECT_V4,
                network::KN_DISCONNECT_V4,
                network::KN_ACCEPT_V4,
                network::KN_CONNECT_V6,
                network::KN_DISCONNECT_V6,
                network::KN_ACCEPT_V6,
            ],
            Provider::WinsockAfd => &[network::AFD_BIND_WITH_ADDRESS],
        }
    }
}

/// One ETW event as the collector hands it to the decoders.
#[derive(Clone, Copy, Debug)]
pub struct RawEvent<'a> {
    pub provider: Provider,
    pub id: u16,
    pub version: u8,
    pub pointer: PointerSize,
    /// Unix ns (from the header's FILETIME, [`payload::filetime_to_unix_ns`]).
    pub time: i128,
    /// EVENT_HEADER.ProcessId: the process the event was logged in, which
    /// is the caller for AFD's synchronous calls and meaningless for events
    /// TCPIP logs from a DPC.
    pub header_pid: u32,
    pub data: &'a [u8],
}

/// What one ETW event says, in portwatch's terms.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A model event, complete with its process. `tcb` is the connection
    /// object it concerns, when there is one.
    Event { event: Box<Event>, tcb: Option<u64> },
    /// A connection object's process and ends (accept, close, disconnect,
    /// rundown): no event of its own, but what TCB state changes are
    /// attributed through.
    Owner {
        tcb: u64,
        pid: u32,
        local: SockAddr,
        remote: SockAddr,
    },
    /// A connection's ends and process without a connection object
    /// (Kernel-Network): names the owner of a tuple.
    Flow {
        pid: u32,
        local: SockAddr,
        remote: SockAddr,
        what: FlowKind,
    },
    /// TcpTcbStateChange: a connection object moved; no pid, no addresses.
    TcbState {
        tcb: u64,
        old: TcpState,
        new: TcpState,
    },
    /// TcpGlobalParameters: how long TIME_WAIT lasts for this family.
    TimeWaitDelay { family: Family, seconds: u32 },
    /// TcpEndpointAcquire/FailedPortReservation, TcpGlobalPortReservation.
    PortReservation(Reservation),
    /// An event portwatch does not use.
    Ignored,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    Connected,
    Accepted,
    Disconnected,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub pid: u32,
    /// 0, or the negative errno of a failed reservation.
    pub ret: i32,
    pub start: u16,
    pub count: u16,
    /// `global` (TcpGlobalPortReservation) or `endpoint`.
    pub scope: &'static str,
}

/// Decodes one event. Pure: the same bytes always give the same answer.
pub fn decode(raw: &RawEvent<'_>) -> Result<Decoded, DecodeError> {
    match raw.provider {
        Provider::Tcpip => tcpip::decode(raw),
        Provider::KernelNetwork => network::decode_kernel_network(raw),
        Provider::WinsockAfd => network::decode_afd(raw),
    }
}

/// NTSTATUS values the connect and bind paths report, as the errno whose
/// meaning they carry (the WSA error an application sees in brackets).
/// None for success; unknown failures keep their NTSTATUS (see
/// [`set_status`]).
pub fn ntstatus_errno(status: u32) -> Option<i32> {
    Some(match status {
        0 => return None,
        // STATUS_ADDRESS_ALREADY_EXISTS, STATUS_SHARING_VIOLATION (WSAEADDRINUSE)
        0xC000_020A | 0xC000_0043 => errno::EADDRINUSE,
        // STATUS_TOO_MANY_ADDRESSES: no port left to acquire; the
        // application sees WSAENOBUFS or WSAEADDRINUSE, Linux says EADDRNOTAVAIL.
        0xC000_0209 => errno::EADDRNOTAVAIL,
        // STATUS_INVALID_ADDRESS_COMPONENT (WSAEADDRNOTAVAIL)
        0xC000_0207 => errno::EADDRNOTAVAIL,
        // STATUS_ACCESS_DENIED (WSAEACCES): e.g. a port in an excluded range
        0xC000_0022 => 13,
        // STATUS_CONNECTION_REFUSED
        0xC000_0236 => 111,
        // STATUS_IO_TIMEOUT
        0xC000_00B5 => 110,
        // STATUS_NETWORK_UNREACHABLE, STATUS_HOST_UNREACHABLE
        0xC000_023C => 101,
        0xC000_023D => 113,
        // STATUS_CONNECTION_ABORTED, STATUS_CONNECTION_RESET, STATUS_CANCELLED
        0xC000_0241 | 0xC000_0120 => 103,
        0xC000_020D => 104,
        // STATUS_INSUFFICIENT_RESOURCES (WSAENOBUFS)
        0xC000_009A => 105,
        // STATUS_PENDING is no outcome yet; callers skip it.
        _ => return None,
    })
}

/// STATUS_PENDING: the call has not finished.
pub const STATUS_PENDING: u32 = 0x0000_0103;

/// Sets `ret`/`errno` from an NTSTATUS: 0 for success, -errno for a status
/// with a Linux meaning, and for any other failure a negative value with
/// `errno` naming the NTSTATUS, so it still counts as a failure.
pub fn set_status(ev: &mut Event, status: u32) {
    if status == 0 {
        ev.set_ret(0);
    } else if let Some(e) = ntstatus_errno(status) {
        ev.set_ret(-e);
    } else {
        ev.ret = Some(-(0x1_0000 + (status & 0xffff) as i32));
        ev.errno = Some(smol_str::format_smolstr!("NTSTATUS_0x{status:08X}"));
    }
}

fn family_of(a: IpAddr) -> Family {
    match a {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

/// The model's `sock` identity for a connection object.
pub fn tcb_id(tcb: u64) -> crate::model::SockId {
    use std::hash::BuildHasher as _;
    use std::sync::OnceLock;
    // A keyed hash with a per-run key, as on Linux: ties a connection's
    // events together without revealing kernel addresses.
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    crate::model::SockId(KEY.get_or_init(Default::default).hash_one(tcb))
}

/// The Windows connection-object state numbering (manifest valueMap
/// TCP_CONNECTION_STATE_ValueMap: 0 ClosedState .. 10 TimeWaitState).
pub fn tcb_state(n: u32) -> Option<TcpState> {
    use TcpState::*;
    Some(match n {
        0 => Close,
        1 => Listen,
        2 => SynSent,
        3 => SynRecv,
        4 => Established,
        5 => FinWait1,
        6 => FinWait2,
        7 => CloseWait,
        8 => Closing,
        9 => LastAck,
        10 => TimeWait,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    #[test]
    fn statuses_map_to_errno_names_or_keep_their_ntstatus() {
        let mut ev = Event::new(0, EventKind::Bind);
        set_status(&mut ev, 0);
        assert_eq!((ev.ret, ev.errno.as_deref()), (Some(0), None));
        set_status(&mut ev, 0xC000_020A);
        assert_eq!(ev.errno.as_deref(), Some("EADDRINUSE"));
        set_status(&mut ev, 0xC000_0022);
        assert_eq!(ev.errno.as_deref(), Some("EACCES"));
        set_status(&mut ev, 0xC000_0209);
        assert_eq!(ev.errno.as_deref(), Some("EADDRNOTAVAIL"));
        set_status(&mut ev, 0xC0DE_0001);
        assert_eq!(ev.errno.as_deref(), Some("NTSTATUS_0xC0DE0001"));
        assert!(ev.is_failure());
    }

    #[test]
    fn guids_round_trip() {
        for p in Provider::ALL {
            assert_eq!(Provider::from_guid_parts(p.guid_parts()), Some(p));
            let (a, b, c, d) = p.guid_parts();
            let text = format!(
                "{{{a:08X}-{b:04X}-{c:04X}-{:02X}{:02X}-{}}}",
                d[0],
                d[1],
                d[2..]
                    .iter()
                    .map(|x| format!("{x:02X}"))
                    .collect::<String>()
            );
            assert_eq!(text, p.guid());
        }
    }

    #[test]
    fn the_session_filter_admits_exactly_the_decoded_events() {
        for p in Provider::ALL {
            let ids = p.event_ids();
            // EVENT_FILTER_EVENT_ID takes at most 64 ids.
            assert!(!ids.is_empty() && ids.len() <= 64);
            for id in 0..2000u16 {
                let raw = RawEvent {
                    provider: p,
                    id,
                    version: 0,
                    pointer: PointerSize::Eight,
                    time: 0,
                    header_pid: 0,
                    data: &[],
                };
                // Decoded ids fail on an empty payload; the others are ignored.
                let decoded = decode(&raw) != Ok(Decoded::Ignored);
                assert_eq!(decoded, ids.contains(&id), "{p:?} event {id}");
            }
        }
    }

    #[test]
    fn tcb_states_follow_the_manifest_map() {
        assert_eq!(tcb_state(0), Some(TcpState::Close));
        assert_eq!(tcb_state(6), Some(TcpState::FinWait2));
        assert_eq!(tcb_state(10), Some(TcpState::TimeWait));
        assert_eq!(tcb_state(11), None);
    }
}
