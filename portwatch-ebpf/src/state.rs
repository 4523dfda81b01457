//! Tracepoint `sock:inet_sock_set_state`: every TCP state transition.
//!
//! Field offsets from /sys/kernel/tracing/events/sock/inet_sock_set_state/format
//! (a stable tracepoint ABI since 4.16).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use portwatch_common::{
    counts, flags, kind, side, tcp_state as st, ListenKey, Listener, Owner, IPPROTO_TCP,
};

use crate::common::{
    aggregating, count_connect, count_event, count_slot, count_transition, current_owner, offsets,
    sock_netns, submit, tp_field, wanted, LISTENERS, OWNERS, PENDING_CONNECT,
};
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
/// listen(), close()/shutdown() (tcp_close_state), and a listener's close
/// (inet_csk_listen_stop, from close() or the last holder's exit). Every
/// other transition may run in softirq, where the current task is unrelated.
#[inline(always)]
fn in_process_context(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (st::CLOSE, st::SYN_SENT)
            | (st::CLOSE, st::LISTEN)
            | (st::LISTEN, st::CLOSE)
            | (st::ESTABLISHED, st::FIN_WAIT1)
            | (st::CLOSE_WAIT, st::LAST_ACK)
    )
}

/// Transitions that still cross the ring in aggregate mode: listens, a
/// listener's close, closes that may be TIME_WAIT (userspace confirms and
/// charges them), and connects that found no free port. The rest are
/// counted per process in the kernel.
#[inline(always)]
fn rare(old: u8, new: u8, sport: u16) -> bool {
    matches!(
        (old, new),
        (st::CLOSE, st::LISTEN)
            | (st::LISTEN, st::CLOSE)
            | (st::FIN_WAIT2, st::CLOSE)
            | (st::CLOSING, st::CLOSE)
    ) || (old == st::SYN_SENT && new == st::CLOSE && sport == 0)
}

/// Word by word: a derived `==` on the comm array may become a memcmp call,
/// which BPF has not. The `state` and `side` bytes (the high half of word 1,
/// after `uid`, on this little-endian target) are not part of who owns it.
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
        let mask = if i == 1 { 0xffff_ffff } else { u64::MAX };
        same &= (a[i] ^ b[i]) & mask == 0;
    }
    same
}

/// Per state, the states a socket can be in later without passing through
/// CLOSE (include/net/tcp_states.h numbering): a remembered owner whose last
/// state cannot lead to an event's old state belongs to another socket that
/// reused the memory. Lost transitions of the same socket still fit.
const REACH: [u16; 16] = {
    const fn bits(states: &[u8]) -> u16 {
        let mut m = 0u16;
        let mut i = 0;
        while i < states.len() {
            m |= 1 << states[i];
            i += 1;
        }
        m
    }
    let mut r = [0u16; 16];
    r[st::ESTABLISHED as usize] = bits(&[
        st::ESTABLISHED,
        st::FIN_WAIT1,
        st::FIN_WAIT2,
        st::CLOSING,
        st::CLOSE_WAIT,
        st::LAST_ACK,
    ]);
    r[st::SYN_SENT as usize] = r[st::ESTABLISHED as usize] | bits(&[st::SYN_SENT, st::SYN_RECV]);
    r[st::SYN_RECV as usize] = r[st::ESTABLISHED as usize] | bits(&[st::SYN_RECV]);
    r[st::FIN_WAIT1 as usize] = bits(&[st::FIN_WAIT1, st::FIN_WAIT2, st::CLOSING]);
    r[st::FIN_WAIT2 as usize] = bits(&[st::FIN_WAIT2]);
    r[st::CLOSING as usize] = bits(&[st::CLOSING]);
    r[st::CLOSE_WAIT as usize] = bits(&[st::CLOSE_WAIT, st::LAST_ACK]);
    r[st::LAST_ACK as usize] = bits(&[st::LAST_ACK]);
    r[st::LISTEN as usize] = bits(&[st::LISTEN]);
    r[st::CLOSE as usize] = bits(&[st::CLOSE]);
    r
};

#[inline(always)]
fn can_follow(last: u8, old: u8) -> bool {
    REACH[(last & 15) as usize] & (1 << (old & 15)) != 0
}

#[inline(always)]
fn listen_key(netns: u32, family: u16, port: u16, addr: [u8; 16]) -> ListenKey {
    ListenKey {
        netns,
        family,
        port,
        addr,
    }
}

/// The listener an accepted child came from: the child's own local address,
/// else the wildcard. None when no listener is known or several processes
/// share it.
#[inline(always)]
fn listener_of(key: &mut ListenKey, ev_flags: &mut u8) -> Option<Owner> {
    let found = match unsafe { LISTENERS.get(&*key) } {
        Some(l) => Some(*l),
        None => {
            key.addr = [0; 16];
            unsafe { LISTENERS.get(&*key) }.copied()
        }
    }?;
    if found.ambiguous != 0 {
        *ev_flags |= flags::AMBIGUOUS_LISTENER;
        return None;
    }
    Some(found.owner)
}

#[inline(always)]
fn addrs(ctx: &TracePointContext, family: u16) -> ([u8; 16], [u8; 16]) {
    // Addresses are in network order: copy their bytes as they lie
    // (native-endian words keep the byte order).
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    if family == portwatch_common::AF_INET {
        let s4: u32 = unsafe { tp_field(ctx, SADDR) };
        let d4: u32 = unsafe { tp_field(ctx, DADDR) };
        s[..4].copy_from_slice(&s4.to_ne_bytes());
        d[..4].copy_from_slice(&d4.to_ne_bytes());
    } else {
        s = v6(ctx, SADDR_V6);
        d = v6(ctx, DADDR_V6);
    }
    (s, d)
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
    let (saddr, daddr) = addrs(ctx, family);
    let netns = sock_netns(skaddr, &offsets());

    let mut ev_flags = 0u8;
    // The socket's chain of states broke (see `counts::GAPS`).
    let mut gap = false;
    let mut owner: Owner = if in_process_context(old, new) {
        let mut owner = current_owner();
        owner.state = new;
        // A connect() is a client's birth; for other process-context
        // transitions keep the side the socket was born with.
        owner.side = match (old, new) {
            (st::CLOSE, st::SYN_SENT) => side::CLIENT,
            (st::CLOSE, st::LISTEN) => side::SERVER,
            _ => unsafe { OWNERS.get(&skaddr) }.map_or(0, |o| o.side),
        };
        // close() usually runs in the thread that connected or accepted: an
        // identical entry only needs its state moved on.
        let prev = OWNERS.get_ptr_mut(&skaddr);
        if let Some(o) = prev {
            // A birth where a socket is still remembered: its CLOSE is missing.
            gap = old == st::CLOSE || unsafe { (*o).state } != old;
        }
        match prev {
            Some(o) if same_owner(unsafe { &*o }, &owner) => unsafe { (*o).state = new },
            _ => {
                let _ = OWNERS.insert(&skaddr, &owner, 0);
            }
        }
        if new == st::LISTEN {
            let key = listen_key(netns, family, sport, saddr);
            match LISTENERS.get_ptr_mut(&key) {
                Some(l) => unsafe {
                    if (*l).count == 0 {
                        (*l).owner = owner;
                        (*l).ambiguous = 0;
                    } else if (*l).owner.tgid != owner.tgid {
                        (*l).ambiguous = 1;
                    }
                    (*l).count += 1;
                },
                None => {
                    let l = Listener {
                        owner,
                        count: 1,
                        ambiguous: 0,
                    };
                    let _ = LISTENERS.insert(&key, &l, 0);
                }
            }
        }
        if new == st::SYN_SENT {
            // Tells the syscall-tracepoint connect hook that this call is
            // TCP, and which socket it is.
            if let Some(call) = PENDING_CONNECT.get_ptr_mut(&owner.tid) {
                unsafe {
                    (*call).flags |= flags::TCP_SEEN;
                    (*call).sk = skaddr;
                }
            }
        }
        ev_flags |= flags::OWNER_CURRENT;
        owner
    } else if old == st::LISTEN && new == st::SYN_RECV {
        // A new child socket, cloned from its listener in softirq: it takes
        // the listener's owner, whatever an older socket at this address left
        // (whose CLOSE is then missing).
        gap = unsafe { OWNERS.get(&skaddr) }.is_some();
        let mut key = listen_key(netns, family, sport, saddr);
        match listener_of(&mut key, &mut ev_flags) {
            Some(mut o) => {
                o.state = new;
                o.side = side::SERVER;
                let _ = OWNERS.insert(&skaddr, &o, 0);
                ev_flags |= flags::OWNER_REMEMBERED;
                o
            }
            None => {
                let _ = OWNERS.remove(&skaddr);
                let mut o = Owner::zeroed();
                o.side = side::SERVER;
                o
            }
        }
    } else {
        match OWNERS.get_ptr_mut(&skaddr) {
            Some(o) if can_follow(unsafe { (*o).state }, old) => {
                gap = unsafe { (*o).state } != old;
                unsafe { (*o).state = new };
                ev_flags |= flags::OWNER_REMEMBERED;
                unsafe { *o }
            }
            Some(_) => {
                let _ = OWNERS.remove(&skaddr);
                gap = true;
                ev_flags |= flags::STALE_OWNER;
                Owner::zeroed()
            }
            None => Owner::zeroed(),
        }
    };
    owner.state = 0;
    let sock_side = owner.side;
    owner.side = 0;

    if (old == st::FIN_WAIT2 || old == st::CLOSING) && new == st::CLOSE {
        if unsafe { TW_PENDING.get(&skaddr) }.is_some() {
            ev_flags |= flags::TIMEWAIT_CONFIRMED;
            let _ = TW_PENDING.remove(&skaddr);
        }
    }

    let mut send = wanted(owner.tgid, sport, dport, netns);
    if send && aggregating() {
        count_event(&owner);
        count_transition(old, new);
        if gap {
            count_slot(counts::GAPS);
        }
        // A client's connect succeeded (its owner remembered from connect()).
        if old == st::SYN_SENT && new == st::ESTABLISHED {
            count_connect(netns, &owner, family, daddr, dport, false);
        }
        send = rare(old, new, sport);
    }
    if send {
        submit(|ev| {
            ev.kind = kind::STATE;
            ev.flags = ev_flags;
            ev.side = u16::from(sock_side);
            ev.family = family;
            ev.protocol = protocol;
            ev.old_state = old;
            ev.new_state = new;
            ev.sport = sport;
            ev.dport = dport;
            ev.netns = netns;
            ev.skaddr = skaddr;
            ev.saddr = saddr;
            ev.daddr = daddr;
            ev.owner = owner;
        });
    }

    if new == st::CLOSE {
        let _ = OWNERS.remove(&skaddr);
        if old == st::LISTEN {
            let key = listen_key(netns, family, sport, saddr);
            if let Some(l) = LISTENERS.get_ptr_mut(&key) {
                if unsafe { (*l).count } <= 1 {
                    let _ = LISTENERS.remove(&key);
                } else {
                    unsafe { (*l).count -= 1 };
                }
            }
        }
    }
    Ok(())
}
