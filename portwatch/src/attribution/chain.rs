//! Each socket's chain of states. Every transition the tracepoint reports
//! starts in the state the previous one ended in; when it does not, events
//! went missing that no kernel counter saw (a tracepoint program skipped for
//! recursion on kernels before about 6.7, say). The chain also tells a
//! socket from another that reused its memory, whose remembered owner would
//! otherwise be read back as the new socket's.

use lru::LruCache;

use crate::model::{SockId, TcpState};

/// Sockets followed at once; closed ones are forgotten at their CLOSE.
const MAX_SOCKETS: usize = super::TABLE_CAP;

/// Transitions the state tracepoint reports, other than the ones into CLOSE
/// (any state may go there) and births. TIME_WAIT never appears: the kernel
/// swaps in a separate timewait socket.
const EDGES: &[(TcpState, TcpState)] = {
    use TcpState::*;
    &[
        (SynSent, Established),
        (SynSent, SynRecv),
        (SynRecv, Established),
        (SynRecv, FinWait1),
        (Established, FinWait1),
        (Established, CloseWait),
        (FinWait1, FinWait2),
        (FinWait1, Closing),
        (CloseWait, LastAck),
    ]
};

/// The first state of a socket's life, per kind of birth: connect()
/// (CLOSE -> SYN_SENT), listen() (CLOSE -> LISTEN), an accepted child
/// (LISTEN -> SYN_RECV, reported on the child).
const BIRTHS: [TcpState; 3] = [TcpState::SynSent, TcpState::Listen, TcpState::SynRecv];

/// Transitions that start a socket's life: the state before them is not the
/// socket's own past.
pub fn is_birth(old: TcpState, new: TcpState) -> bool {
    matches!(
        (old, new),
        (TcpState::Close, TcpState::SynSent)
            | (TcpState::Close, TcpState::Listen)
            | (TcpState::Listen, TcpState::SynRecv)
    )
}

/// How many transitions lie between `from` and `to` without passing
/// through CLOSE; None when `to` cannot follow `from` in one life.
/// Breadth-first on the stack: it runs for most transitions.
pub fn distance(from: TcpState, to: TcpState) -> Option<u64> {
    const STATES: usize = TcpState::NewSynRecv as usize + 1;
    let mut seen = [false; STATES];
    seen[from as usize] = true;
    let (mut frontier, mut len) = ([from; STATES], 1);
    let mut steps = 0;
    while len > 0 {
        if frontier[..len].contains(&to) {
            return Some(steps);
        }
        steps += 1;
        let (mut next, mut n) = ([from; STATES], 0);
        for &s in &frontier[..len] {
            for &(a, b) in EDGES {
                if a == s && !seen[b as usize] {
                    seen[b as usize] = true;
                    next[n] = b;
                    n += 1;
                }
            }
        }
        (frontier, len) = (next, n);
    }
    None
}

/// What the chain says about a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First sight of this socket, or the transition follows the last one.
    Fits,
    /// The same socket, with `missing` transitions not seen in between.
    Gap { missing: u64 },
    /// Another socket at the same address: the previous one's end and this
    /// one's start went missing (`missing` transitions at least). Whatever
    /// was remembered about the previous one does not belong to this one.
    NewLife { missing: u64 },
}

impl Verdict {
    pub fn missing(self) -> u64 {
        match self {
            Verdict::Fits => 0,
            Verdict::Gap { missing } | Verdict::NewLife { missing } => missing,
        }
    }
}

/// The judgement for `old -> new` after a socket was last seen entering
/// `last` (None: never seen).
pub fn judge(last: Option<TcpState>, old: TcpState, new: TcpState) -> Verdict {
    let Some(last) = last else {
        return Verdict::Fits;
    };
    // The previous life's end (into CLOSE) if it was not seen.
    let end_missing = u64::from(last != TcpState::Close);
    if is_birth(old, new) {
        return match end_missing {
            0 => Verdict::Fits,
            n => Verdict::NewLife { missing: n },
        };
    }
    if last != TcpState::Close {
        if let Some(d) = distance(last, old) {
            return match d {
                0 => Verdict::Fits,
                d => Verdict::Gap { missing: d },
            };
        }
    }
    // `old` cannot follow: a new socket whose birth (and maybe more) went
    // missing too.
    let start_missing = BIRTHS
        .iter()
        .filter_map(|&b| distance(b, old))
        .min()
        .map_or(1, |d| 1 + d);
    Verdict::NewLife {
        missing: end_missing + start_missing,
    }
}

/// The last state of each socket this run is following, with what it
/// remembers about the socket's owner.
pub struct Chains<O> {
    socks: LruCache<SockId, (TcpState, O)>,
}

impl<O> Default for Chains<O> {
    fn default() -> Self {
        // Kept at MAX_SOCKETS by `set` rather than sized for it up front:
        // the table grows with the sockets actually followed, and a table
        // that fits its sockets keeps lookups in cache.
        Chains {
            socks: LruCache::unbounded(),
        }
    }
}

impl<O> Chains<O> {
    /// Judges `old -> new` for `sock`; returns the verdict and, when the
    /// socket's remembered owner still belongs to it, that owner.
    pub fn step(&mut self, sock: SockId, old: TcpState, new: TcpState) -> (Verdict, Option<&O>) {
        let last = self.socks.peek(&sock).map(|(s, _)| *s);
        let verdict = judge(last, old, new);
        if let Verdict::NewLife { .. } = verdict {
            self.socks.pop(&sock);
        }
        if matches!(verdict, Verdict::NewLife { .. }) || is_birth(old, new) {
            return (verdict, None);
        }
        match self.socks.get_mut(&sock) {
            Some(entry) => {
                entry.0 = new;
                (verdict, Some(&entry.1))
            }
            None => (verdict, None),
        }
    }

    /// Records `sock` as having entered `state`, owned by `owner`; the
    /// socket used least recently is forgotten to make room.
    pub fn set(&mut self, sock: SockId, state: TcpState, owner: O) {
        if self.socks.len() >= MAX_SOCKETS && !self.socks.contains(&sock) {
            self.socks.pop_lru();
        }
        self.socks.put(sock, (state, owner));
    }

    /// What is remembered about `sock`, without moving its chain on.
    pub fn peek(&self, sock: SockId) -> Option<&O> {
        self.socks.peek(&sock).map(|(_, o)| o)
    }

    /// A socket that closed: its address may be reused by another.
    pub fn close(&mut self, sock: SockId) {
        if let Some(entry) = self.socks.get_mut(&sock) {
            entry.0 = TcpState::Close;
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    #[test]
    fn distances_follow_the_tcp_state_machine() {
        assert_eq!(distance(Established, Established), Some(0));
        assert_eq!(distance(FinWait1, FinWait2), Some(1));
        assert_eq!(distance(SynSent, FinWait2), Some(3));
        assert_eq!(distance(SynSent, LastAck), Some(3));
        assert_eq!(distance(FinWait1, SynRecv), None);
        assert_eq!(distance(LastAck, Established), None);
    }

    #[test]
    fn a_chain_that_follows_has_no_gap() {
        assert_eq!(judge(None, FinWait1, FinWait2), Verdict::Fits);
        assert_eq!(judge(Some(FinWait1), FinWait1, FinWait2), Verdict::Fits);
        assert_eq!(judge(Some(Close), Close, SynSent), Verdict::Fits);
    }

    #[test]
    fn missing_transitions_of_the_same_socket_are_counted() {
        // FIN_WAIT1 -> FIN_WAIT2 lost.
        assert_eq!(
            judge(Some(FinWait1), FinWait2, Close),
            Verdict::Gap { missing: 1 }
        );
        assert_eq!(
            judge(Some(SynSent), FinWait2, Close),
            Verdict::Gap { missing: 3 }
        );
    }

    #[test]
    fn reuse_of_a_socket_address_is_a_new_life() {
        // The client's FIN_WAIT1 -> FIN_WAIT2 -> CLOSE never came; an
        // accepted child took the memory.
        assert_eq!(
            judge(Some(FinWait1), Listen, SynRecv),
            Verdict::NewLife { missing: 1 }
        );
        // ... and its birth was lost as well.
        assert_eq!(
            judge(Some(FinWait1), SynRecv, Established),
            Verdict::NewLife { missing: 2 }
        );
        // After a CLOSE that was seen, a lost birth alone.
        assert_eq!(
            judge(Some(Close), SynRecv, Established),
            Verdict::NewLife { missing: 1 }
        );
    }

    #[test]
    fn the_socket_used_least_recently_makes_room() {
        let mut c: Chains<u32> = Chains::default();
        for i in 0..MAX_SOCKETS as u64 {
            c.set(SockId(i), Established, 0);
        }
        // Socket 0 moves on; socket 1 is now the one used least recently.
        assert!(c.step(SockId(0), Established, FinWait1).1.is_some());
        c.set(SockId(u64::MAX), SynSent, 1);
        assert_eq!(c.socks.len(), MAX_SOCKETS);
        assert!(c.peek(SockId(0)).is_some());
        assert!(c.peek(SockId(1)).is_none());
        assert!(c.peek(SockId(u64::MAX)).is_some());
    }

    #[test]
    fn chains_drop_owners_that_do_not_belong() {
        let mut c: Chains<u32> = Chains::default();
        let s = SockId(1);
        c.set(s, FinWait1, 7);
        // A gap in the same life keeps the owner.
        assert_eq!(
            c.step(s, FinWait2, Close),
            (Verdict::Gap { missing: 1 }, Some(&7))
        );
        c.close(s);
        c.set(s, FinWait1, 7);
        // A new life does not.
        let (v, owner) = c.step(s, SynRecv, Established);
        assert_eq!((v, owner), (Verdict::NewLife { missing: 2 }, None));
        assert!(c.is_empty());
    }
}
