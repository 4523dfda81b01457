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

use crate::common::{
    current_tid, emit_call, offsets, read_sockaddr, sock_of_fd, socket_sk, tp_field, Space,
    PENDING_BIND,
};

const EBADF: i32 = 9;
const ENOTSOCK: i32 = 88;

#[inline(always)]
fn fexit_bind(ctx: &FExitContext) {
    // int inet_bind(struct socket *sock, struct sockaddr *uaddr, int addr_len):
    // the return value follows the three arguments.
    let sock: u64 = ctx.arg(0);
    let uaddr: *const u8 = ctx.arg(1);
    let ret: i32 = ctx.arg(3);
    if let Some(mut call) = read_sockaddr(uaddr, Space::Kernel) {
        call.sk = socket_sk(sock, &offsets());
        emit_call(kind::BIND, &call, ret);
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
        if let Some(mut call) = read_sockaddr(uaddr, Space::Kernel) {
            call.sk = socket_sk(ctx.arg::<u64>(0).unwrap_or(0), &offsets());
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
    // SAFETY: u64s at 16 and 24 in the syscall tracepoint's record.
    let (fd, uaddr): (u64, u64) = unsafe { (tp_field(&ctx, 16), tp_field(&ctx, 24)) };
    if let Some(mut call) = read_sockaddr(uaddr as *const u8, Space::User) {
        call.fd = fd as u32;
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
        let mut call = *call;
        let _ = PENDING_BIND.remove(&tid);
        // From a syscall tracepoint: the socket behind the fd, once the
        // kernel has said the fd is one.
        if call.sk == 0 && ret != -ENOTSOCK && ret != -EBADF {
            call.sk = sock_of_fd(call.fd, &offsets());
        }
        emit_call(kind::BIND, &call, ret);
    }
}
