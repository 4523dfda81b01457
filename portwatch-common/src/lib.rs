//! The wire format between portwatch's eBPF programs and its userspace.
//!
//! Every type here is `#[repr(C)]`, fixed-size and explicitly padded, so that
//! the BPF side (bpfel) and the host agree byte for byte. Layout changes bump
//! [`EVENT_VERSION`]; userspace refuses events of another version rather than
//! misreading them.
#![no_std]

/// Bumped on any change to [`RawEvent`] or [`Owner`].
pub const EVENT_VERSION: u16 = 1;

pub const TASK_COMM_LEN: usize = 16;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;

/// Kernel TCP states (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// What a [`RawEvent`] reports.
pub mod kind {
    /// A TCP state transition from `sock:inet_sock_set_state`.
    pub const STATE: u8 = 1;
    /// The outcome of a bind(): `ret` is 0 or -errno, addresses are the ones asked for.
    pub const BIND: u8 = 2;
    /// The outcome of a connect(): `ret` is 0 or -errno, `daddr`/`dport` are the destination.
    pub const CONNECT: u8 = 3;
}

/// Bits of [`RawEvent::flags`].
pub mod flags {
    /// The owner was read from the current task (the event ran in process context).
    pub const OWNER_CURRENT: u8 = 1 << 0;
    /// The owner was remembered for this socket from an earlier process-context event.
    pub const OWNER_REMEMBERED: u8 = 1 << 1;
    /// A kernel hook on `tcp_time_wait()` saw this socket enter TIME_WAIT, so the
    /// FIN_WAIT2/CLOSING -> CLOSE transition that follows is a confirmed TIME_WAIT.
    pub const TIMEWAIT_CONFIRMED: u8 = 1 << 2;
    /// For CONNECT events from syscall tracepoints: the state tracepoint saw
    /// this task's TCP socket go CLOSE -> SYN_SENT during the call, so it is TCP.
    pub const TCP_SEEN: u8 = 1 << 3;
}

/// The process a socket is attributed to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

impl Owner {
    pub const fn zeroed() -> Self {
        Owner {
            tgid: 0,
            tid: 0,
            uid: 0,
            _pad: 0,
            cgroup_id: 0,
            comm: [0; TASK_COMM_LEN],
        }
    }
}

/// One event in the ring buffer. Ports are in host byte order; addresses are
/// in network order, IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub version: u16,
    pub kind: u8,
    pub flags: u8,
    pub family: u16,
    pub protocol: u16,
    pub old_state: u8,
    pub new_state: u8,
    pub sport: u16,
    pub dport: u16,
    pub _pad0: u16,
    /// 0 or -errno for BIND and CONNECT; 0 for STATE.
    pub ret: i32,
    pub _pad1: u32,
    /// CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ts_ns: u64,
    /// Kernel address of the socket: the key that ties transitions together.
    pub skaddr: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub owner: Owner,
}

impl RawEvent {
    pub const fn zeroed() -> Self {
        RawEvent {
            version: EVENT_VERSION,
            kind: 0,
            flags: 0,
            family: 0,
            protocol: 0,
            old_state: 0,
            new_state: 0,
            sport: 0,
            dport: 0,
            _pad0: 0,
            ret: 0,
            _pad1: 0,
            ts_ns: 0,
            skaddr: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            owner: Owner::zeroed(),
        }
    }
}

/// A bind() or connect() in flight, kept between syscall entry and exit (or
/// kprobe and kretprobe) by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingCall {
    pub family: u16,
    pub port: u16,
    pub flags: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

/// Filters applied in the kernel, set by userspace before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only events owned by this tgid; 0 = all.
    pub pid: u32,
    /// Nonzero: only events with either port in the PORT_FILTER map.
    pub ports_enabled: u32,
}

const _: () = assert!(core::mem::size_of::<Owner>() == 40);
const _: () = assert!(core::mem::size_of::<RawEvent>() == 112);
const _: () = assert!(core::mem::size_of::<PendingCall>() == 24);
const _: () = assert!(core::mem::size_of::<Filter>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, no implicit padding.
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::RawEvent {}
    unsafe impl aya::Pod for super::PendingCall {}
    unsafe impl aya::Pod for super::Filter {}
}
