//! The platform-free event model. Every collector (eBPF on Linux, ETW on
//! Windows, a recording) produces these; attribution, aggregation and output
//! only ever see this module's types.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
pub use smol_str::SmolStr;

use crate::errno;

/// TCP states by their kernel names, as `ss` and the tracepoint print them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    /// From the kernel's numbering (include/net/tcp_states.h).
    pub fn from_kernel(n: u8) -> Option<Self> {
        use TcpState::*;
        Some(match n {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use TcpState::*;
        match self {
            Established => "ESTABLISHED",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            FinWait1 => "FIN_WAIT1",
            FinWait2 => "FIN_WAIT2",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            Listen => "LISTEN",
            Closing => "CLOSING",
            NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// What an event reports. The JSON `event` field carries these names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A TCP state transition.
    State,
    /// The outcome of a bind().
    Bind,
    /// The outcome of a connect().
    Connect,
    /// A socket started listening (CLOSE -> LISTEN).
    Listen,
    /// A socket entered TIME_WAIT (confirmed, never merely inferred).
    Timewait,
    /// Events the kernel could not hand over (ring buffer full).
    Lost,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Bind => "bind",
            EventKind::Connect => "connect",
            EventKind::Listen => "listen",
            EventKind::Timewait => "timewait",
            EventKind::Lost => "lost",
        }
    }
}

/// Why events are missing. Each is counted apart: the kernel reports the
/// first two, portwatch infers the third from a socket's chain of states,
/// and the fourth is portwatch's own bound on what it follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostReason {
    /// The ring buffer was full when the kernel side tried to submit.
    RingBuffer,
    /// The kernel skipped a program because one was already running on that
    /// CPU (`recursion_misses`; counted by kernels since about 6.7).
    Recursion,
    /// A socket's transitions do not chain (an old state that is not the
    /// last new state seen): transitions went missing that no counter saw.
    Inferred,
    /// A table of userspace's was full: closes it was following into
    /// TIME_WAIT (waiting in FIN_WAIT2 for the peer) were given up, so
    /// their TIME_WAIT entries, if any, are not reported.
    Overflow,
}

impl LostReason {
    pub fn describe(self) -> &'static str {
        match self {
            LostReason::RingBuffer => "ring buffer full",
            LostReason::Recursion => "kernel skipped the program (recursion)",
            LostReason::Inferred => "inferred from a broken chain of states",
            LostReason::Overflow => {
                "a table of portwatch's was full (pending closes; connects per destination)"
            }
        }
    }
}

/// A socket's identity within one run: a keyed hash of the kernel's socket
/// address (the key is random per run), so events of one socket can be tied
/// together without revealing kernel addresses. Written as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockId(pub u64);

impl Serialize for SockId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:016x}", self.0))
    }
}

impl<'de> Deserialize<'de> for SockId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let hex = s.trim_start_matches("0x");
        u64::from_str_radix(hex, 16)
            .map(SockId)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a socket id")))
    }
}

/// How the process an event names was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attribution {
    /// The event ran in the process's own context.
    Current,
    /// Remembered for this socket from an earlier event in process context.
    Remembered,
    /// Nobody known: the socket predates the trace.
    Unknown,
}

/// The process (and socket) that held a port a bind() wanted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub state: Option<TcpState>,
    pub protocol: Option<Protocol>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// A destination as the kernel's port allocator sees it: address and port,
/// in one network namespace.
pub type Dest = (Option<u64>, IpAddr, u16);

/// Which end of a connection a socket is: the one that connected, or the
/// one a listener accepted. Only a client's local port comes from the
/// ephemeral range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Client,
    Server,
}

/// Sockets holding ports of one destination's ephemeral pool, in the
/// namespace the connection was made in, as its socket table shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUse {
    /// Sockets towards the destination whose local port lies in the range
    /// and is not reserved, by state (TIME_WAIT included).
    pub in_use: u64,
    pub by_state: std::collections::BTreeMap<String, u64>,
    /// Ports the range offers a destination: its size less reserved ports.
    pub capacity: u64,
    /// That namespace's net.ipv4.ip_local_port_range.
    pub range_low: u16,
    pub range_high: u16,
}

impl PoolUse {
    /// in_use / capacity: 1.0 means the next connect() to this destination
    /// from the same address fails with EADDRNOTAVAIL.
    pub fn pressure(&self) -> f64 {
        if self.capacity == 0 {
            1.0
        } else {
            self.in_use as f64 / self.capacity as f64
        }
    }
}

/// The version of the JSON schema (events, `summary`, `who --json`,
/// `history --json`), in the summary as `schema_version`. Raised when a key
/// changes meaning or goes away; new keys do not raise it.
pub const SCHEMA_VERSION: u32 = 1;

/// One observation. Field names are the stable JSON schema; every key is
/// always present, `null` when it does not apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock nanoseconds since the Unix epoch; RFC 3339 in JSON.
    #[serde(with = "crate::timefmt::rfc3339_ns")]
    pub time: i128,
    pub event: EventKind,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    /// Inline (the kernel keeps 15 bytes): copied, never allocated.
    pub comm: Option<SmolStr>,
    pub uid: Option<u32>,
    pub family: Option<Family>,
    pub protocol: Option<Protocol>,
    pub saddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    pub old_state: Option<TcpState>,
    pub new_state: Option<TcpState>,
    /// 0 or -errno, for bind and connect.
    pub ret: Option<i32>,
    /// The errno's name when `ret` is negative.
    pub errno: Option<SmolStr>,
    /// Boxed, as `pool`: rare, and every event is moved several times on
    /// its way to the output.
    #[serde(default)]
    pub holder: Option<Box<Holder>>,
    pub attribution: Attribution,
    /// Full command line, when the process could be read. Shared with
    /// every event of the process: a clone counts a reference.
    #[serde(default)]
    pub cmdline: Option<SmolStr>,
    /// cgroup path (systemd unit or container), when the process could be
    /// read; shared like `cmdline`.
    #[serde(default)]
    pub cgroup: Option<SmolStr>,
    /// The cgroup v2 id the kernel saw the owner in; it names the cgroup even
    /// after the process has exited.
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    /// What the cgroup path says the process runs as (see
    /// [`crate::workload::Workload`]): the systemd unit or container, the
    /// container runtime and id, the Kubernetes pod uid.
    #[serde(default)]
    pub unit: Option<SmolStr>,
    #[serde(default)]
    pub container_runtime: Option<SmolStr>,
    #[serde(default)]
    pub container_id: Option<SmolStr>,
    #[serde(default)]
    pub pod_uid: Option<SmolStr>,
    /// For `lost` events: how many events were dropped since the previous one.
    #[serde(default)]
    pub lost: Option<u64>,
    /// For `lost` events: why.
    #[serde(default)]
    pub lost_reason: Option<LostReason>,
    /// The socket's identity within this run, tying its events together.
    #[serde(default)]
    pub sock: Option<SockId>,
    /// Inode of the socket's network namespace (as `ls -iL /proc/PID/ns/net`
    /// shows), which tells containers apart.
    #[serde(default)]
    pub netns: Option<u64>,
    /// The pid inside the process's own pid namespace (a container's view,
    /// as its logs name it), when it differs from `pid`.
    #[serde(default)]
    pub container_pid: Option<u32>,
    /// Client or server end, from how the socket was born (when this run
    /// saw it born, or found it in the start-up snapshot).
    #[serde(default)]
    pub side: Option<Side>,
    /// On a connect() that failed with EADDRNOTAVAIL: the sockets holding
    /// ports towards its destination when portwatch looked.
    #[serde(default)]
    pub pool: Option<Box<PoolUse>>,
    /// Why `holder` (on EADDRINUSE) or `pool` could not be found.
    #[serde(default)]
    pub lookup_error: Option<String>,
    /// What about this event was inferred rather than reported by the
    /// kernel (on hooks that cannot see a call's result), and from what.
    #[serde(default)]
    pub inferred: Option<String>,
    /// CLOCK_BOOTTIME of the event as the kernel stamped it (0 when not
    /// from the kernel); the journal keeps it as the time that no wall-clock
    /// step can move.
    #[serde(skip)]
    pub boot_ns: u64,
}

impl Event {
    /// An event with nothing but its time and kind set.
    pub fn new(time: i128, event: EventKind) -> Self {
        Event {
            time,
            event,
            pid: None,
            tid: None,
            comm: None,
            uid: None,
            family: None,
            protocol: None,
            saddr: None,
            sport: None,
            daddr: None,
            dport: None,
            old_state: None,
            new_state: None,
            ret: None,
            errno: None,
            holder: None,
            attribution: Attribution::Unknown,
            cmdline: None,
            cgroup: None,
            cgroup_id: None,
            unit: None,
            container_runtime: None,
            container_id: None,
            pod_uid: None,
            lost: None,
            lost_reason: None,
            sock: None,
            netns: None,
            container_pid: None,
            side: None,
            pool: None,
            lookup_error: None,
            inferred: None,
            boot_ns: 0,
        }
    }

    pub fn lost(time: i128, count: u64, reason: LostReason) -> Self {
        Event {
            lost: Some(count),
            lost_reason: Some(reason),
            ..Event::new(time, EventKind::Lost)
        }
    }

    /// Sets the workload fields from `cgroup`.
    pub fn set_workload(&mut self) {
        let w = crate::workload::Workload::of(self.cgroup.as_deref());
        self.unit = w.unit;
        self.container_runtime = w.container_runtime;
        self.container_id = w.container_id;
        self.pod_uid = w.pod_uid;
    }

    /// The workload fields as one value.
    pub fn workload(&self) -> crate::workload::Workload {
        crate::workload::Workload {
            unit: self.unit.clone(),
            container_runtime: self.container_runtime.clone(),
            container_id: self.container_id.clone(),
            pod_uid: self.pod_uid.clone(),
        }
    }

    /// Sets `ret` and the matching `errno` name.
    pub fn set_ret(&mut self, ret: i32) {
        self.ret = Some(ret);
        self.errno = (ret < 0).then(|| errno::display(-ret));
    }

    /// The errno number of a failed call, if this is one.
    pub fn errno_value(&self) -> Option<i32> {
        self.ret.filter(|r| *r < 0).map(|r| -r)
    }

    /// bind/connect that failed (EINPROGRESS is not a failure).
    pub fn is_failure(&self) -> bool {
        self.ret.is_some_and(errno::is_failure)
    }

    pub fn local(&self) -> (IpAddr, u16) {
        (
            self.saddr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            self.sport.unwrap_or(0),
        )
    }

    pub fn remote(&self) -> (IpAddr, u16) {
        (
            self.daddr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            self.dport.unwrap_or(0),
        )
    }
}

/// What a collector hands to the pipeline.
// Lost is rare; boxing Event would cost an allocation per event instead.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum SourceMsg {
    /// An event as the collector saw it, before attribution, with what the
    /// collector knows beyond the model's fields.
    Event(Event, Hints),
    /// The collector could not deliver `count` events.
    Lost {
        time: i128,
        count: u64,
        reason: LostReason,
    },
}

/// What a collector knows about an event beyond the model's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// A kernel hook saw this socket enter TIME_WAIT.
    pub timewait_confirmed: bool,
    /// The kernel dropped an owner remembered for this socket address
    /// because it did not fit the socket's chain of states.
    pub stale_owner: bool,
    /// An accepted child of an address several processes listen on.
    pub ambiguous_listener: bool,
    /// A replayed event, already attributed once: check its chain, derive
    /// nothing again.
    pub replayed: bool,
    /// A bind() attempt from a hook that cannot see its result; a
    /// confirmation from the same thread follows if it succeeded.
    pub bind_attempt: bool,
    /// A bind() that succeeded, confirming the thread's attempt.
    pub bind_confirmed: bool,
}

/// What the kernel counted instead of sending (aggregate mode), since the
/// last time it was read: `top` and `serve` add it to what the events that
/// did cross the ring say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// Events of every kind, sent or not.
    pub events: u64,
    /// TCP transitions by state pair, sent or not.
    pub transitions: Vec<(TcpState, TcpState, u64)>,
    /// Connects that succeeded or are in progress (failures are sent).
    pub connects: Vec<CountedConnects>,
    /// Connects the kernel could not count per destination: its table was
    /// full. Lost, reason overflow.
    pub uncounted: u64,
    /// Broken chains of states the kernel found: lost, reason inferred (at
    /// least one transition each).
    pub gaps: u64,
}

/// One process's connects to one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedConnects {
    pub netns: Option<u64>,
    pub pid: Option<u32>,
    pub comm: Option<SmolStr>,
    pub workload: crate::workload::Workload,
    pub daddr: IpAddr,
    pub dport: u16,
    pub n: u64,
}

/// A socket's protocol, state and two ends, as `who` reports them on every
/// platform, with the trace schema's field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SocketEnds {
    pub protocol: Protocol,
    pub family: Family,
    /// TCP state name; for UDP `UNCONN` or `ESTABLISHED`, as ss prints them.
    pub state: String,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl SocketEnds {
    /// Listeners first, then by protocol, state and address, as an
    /// operator reads them.
    pub fn reading_order(&self) -> impl Ord + '_ {
        (
            self.state != "LISTEN",
            self.protocol.name(),
            self.state.as_str(),
            self.saddr,
            self.sport,
            self.daddr,
            self.dport,
        )
    }

    /// `addr:port`, `[v6]:port`: the local and the remote end.
    pub fn local(&self) -> String {
        endpoint(self.saddr, self.sport)
    }

    pub fn remote(&self) -> String {
        endpoint(self.daddr, self.dport)
    }
}

/// `addr:port`, or `[addr]:port` for IPv6.
pub fn endpoint(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V6(a) => format!("[{a}]:{p}"),
        IpAddr::V4(a) => format!("{a}:{p}"),
    }
}
