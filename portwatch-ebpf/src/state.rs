//! Tracepoint `sock:inet_sock_set_state`: every TCP state transition.
//!
//! Field offsets from /sys/kernel/tracing/events/sock/inet_sock_set_state/format
//! (a stable tracepoint ABI since 4.16).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use portwatch_common::{flags, kind, tcp_state as st, Owner, IPPROTO_TCP};

use crate::common::{current_owner, submit, tp_field, wanted, LISTENERS, OWNERS, PENDING_CONNECT};
use crate::timewait::TW_PENDING;

const SKADDR: usize = 8;
const OLDSTATE: usize = 16;
const NEWSTATE: usize = 20;
const SPORT: usize = 24;
const DPORT: usize = 26;
const FAMILY: usize = 28;
const PROTOCOL: usize = 30;
const SADDR: usize = 32;
const DADDR: usize = 36;
const SADDR_V6: usize = 40;
const DADDR_V6: usize = 56;

#[inline(always)]
fn v6(ctx: &TracePointContext, off: usize) -> [u8; 16] {
    // SAFETY: saddr_v6/daddr_v6 are 16 bytes at 8-aligned offsets.
    let (hi, lo): (u64, u64) = unsafe { (tp_field(ctx, off), tp_field(ctx, off + 8)) };
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&hi.to_ne_bytes());
    a[8..].copy_from_slice(&lo.to_ne_bytes());
    a
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

/// Transitions the kernel makes in the owning task's own context: connect(),
/// listen(), and close()/shutdown() (tcp_close_state). Every other transition
/// may run in softirq, where the current task is unrelated.
#[inline(always)]
fn in_process_context(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (st::CLOSE, st::SYN_SENT)
            | (st::CLOSE, st::LISTEN)
            | (st::ESTABLISHED, st::FIN_WAIT1)
            | (st::CLOSE_WAIT, st::LAST_ACK)
    )
}

/// Word by word: a derived `==` on the comm array may become a memcmp call,
/// which BPF has not.
#[inline(always)]
fn same_owner(a: &Owner, b: &Owner) -> bool {
    const WORDS: usize = core::mem::size_of::<Owner>() / 8;
    // SAFETY: Owner is repr(C), 8-byte aligned, a multiple of 8 bytes, and
    // every bit pattern is a valid u64.
    let (a, b) = unsafe {
        (
            &*(a as *const Owner as *const [u64; WORDS]),
            &*(b as *const Owner as *const [u64; WORDS]),
        )
    };
    let mut same = true;
    for i in 0..WORDS {
        same &= a[i] == b[i];
    }
    same
}

#[inline(always)]
fn listener_key(family: u16, port: u16) -> u32 {
    ((family as u32) << 16) | port as u32
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets and sizes are the tracepoint's format (see above).
    let protocol: u16 = unsafe { tp_field(ctx, PROTOCOL) };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let skaddr: u64 = unsafe { tp_field(ctx, SKADDR) };
    let old = unsafe { tp_field::<i32>(ctx, OLDSTATE) } as u8;
    let new = unsafe { tp_field::<i32>(ctx, NEWSTATE) } as u8;
    let sport: u16 = unsafe { tp_field(ctx, SPORT) };
    let dport: u16 = unsafe { tp_field(ctx, DPORT) };
    let family: u16 = unsafe { tp_field(ctx, FAMILY) };

    let mut ev_flags = 0u8;
    let owner: Owner = if in_process_context(old, new) {
        let owner = current_owner();
        // close() usually runs in the thread that connected or accepted:
        // rewriting an identical entry would only cost an LRU update.
        let known = unsafe { OWNERS.get(&skaddr) }.is_some_and(|o| same_owner(o, &owner));
        if !known {
            let _ = OWNERS.insert(&skaddr, &owner, 0);
        }
        if new == st::LISTEN {
            let _ = LISTENERS.insert(&listener_key(family, sport), &owner, 0);
        }
        if new == st::SYN_SENT {
            // Tells the syscall-tracepoint connect hook that this call is TCP.
            if let Some(call) = PENDING_CONNECT.get_ptr_mut(&owner.tid) {
                unsafe { (*call).flags |= flags::TCP_SEEN };
            }
        }
        ev_flags |= flags::OWNER_CURRENT;
        owner
    } else if let Some(o) = unsafe { OWNERS.get(&skaddr) } {
        ev_flags |= flags::OWNER_REMEMBERED;
        *o
    } else if old == st::LISTEN && new == st::SYN_RECV {
        // A new child socket, cloned from its listener in softirq.
        match unsafe { LISTENERS.get(&listener_key(family, sport)) } {
            Some(o) => {
                let o = *o;
                let _ = OWNERS.insert(&skaddr, &o, 0);
                ev_flags |= flags::OWNER_REMEMBERED;
                o
            }
            None => Owner::zeroed(),
        }
    } else {
        Owner::zeroed()
    };

    if (old == st::FIN_WAIT2 || old == st::CLOSING) && new == st::CLOSE {
        if unsafe { TW_PENDING.get(&skaddr) }.is_some() {
            ev_flags |= flags::TIMEWAIT_CONFIRMED;
            let _ = TW_PENDING.remove(&skaddr);
        }
    }

    if wanted(owner.tgid, sport, dport) {
        submit(|ev| {
            ev.kind = kind::STATE;
            ev.flags = ev_flags;
            ev.family = family;
            ev.protocol = protocol;
            ev.old_state = old;
            ev.new_state = new;
            ev.sport = sport;
            ev.dport = dport;
            ev.skaddr = skaddr;
            // Addresses are in network order: copy their bytes as they lie
            // (native-endian words keep the byte order).
            if family == portwatch_common::AF_INET {
                let s4: u32 = unsafe { tp_field(ctx, SADDR) };
                let d4: u32 = unsafe { tp_field(ctx, DADDR) };
                ev.saddr[..4].copy_from_slice(&s4.to_ne_bytes());
                ev.daddr[..4].copy_from_slice(&d4.to_ne_bytes());
            } else {
                ev.saddr = v6(ctx, SADDR_V6);
                ev.daddr = v6(ctx, DADDR_V6);
            }
            ev.owner = owner;
        });
    }

    if new == st::CLOSE {
        let _ = OWNERS.remove(&skaddr);
        if old == st::LISTEN {
            let _ = LISTENERS.remove(&listener_key(family, sport));
        }
    }
    Ok(())
}
