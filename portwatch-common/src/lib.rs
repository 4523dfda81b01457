//! The wire format between portwatch's eBPF programs and its userspace.
//!
//! Every type here is `#[repr(C)]`, fixed-size and explicitly padded, so that
//! the BPF side (bpfel) and the host agree byte for byte. Layout changes bump
//! [`EVENT_VERSION`]; userspace refuses events of another version rather than
//! misreading them.
#![no_std]

/// Bumped on any change to [`RawEvent`] or [`Owner`].
pub const EVENT_VERSION: u16 = 3;

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
    /// The owner remembered for this socket address did not fit the
    /// socket's chain of states: the memory belongs to a new socket whose
    /// birth the trace missed, or the old socket's CLOSE went missing. The
    /// entry was dropped and the event left unattributed.
    pub const STALE_OWNER: u8 = 1 << 4;
    /// An accepted child of a listening address that several processes
    /// listen on (SO_REUSEPORT): which one accepts it is unknown.
    pub const AMBIGUOUS_LISTENER: u8 = 1 << 5;
    /// For BIND events from the cgroup bind4/bind6 hook: the attempt, before
    /// the kernel decided (`ret` means nothing). A BIND_CONFIRMED from the
    /// same thread follows when the bind succeeded; none when it failed.
    pub const BIND_ATTEMPT: u8 = 1 << 6;
    /// For BIND events from the cgroup post_bind4/post_bind6 hook: the bind
    /// succeeded (addresses are the ones bound).
    pub const BIND_CONFIRMED: u8 = 1 << 7;
}

/// How a socket was born: it connected, or a listener accepted it.
pub mod side {
    pub const CLIENT: u8 = 1;
    pub const SERVER: u8 = 2;
}

/// Values of [`Filter::mode`].
pub mod mode {
    /// Every event crosses the ring.
    pub const FULL: u32 = 0;
    /// Aggregate in the kernel: events are counted per process there, and
    /// only the rare ones (listens, closes that may be TIME_WAIT, failures)
    /// cross the ring.
    pub const AGGREGATE: u32 = 1;
}

/// Per process (tgid), per CPU: events counted in the kernel in aggregate
/// mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcCount {
    pub events: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Slots of the per-CPU `COUNTS` array (aggregate mode). Every event the
/// filters keep is counted here, sent or not: userspace reads the totals
/// at each refresh instead of counting what crosses the ring.
pub mod counts {
    /// `old << 4 | new`: TCP transitions by state pair (states are < 16).
    pub const TRANSITIONS: u32 = 256;
    /// bind() and connect() events.
    pub const CALLS: u32 = 256;
    /// Connects that found `DEST_COUNTS` full: counted nowhere per
    /// destination, so reported as lost (overflow).
    pub const DEST_FULL: u32 = 257;
    /// Broken chains of states: a transition that does not start where the
    /// socket's remembered last state ended, or a birth at an address whose
    /// previous socket's CLOSE never came. At least one transition each
    /// went missing (a program the kernel skipped, say), so userspace, which
    /// sees too few transitions to follow chains here, reports them as lost
    /// (inferred).
    pub const GAPS: u32 = 258;
    pub const SLOTS: u32 = 259;
}

/// Key of `DEST_COUNTS`: one process's connects to one destination, in one
/// network namespace (aggregate mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DestKey {
    /// Network namespace inode; 0 where the kernel's BTF is unavailable.
    pub netns: u32,
    pub tgid: u32,
    pub family: u16,
    pub dport: u16,
    pub _pad: u32,
    /// Network order, IPv4 in the first 4 bytes.
    pub daddr: [u8; 16],
}

/// Value of `DEST_COUNTS`, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestCount {
    /// connect() calls that succeeded or are in progress, from the connect
    /// hook (its failures cross the ring).
    pub connects: u64,
    /// SYN_SENT -> ESTABLISHED of the state tracepoint: TCP connects that
    /// succeeded, what counts as a connect where no connect hook is
    /// attached (as the full trace infers them).
    pub established: u64,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

/// The process a socket is attributed to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    /// In the owner map: the last state the socket was seen entering, so a
    /// later transition that cannot follow it exposes a stale entry.
    pub state: u8,
    /// In the owner map: how the socket was born ([`side`]).
    pub side: u8,
    pub _pad: [u8; 2],
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

impl Owner {
    pub const fn zeroed() -> Self {
        Owner {
            tgid: 0,
            tid: 0,
            uid: 0,
            state: 0,
            side: 0,
            _pad: [0; 2],
            cgroup_id: 0,
            comm: [0; TASK_COMM_LEN],
        }
    }
}

/// Key of the listener map: what an accepted child shares with its listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// Network namespace inode; 0 where the kernel's BTF is unavailable.
    pub netns: u32,
    pub family: u16,
    pub port: u16,
    /// The listening address (network order, IPv4 in the first 4 bytes);
    /// all zeroes for a wildcard listener.
    pub addr: [u8; 16],
}

/// Value of the listener map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub owner: Owner,
    /// Listening sockets on this key (several with SO_REUSEPORT).
    pub count: u32,
    /// Nonzero once two processes listened on the key at the same time.
    pub ambiguous: u32,
}

/// Offsets into kernel structures, read from the running kernel's BTF by
/// userspace and handed to the programs as a read-only global. Nothing in
/// the programs assumes a layout: a bit of [`KernelOffsets::valid`] unset
/// turns off what needs those fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Bits of [`offsets_valid`].
    pub valid: u32,
    /// `sock.__sk_common.skc_net.net` (a `struct net *`).
    pub sock_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `sock.sk_protocol` (a u16 since Linux 5.6; a bitfield before).
    pub sock_protocol: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `task_struct.nsproxy`, `nsproxy.net_ns`.
    pub task_nsproxy: u32,
    pub nsproxy_net: u32,
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.fd`,
    /// `fdtable.max_fds`, `file.private_data`: a syscall's fd to its socket.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_private: u32,
}

/// Bits of [`KernelOffsets::valid`].
pub mod offsets_valid {
    /// A socket's network namespace (`sock_net`, `net_inum`).
    pub const SOCK_NETNS: u32 = 1 << 0;
    /// The current task's network namespace (`task_nsproxy`, `nsproxy_net`, `net_inum`).
    pub const TASK_NETNS: u32 = 1 << 1;
    /// `sock_protocol` is a plain u16.
    pub const PROTOCOL: u32 = 1 << 2;
    /// `socket_sk`.
    pub const SOCKET_SK: u32 = 1 << 3;
    /// The fd table (`task_files` .. `file_private`).
    pub const FD_TABLE: u32 = 1 << 4;
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
    /// [`side`] of the socket, when known.
    pub side: u16,
    /// 0 or -errno for BIND and CONNECT; 0 for STATE.
    pub ret: i32,
    /// Inode of the socket's network namespace; 0 when it could not be read.
    pub netns: u32,
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
            side: 0,
            ret: 0,
            netns: 0,
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
    /// The syscall's file descriptor (syscall tracepoints only).
    pub fd: u32,
    pub _pad2: u32,
    /// The socket, where the hook knows it (function hooks, or the state
    /// tracepoint's CLOSE -> SYN_SENT during a traced connect()).
    pub sk: u64,
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
    /// Only events of sockets in this network namespace (inode); 0 = all.
    pub netns: u32,
    /// [`mode`].
    pub mode: u32,
}

const _: () = assert!(core::mem::size_of::<Owner>() == 40);
const _: () = assert!(core::mem::size_of::<RawEvent>() == 112);
const _: () = assert!(core::mem::size_of::<PendingCall>() == 40);
const _: () = assert!(core::mem::size_of::<Filter>() == 16);
const _: () = assert!(core::mem::size_of::<ListenKey>() == 24);
const _: () = assert!(core::mem::size_of::<Listener>() == 48);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 48);
const _: () = assert!(core::mem::size_of::<ProcCount>() == 24);
const _: () = assert!(core::mem::size_of::<DestKey>() == 32);
const _: () = assert!(core::mem::size_of::<DestCount>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, no implicit padding.
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::RawEvent {}
    unsafe impl aya::Pod for super::PendingCall {}
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::Listener {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ProcCount {}
    unsafe impl aya::Pod for super::DestKey {}
    unsafe impl aya::Pod for super::DestCount {}
}
