//! bind() through cgroup hooks, where neither fexit nor kprobes load:
//! `cgroup/bind4`/`bind6` run at the start of every bind() (io_uring's
//! included), `cgroup/post_bind4`/`post_bind6` after a successful one.
//! Unlike syscall tracepoints they cost nothing to other system calls. They
//! cannot see the errno: the attempt and the confirmation are both sent,
//! and userspace reads a missing confirmation as a failure (marked as
//! inferred).
//!
//! Attached to the cgroup v2 root with BPF_F_ALLOW_MULTI so that programs
//! other software attached keep running; every program returns 1 (allow):
//! 0 would make the call fail with EPERM for every process below.

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use portwatch_common::{flags, kind, AF_INET, AF_INET6};

use crate::common::{
    aggregating, count_event, count_slot, current_owner, offsets, submit, task_netns, wanted,
};

/// Reads a context field with one load at a constant offset: the verifier
/// refuses loads through a pointer derived from the context.
macro_rules! field {
    ($ctx:expr, $($f:tt)+) => {
        // SAFETY: a field of the context the kernel handed us.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx).$($f)+)) }
    };
}

// Each attach type may read only its own family's address fields (the
// verifier refuses user_ip6 in bind4, and so on), hence a function each.

#[cgroup_sock_addr(bind4)]
pub fn cg_bind4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let mut addr = [0u8; 16];
    let a: u32 = field!(sa, user_ip4);
    addr[..4].copy_from_slice(&a.to_ne_bytes());
    attempt(&ctx, AF_INET, addr);
    1
}

#[cgroup_sock_addr(bind6)]
pub fn cg_bind6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let w: [u32; 4] = [
        field!(sa, user_ip6[0]),
        field!(sa, user_ip6[1]),
        field!(sa, user_ip6[2]),
        field!(sa, user_ip6[3]),
    ];
    attempt(&ctx, AF_INET6, words(w));
    1
}

#[cgroup_sock(post_bind4)]
pub fn cg_post_bind4(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    let mut addr = [0u8; 16];
    let a: u32 = field!(sk, src_ip4);
    addr[..4].copy_from_slice(&a.to_ne_bytes());
    confirmed(&ctx, AF_INET, addr);
    1
}

#[cgroup_sock(post_bind6)]
pub fn cg_post_bind6(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    let w: [u32; 4] = [
        field!(sk, src_ip6[0]),
        field!(sk, src_ip6[1]),
        field!(sk, src_ip6[2]),
        field!(sk, src_ip6[3]),
    ];
    confirmed(&ctx, AF_INET6, words(w));
    1
}

/// Four address words (network order, as they lie) into 16 bytes.
#[inline(always)]
fn words(w: [u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    for (i, w) in w.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    addr
}

/// The port a bind() asks for (`user_port`: network order).
#[inline(always)]
fn attempt(ctx: &SockAddrContext, family: u16, addr: [u8; 16]) {
    let sa = ctx.sock_addr;
    let port = u16::from_be(field!(sa, user_port) as u16);
    let protocol = field!(sa, protocol) as u16;
    emit(family, protocol, port, addr, flags::BIND_ATTEMPT);
}

/// What a successful bind() bound (`src_port`: host order).
#[inline(always)]
fn confirmed(ctx: &SockContext, family: u16, addr: [u8; 16]) {
    let sk = ctx.sock;
    let port = field!(sk, src_port) as u16;
    let protocol = field!(sk, protocol) as u16;
    emit(family, protocol, port, addr, flags::BIND_CONFIRMED);
}

#[inline(always)]
fn emit(family: u16, protocol: u16, port: u16, addr: [u8; 16], flag: u8) {
    let owner = current_owner();
    // The binding task's namespace: the socket's, unless it moved since.
    let netns = task_netns(&offsets());
    if !wanted(owner.tgid, port, 0, netns) {
        return;
    }
    if aggregating() && flag == flags::BIND_ATTEMPT {
        count_event(&owner);
        count_slot(portwatch_common::counts::CALLS);
    }
    submit(|ev| {
        ev.kind = kind::BIND;
        ev.flags = flags::OWNER_CURRENT | flag;
        ev.family = family;
        ev.protocol = protocol;
        ev.sport = port;
        ev.netns = netns;
        ev.saddr = addr;
        ev.owner = owner;
    });
}
