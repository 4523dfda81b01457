//! bind() outcomes: the address asked for and the errno. A failed bind never
//! sets the socket's port, so the requested sockaddr is read at entry.
//!
//! Three variants, cheapest first; userspace loads the first the kernel takes:
//! - fexit on `inet_bind` / `inet6_bind` (net/ipv4/af_inet.c, net/ipv6/af_inet6.c);
//! - kprobe + kretprobe on the same functions;
//! - `syscalls:sys_enter_bind` / `sys_exit_bind` (every syscall then pays the
//!   tracing slow path: see doctor).

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe, tracepoint},
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use portwatch_common::kind;

use crate::common::{current_tid, emit_call, read_sockaddr, tp_field, Space, PENDING_BIND};

#[inline(always)]
fn fexit_bind(ctx: &FExitContext) {
    // int inet_bind(struct socket *sock, struct sockaddr *uaddr, int addr_len):
    // the return value follows the three arguments.
    let uaddr: *const u8 = ctx.arg(1);
    let ret: i32 = ctx.arg(3);
    if let Some(call) = read_sockaddr(uaddr, Space::Kernel) {
        emit_call(kind::BIND, &call, ret, 0);
    }
}

#[fexit(function = "inet_bind")]
pub fn fexit_inet_bind(ctx: FExitContext) -> u32 {
    fexit_bind(&ctx);
    0
}

#[fexit(function = "inet6_bind")]
pub fn fexit_inet6_bind(ctx: FExitContext) -> u32 {
    fexit_bind(&ctx);
    0
}

/// Entry of `inet_bind` / `inet6_bind` (one program, attached to both).
#[kprobe]
pub fn kprobe_inet_bind(ctx: ProbeContext) -> u32 {
    if let Some(uaddr) = ctx.arg::<*const u8>(1) {
        if let Some(call) = read_sockaddr(uaddr, Space::Kernel) {
            let _ = PENDING_BIND.insert(&current_tid(), &call, 0);
        }
    }
    0
}

#[kretprobe]
pub fn kretprobe_inet_bind(ctx: RetProbeContext) -> u32 {
    finish(ctx.ret::<i32>());
    0
}

/// `syscalls:sys_enter_bind`: fd @16, umyaddr @24, addrlen @32.
#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    // SAFETY: a u64 at 24 in the syscall tracepoint's record.
    let uaddr: u64 = unsafe { tp_field(&ctx, 24) };
    if let Some(call) = read_sockaddr(uaddr as *const u8, Space::User) {
        let _ = PENDING_BIND.insert(&current_tid(), &call, 0);
    }
    0
}

/// `syscalls:sys_exit_bind`: ret (long) @16.
#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    // SAFETY: ret, a long at 16 in the syscall tracepoint's record.
    let ret: i64 = unsafe { tp_field(&ctx, 16) };
    finish(ret as i32);
    0
}

#[inline(always)]
fn finish(ret: i32) {
    let tid = current_tid();
    if let Some(call) = unsafe { PENDING_BIND.get(&tid) } {
        let call = *call;
        let _ = PENDING_BIND.remove(&tid);
        emit_call(kind::BIND, &call, ret, 0);
    }
}
