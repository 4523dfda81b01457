//! `tcp_time_wait(struct sock *sk, int state, int timeo)`: the kernel function
//! that swaps a closing socket for a timewait socket. Where fentry or kprobes
//! load, it marks the socket so that the FIN_WAIT2/CLOSING -> CLOSE transition
//! which follows (tcp_done, same call) is reported as a confirmed TIME_WAIT.
//! Where neither loads, userspace confirms against a sock_diag snapshot.

use aya_ebpf::{
    macros::{fentry, kprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, ProbeContext},
};
use portwatch_common::tcp_state;

#[map]
pub static TW_PENDING: LruHashMap<u64, u8> =
    LruHashMap::with_max_entries(16384, crate::common::BPF_F_NO_COMMON_LRU);

#[inline(always)]
fn mark(sk: u64, state: i32) {
    // tcp_time_wait is also called with TCP_FIN_WAIT2 for the timewait
    // sub-state of orphaned sockets; only real TIME_WAIT counts.
    if state == tcp_state::TIME_WAIT as i32 {
        let _ = TW_PENDING.insert(&sk, &1, 0);
    }
}

#[fentry(function = "tcp_time_wait")]
pub fn fentry_tcp_time_wait(ctx: FEntryContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let state: i32 = ctx.arg(1);
    mark(sk, state);
    0
}

#[kprobe]
pub fn kprobe_tcp_time_wait(ctx: ProbeContext) -> u32 {
    let _ = try_kprobe_tcp_time_wait(&ctx);
    0
}

fn try_kprobe_tcp_time_wait(ctx: &ProbeContext) -> Option<()> {
    let sk: u64 = ctx.arg(0)?;
    let state: i32 = ctx.arg(1)?;
    mark(sk, state);
    Some(())
}
