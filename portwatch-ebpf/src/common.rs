//! Maps and helpers shared by every hook.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::map,
    maps::{HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use portwatch_common::{
    counts, mode, offsets_valid as valid, DestCount, DestKey, Filter, KernelOffsets, ListenKey,
    Listener, Owner, PendingCall, ProcCount, RawEvent, AF_INET, AF_INET6,
};

/// Default 4 MiB; userspace resizes it with `set_max_entries` before loading.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Bumped whenever a ring-buffer reserve fails, so no loss is silent.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// LRU maps keep one LRU list per CPU instead of one shared list behind a
/// lock that every CPU's insert contends for.
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Socket address -> the process that owns it, learned in process context and
/// read back when the kernel reports a transition from softirq.
#[map]
pub static OWNERS: LruHashMap<u64, Owner> =
    LruHashMap::with_max_entries(131072, BPF_F_NO_COMMON_LRU);

/// (netns, family, port, address) of a listening socket -> its owner;
/// accepted child sockets inherit it. Userspace seeds it at start with the
/// listeners that predate the trace.
#[map]
pub static LISTENERS: LruHashMap<ListenKey, Listener> =
    LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU);

/// bind()/connect() arguments between entry and exit, by thread id.
#[map]
pub static PENDING_BIND: HashMap<u32, PendingCall> = HashMap::with_max_entries(8192, 0);
#[map]
pub static PENDING_CONNECT: HashMap<u32, PendingCall> = HashMap::with_max_entries(8192, 0);

/// Aggregate mode: events per process, counted here instead of sent.
#[map]
pub static PROC_COUNTS: LruPerCpuHashMap<u32, ProcCount> =
    LruPerCpuHashMap::with_max_entries(16384, 0);

/// Whether only the rare events cross the ring (the rest are counted).
#[inline(always)]
pub fn aggregating() -> bool {
    filter().mode == mode::AGGREGATE
}

/// Counts one event of `owner` in PROC_COUNTS (aggregate mode).
#[inline(always)]
pub fn count_event(owner: &Owner) {
    match PROC_COUNTS.get_ptr_mut(&owner.tgid) {
        Some(c) => unsafe { (*c).events += 1 },
        None => {
            let c = ProcCount {
                events: 1,
                comm: owner.comm,
            };
            let _ = PROC_COUNTS.insert(&owner.tgid, &c, 0);
        }
    }
}

/// Aggregate mode: every event kept, sent or not, by [`counts`] slot. Read
/// by top and serve at each refresh.
#[map]
pub static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counts::SLOTS, 0);

/// Aggregate mode: connects per (netns, process, destination). Not LRU: an
/// eviction would lose counts silently. A full map counts in
/// `COUNTS[DEST_FULL]`; userspace deletes the entries of exited processes.
#[map]
pub static DEST_COUNTS: PerCpuHashMap<DestKey, DestCount> =
    PerCpuHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn count_slot(slot: u32) {
    if let Some(n) = COUNTS.get_ptr_mut(slot) {
        unsafe { *n += 1 };
    }
}

/// Counts a TCP transition by its state pair.
#[inline(always)]
pub fn count_transition(old: u8, new: u8) {
    count_slot((u32::from(old & 15) << 4) | u32::from(new & 15));
}

/// Counts one connect of `owner` to `daddr`:`dport` in `netns`: from the
/// connect hook (`hook`), or the state tracepoint's SYN_SENT -> ESTABLISHED.
#[inline(always)]
pub fn count_connect(
    netns: u32,
    owner: &Owner,
    family: u16,
    daddr: [u8; 16],
    dport: u16,
    hook: bool,
) {
    let key = DestKey {
        netns,
        tgid: owner.tgid,
        family,
        dport,
        _pad: 0,
        daddr,
    };
    match DEST_COUNTS.get_ptr_mut(&key) {
        Some(c) => unsafe {
            if hook {
                (*c).connects += 1;
            } else {
                (*c).established += 1;
            }
        },
        None => {
            let c = DestCount {
                connects: u64::from(hook),
                established: u64::from(!hook),
                cgroup_id: owner.cgroup_id,
                comm: owner.comm,
            };
            if DEST_COUNTS.insert(&key, &c, 0).is_err() {
                count_slot(counts::DEST_FULL);
            }
        }
    }
}

/// Ports to report when `FILTER.ports_enabled` is set.
#[map]
pub static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(256, 0);

/// Set by userspace at load time (aya `set_global`).
#[unsafe(no_mangle)]
static FILTER: Filter = Filter {
    pid: 0,
    ports_enabled: 0,
    netns: 0,
    mode: 0,
};

/// Kernel struct offsets from the running kernel's BTF, set by userspace at
/// load time; `valid` says which may be used.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    valid: 0,
    sock_net: 0,
    net_inum: 0,
    sock_protocol: 0,
    socket_sk: 0,
    task_nsproxy: 0,
    nsproxy_net: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_fd: 0,
    fdt_max_fds: 0,
    file_private: 0,
};

/// Wake the reader only when this many bytes wait in EVENTS (set by
/// userspace at load time); 0 wakes it for every event, the kernel default.
/// Userspace otherwise drains on a short timer: a wakeup is an irq_work (a
/// self-IPI) in the traced context, microseconds per event under load.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// What one RawEvent takes in the ring: the record and its 8-byte header.
const RECORD_BYTES: u64 = (core::mem::size_of::<RawEvent>() as u64 + 8 + 7) & !7;

/// Submit flags: wake the reader only when this record makes the backlog
/// cross a multiple of WAKEUP_BYTES, so a reader that sleeps between timer
/// drains hears of a burst before the ring fills, but never once per event.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let every = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if every == 0 {
        return 0;
    }
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA);
    let before = pending.saturating_sub(RECORD_BYTES);
    if pending / every != before / every {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub fn filter() -> Filter {
    // Volatile so the compiler does not fold the load-time value away.
    unsafe { core::ptr::read_volatile(&FILTER) }
}

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // Volatile so the compiler does not fold the load-time value away.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
fn read<T: Copy>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one fails.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// Inode of the network namespace of socket `sk`.
#[inline(always)]
pub fn sock_netns(sk: u64, o: &KernelOffsets) -> u32 {
    if o.valid & valid::SOCK_NETNS == 0 {
        return 0;
    }
    read::<u64>(sk, o.sock_net)
        .and_then(|net| read::<u32>(net, o.net_inum))
        .unwrap_or(0)
}

/// Inode of the current task's network namespace.
#[inline(always)]
pub fn task_netns(o: &KernelOffsets) -> u32 {
    if o.valid & valid::TASK_NETNS == 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    read::<u64>(task, o.task_nsproxy)
        .and_then(|ns| read::<u64>(ns, o.nsproxy_net))
        .and_then(|net| read::<u32>(net, o.net_inum))
        .unwrap_or(0)
}

/// `sk->sk_protocol`, or 0 where this kernel keeps it in a bitfield.
#[inline(always)]
pub fn sock_protocol(sk: u64, o: &KernelOffsets) -> u16 {
    if o.valid & valid::PROTOCOL == 0 {
        return 0;
    }
    read::<u16>(sk, o.sock_protocol).unwrap_or(0)
}

/// `socket->sk` of a `struct socket *`.
#[inline(always)]
pub fn socket_sk(socket: u64, o: &KernelOffsets) -> u64 {
    if o.valid & valid::SOCKET_SK == 0 {
        return 0;
    }
    read::<u64>(socket, o.socket_sk).unwrap_or(0)
}

/// The `struct sock` behind file descriptor `fd` of the current task:
/// files->fdt->fd[fd]->private_data->sk. Only for an fd that a syscall
/// accepted as a socket (its private_data is then a `struct socket`).
#[inline(always)]
pub fn sock_of_fd(fd: u32, o: &KernelOffsets) -> u64 {
    if o.valid & valid::FD_TABLE == 0 || o.valid & valid::SOCKET_SK == 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    let Some(fdt) = read::<u64>(task, o.task_files).and_then(|f| read::<u64>(f, o.files_fdt))
    else {
        return 0;
    };
    let max: u32 = read(fdt, o.fdt_max_fds).unwrap_or(0);
    if fd >= max {
        return 0;
    }
    read::<u64>(fdt, o.fdt_fd)
        .and_then(|arr| read::<u64>(arr, fd.wrapping_mul(8)))
        .and_then(|file| read::<u64>(file, o.file_private))
        .map(|socket| socket_sk(socket, o))
        .unwrap_or(0)
}

/// The kernel-side filter: `--pid` on the owner, `--port` on either end,
/// `--netns` on the socket's namespace.
#[inline(always)]
pub fn wanted(tgid: u32, sport: u16, dport: u16, netns: u32) -> bool {
    let f = filter();
    if f.pid != 0 && f.pid != tgid {
        return false;
    }
    if f.netns != 0 && f.netns != netns {
        return false;
    }
    if f.ports_enabled != 0 {
        let hit = unsafe { PORT_FILTER.get(&sport).is_some() || PORT_FILTER.get(&dport).is_some() };
        if !hit {
            return false;
        }
    }
    true
}

#[inline(always)]
pub fn current_owner() -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    Owner {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        state: 0,
        side: 0,
        _pad: [0; 2],
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

#[inline(always)]
pub fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
pub fn count_lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        unsafe { *n += 1 };
    }
}

/// Reads a tracepoint field straight from the context. The verifier allows
/// aligned loads of the record; `ctx.read_at` instead calls
/// bpf_probe_read_kernel once per field, which cost about a third of the
/// state program's run time. Volatile, so LLVM neither merges two fields
/// into one (possibly misaligned) load nor splits one.
///
/// # Safety
/// `off` must be a field of the tracepoint's record, aligned to `T`'s size.
#[inline(always)]
pub unsafe fn tp_field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(off).cast::<T>()) }
}

/// Reserve, fill through `f`, submit; a full ring counts as lost.
#[inline(always)]
pub fn submit(f: impl FnOnce(&mut RawEvent)) {
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut entry) => {
            // Zero with word stores: writing `RawEvent::zeroed()` became a
            // call to a BPF memset subprogram.
            let words = entry.as_mut_ptr().cast::<u64>();
            for i in 0..core::mem::size_of::<RawEvent>() / 8 {
                unsafe { core::ptr::write_volatile(words.add(i), 0) };
            }
            // SAFETY: every byte is initialised (zero), a valid RawEvent.
            let ev = unsafe { &mut *entry.as_mut_ptr() };
            ev.version = portwatch_common::EVENT_VERSION;
            ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
            f(ev);
            entry.submit(wakeup_flags());
        }
        None => count_lost(),
    }
}

/// Where the sockaddr of a bind()/connect() lives.
#[derive(Clone, Copy)]
pub enum Space {
    User,
    Kernel,
}

#[repr(C)]
struct SockaddrHead {
    family: u16,
    port_be: u16,
    v4: [u8; 4],
}

/// Reads the family, port and address of a `struct sockaddr_in{,6}`. Returns
/// None for other families (AF_UNIX, ...), which portwatch does not trace.
#[inline(always)]
pub fn read_sockaddr(ptr: *const u8, space: Space) -> Option<PendingCall> {
    if ptr.is_null() {
        return None;
    }
    let head: SockaddrHead = unsafe {
        match space {
            Space::User => bpf_probe_read_user(ptr as *const SockaddrHead),
            Space::Kernel => bpf_probe_read_kernel(ptr as *const SockaddrHead),
        }
    }
    .ok()?;
    let mut call = PendingCall {
        family: head.family,
        port: u16::from_be(head.port_be),
        flags: 0,
        _pad: [0; 3],
        fd: 0,
        _pad2: 0,
        sk: 0,
        addr: [0; 16],
    };
    match head.family {
        AF_INET => {
            call.addr[..4].copy_from_slice(&head.v4);
        }
        AF_INET6 => {
            // sockaddr_in6: family, port, flowinfo (4 bytes), then the address.
            let a: [u8; 16] = unsafe {
                let p = ptr.add(8) as *const [u8; 16];
                match space {
                    Space::User => bpf_probe_read_user(p),
                    Space::Kernel => bpf_probe_read_kernel(p),
                }
            }
            .ok()?;
            call.addr = a;
        }
        _ => return None,
    }
    Some(call)
}

/// Emits a BIND or CONNECT event for the current task. `call.sk`, when
/// known, gives the socket's namespace and protocol; else the task's
/// namespace stands in (a socket lives in the namespace it was created in,
/// which is its creator's unless it moved since).
#[inline(always)]
pub fn emit_call(kind: u8, call: &PendingCall, ret: i32) {
    let owner = current_owner();
    let (sport, dport) = if kind == portwatch_common::kind::BIND {
        (call.port, 0)
    } else {
        (0, call.port)
    };
    let o = offsets();
    let netns = if call.sk != 0 {
        sock_netns(call.sk, &o)
    } else {
        task_netns(&o)
    };
    if !wanted(owner.tgid, sport, dport, netns) {
        return;
    }
    if aggregating() {
        count_event(&owner);
        count_slot(counts::CALLS);
        // Successful connects are counted, not sent; binds are rare.
        if kind == portwatch_common::kind::CONNECT && (ret == 0 || ret == -115) {
            count_connect(netns, &owner, call.family, call.addr, call.port, true);
            return;
        }
    }
    let protocol = if call.flags & portwatch_common::flags::TCP_SEEN != 0 {
        portwatch_common::IPPROTO_TCP
    } else if call.sk != 0 {
        sock_protocol(call.sk, &o)
    } else {
        0
    };
    submit(|ev| {
        ev.kind = kind;
        ev.flags = portwatch_common::flags::OWNER_CURRENT | call.flags;
        ev.family = call.family;
        ev.protocol = protocol;
        ev.sport = sport;
        ev.dport = dport;
        ev.ret = ret;
        ev.netns = netns;
        ev.skaddr = call.sk;
        if kind == portwatch_common::kind::BIND {
            ev.saddr = call.addr;
        } else {
            ev.daddr = call.addr;
        }
        ev.owner = owner;
    });
}
