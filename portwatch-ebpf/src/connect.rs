//! connect() outcomes on TCP: the destination asked for and the errno
//! (EADDRNOTAVAIL when the ephemeral range is exhausted).
//!
//! Three variants, cheapest first; userspace loads the first the kernel takes:
//! - fexit on `__inet_stream_connect` (net/ipv4/af_inet.c), which returns what
//!   the syscall returns for TCP, EINPROGRESS and ECONNREFUSED included;
//! - kprobe + kretprobe on the same function;
//! - `syscalls:sys_enter_connect` / `sys_exit_connect`, where the state
//!   tracepoint's CLOSE -> SYN_SENT during the call marks the socket as TCP.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe, tracepoint},
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use portwatch_common::{flags, kind};

use crate::common::{
    current_tid, emit_call, offsets, read_sockaddr, sock_of_fd, socket_sk, tp_field, Space,
    PENDING_CONNECT,
};

/// int __inet_stream_connect(struct socket *sock, struct sockaddr *uaddr,
///                           int addr_len, int flags, int is_sendmsg)
#[fexit(function = "__inet_stream_connect")]
pub fn fexit_inet_stream_connect(ctx: FExitContext) -> u32 {
    let sock: u64 = ctx.arg(0);
    let uaddr: *const u8 = ctx.arg(1);
    let is_sendmsg: i32 = ctx.arg(4);
    let ret: i32 = ctx.arg(5);
    if is_sendmsg == 0 {
        if let Some(mut call) = read_sockaddr(uaddr, Space::Kernel) {
            call.flags |= flags::TCP_SEEN;
            call.sk = socket_sk(sock, &offsets());
            emit_call(kind::CONNECT, &call, ret);
        }
    }
    0
}

#[kprobe]
pub fn kprobe_inet_stream_connect(ctx: ProbeContext) -> u32 {
    let is_sendmsg = ctx.arg::<i32>(4).unwrap_or(0);
    if is_sendmsg == 0 {
        if let Some(uaddr) = ctx.arg::<*const u8>(1) {
            if let Some(mut call) = read_sockaddr(uaddr, Space::Kernel) {
                call.flags |= flags::TCP_SEEN;
                call.sk = socket_sk(ctx.arg::<u64>(0).unwrap_or(0), &offsets());
                let _ = PENDING_CONNECT.insert(&current_tid(), &call, 0);
            }
        }
    }
    0
}

#[kretprobe]
pub fn kretprobe_inet_stream_connect(ctx: RetProbeContext) -> u32 {
    finish(ctx.ret::<i32>());
    0
}

/// `syscalls:sys_enter_connect`: fd @16, uservaddr @24, addrlen @32.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    // SAFETY: u64s at 16 and 24 in the syscall tracepoint's record.
    let (fd, uaddr): (u64, u64) = unsafe { (tp_field(&ctx, 16), tp_field(&ctx, 24)) };
    if let Some(mut call) = read_sockaddr(uaddr as *const u8, Space::User) {
        call.fd = fd as u32;
        let _ = PENDING_CONNECT.insert(&current_tid(), &call, 0);
    }
    0
}

/// `syscalls:sys_exit_connect`: ret (long) @16.
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    // SAFETY: ret, a long at 16 in the syscall tracepoint's record.
    let ret: i64 = unsafe { tp_field(&ctx, 16) };
    finish(ret as i32);
    0
}

const EBADF: i32 = 9;
const ENOTSOCK: i32 = 88;
const EINPROGRESS: i32 = 115;

#[inline(always)]
fn finish(ret: i32) {
    let tid = current_tid();
    if let Some(call) = unsafe { PENDING_CONNECT.get(&tid) } {
        let call = *call;
        let _ = PENDING_CONNECT.remove(&tid);
        // The syscall tracepoints see every connect(), UDP's included, while
        // the function hooks see TCP's only. Report what both agree on: TCP
        // connects (the state tracepoint saw SYN_SENT during the call) and
        // failures, whose protocol stays unknown here.
        if call.flags & flags::TCP_SEEN == 0 && (ret == 0 || ret == -EINPROGRESS) {
            return;
        }
        // The state tracepoint left the socket in `sk` when it saw this call
        // go CLOSE -> SYN_SENT; a call that failed before that is looked up
        // through its fd, once the kernel has said the fd is a socket.
        let mut call = call;
        if call.sk == 0 && ret != -ENOTSOCK && ret != -EBADF {
            call.sk = sock_of_fd(call.fd, &offsets());
        }
        emit_call(kind::CONNECT, &call, ret);
    }
}
