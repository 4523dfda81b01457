//! Outcomes that hooks without a return value leave to be inferred, each
//! marked as such in the event (`inferred`):
//! - bind() through cgroup hooks: an attempt, then a confirmation from the
//!   same thread when it succeeded. No confirmation means it failed; the
//!   errno is EADDRINUSE when a conflicting socket holds the port, else
//!   unknown.
//! - connect() from the state tracepoint alone: SYN_SENT -> ESTABLISHED is
//!   a successful connect, SYN_SENT -> CLOSE with no local port the
//!   ephemeral range running out (EADDRNOTAVAIL).

use std::collections::HashMap;

use super::{Attributor, ProcessLookup, SocketProbe};
use crate::errno;
use crate::model::{Event, EventKind, Hints, Protocol, TcpState};

/// How long an attempt waits for its confirmation before it counts as
/// failed: the confirmation comes from the same system call, microseconds
/// later, unless the thread was preempted in between. The ring buffer keeps
/// events in the order they were stamped, so once an event stamped this
/// much later has arrived, a confirmation would have come before it.
const CONFIRM_WAIT_NS: i128 = 1_000_000;
/// Without later events, the wall-clock time to wait on a poll.
const CONFIRM_POLL_NS: i128 = 200_000_000;
const MAX_PENDING: usize = 4096;

const NO_CONFIRMATION: &str = "no post_bind followed the bind, so it failed";

/// bind() attempts waiting for their confirmation, by thread.
#[derive(Default)]
pub struct PendingBinds {
    by_tid: HashMap<u32, Event>,
}

impl PendingBinds {
    pub fn is_empty(&self) -> bool {
        self.by_tid.is_empty()
    }

    /// The time of the oldest attempt waiting: output after it is held back
    /// until it is resolved, to stay in order.
    pub fn oldest(&self) -> Option<i128> {
        self.by_tid.values().map(|ev| ev.time).min()
    }
}

impl<S: SocketProbe, P: ProcessLookup> Attributor<S, P> {
    /// Pairs cgroup bind attempts with their confirmations. Returns true
    /// when `ev` was consumed (held, or emitted as its attempt's outcome).
    pub(super) fn pair_bind(&mut self, ev: &Event, hints: Hints, out: &mut Vec<Event>) -> bool {
        // Attempts stamped well before this event never got a confirmation:
        // resolve them before this event changes what they are judged by
        // (a listener closing, say).
        if !self.pending_binds.is_empty() && !hints.bind_confirmed {
            self.expire_binds_before(ev.time - CONFIRM_WAIT_NS, out);
        }
        // A listener closing within that wait (its process killed right
        // after the failed bind): judge the attempts on its port by what
        // held the port when they were made, before the close is learned.
        if !self.pending_binds.is_empty()
            && ev.old_state == Some(TcpState::Listen)
            && ev.new_state == Some(TcpState::Close)
        {
            self.note_holders_before_close(ev);
        }
        let tid = ev.tid.unwrap_or(0);
        // Anything else from a thread with an attempt outstanding: the
        // attempt's system call has returned without a confirmation.
        // Only what ran in that thread's own context says so.
        if !hints.bind_confirmed && ev.attribution == crate::model::Attribution::Current {
            if let Some(failed) = self.pending_binds.by_tid.remove(&tid) {
                self.bind_failed(failed, out);
            }
        }
        if hints.bind_attempt {
            if self.pending_binds.by_tid.len() >= MAX_PENDING {
                let stale: Vec<u32> = self.pending_binds.by_tid.keys().copied().collect();
                for t in stale {
                    if let Some(failed) = self.pending_binds.by_tid.remove(&t) {
                        self.bind_failed(failed, out);
                    }
                }
            }
            let mut held = ev.clone();
            held.inferred = Some("bind attempt through a cgroup hook".into());
            self.pending_binds.by_tid.insert(tid, held);
            return true;
        }
        if hints.bind_confirmed {
            let mut ok = self
                .pending_binds
                .by_tid
                .remove(&tid)
                .unwrap_or_else(|| ev.clone());
            ok.set_ret(0);
            // A port the kernel picked (bind to port 0) is the one bound.
            if ok.sport == Some(0) {
                ok.sport = ev.sport;
            }
            ok.inferred = None;
            out.push(ok);
            return true;
        }
        false
    }

    /// Attempts whose confirmation has not come in time; all of them when
    /// the run ends.
    pub(super) fn expire_binds(&mut self, now: i128, all: bool, out: &mut Vec<Event>) {
        let cutoff = if all {
            i128::MAX
        } else {
            now - CONFIRM_POLL_NS
        };
        self.expire_binds_before(cutoff, out);
    }

    /// Resolves as failed the attempts stamped before `cutoff`, oldest first.
    fn expire_binds_before(&mut self, cutoff: i128, out: &mut Vec<Event>) {
        let mut due: Vec<(i128, u32)> = self
            .pending_binds
            .by_tid
            .iter()
            .filter(|(_, ev)| ev.time < cutoff)
            .map(|(tid, ev)| (ev.time, *tid))
            .collect();
        due.sort_unstable();
        let due: Vec<u32> = due.into_iter().map(|(_, tid)| tid).collect();
        for tid in due {
            if let Some(failed) = self.pending_binds.by_tid.remove(&tid) {
                self.bind_failed(failed, out);
            }
        }
    }

    /// Stores, in each attempt on `close`'s port made before it, the
    /// holder the port has until `close` is learned.
    fn note_holders_before_close(&mut self, close: &Event) {
        let tids: Vec<u32> = self
            .pending_binds
            .by_tid
            .iter()
            .filter(|(_, p)| {
                p.holder.is_none()
                    && p.sport == close.sport
                    && p.netns == close.netns
                    && p.time <= close.time
            })
            .map(|(tid, _)| *tid)
            .collect();
        for tid in tids {
            let Some(attempt) = self.pending_binds.by_tid.get(&tid).cloned() else {
                continue;
            };
            if let Ok(Some(h)) = self.holder(&attempt) {
                if let Some(p) = self.pending_binds.by_tid.get_mut(&tid) {
                    p.holder = Some(Box::new(h));
                }
            }
        }
    }

    fn bind_failed(&mut self, mut ev: Event, out: &mut Vec<Event>) {
        ev.set_ret(-errno::EADDRINUSE);
        // The holder noted before its listener closed, else the one now.
        let found = match ev.holder.take() {
            Some(h) => Ok(Some(*h)),
            None => self.holder(&ev),
        };
        match found {
            Ok(Some(h)) => {
                ev.holder = Some(Box::new(h));
                ev.inferred = Some(format!(
                    "{NO_CONFIRMATION}; EADDRINUSE because a conflicting socket holds the port"
                ));
            }
            other => {
                ev.ret = None;
                ev.errno = None;
                if let Err(why) = other {
                    ev.lookup_error = Some(why);
                }
                ev.inferred = Some(format!(
                    "{NO_CONFIRMATION}; errno unknown (no conflicting socket holds the port)"
                ));
            }
        }
        out.push(ev);
    }

    /// A connect() outcome read from a client socket's transition.
    pub(super) fn infer_connect(&mut self, ev: &Event, out: &mut Vec<Event>) {
        if ev.old_state != Some(TcpState::SynSent) {
            return;
        }
        let ret = match ev.new_state {
            Some(TcpState::Established) => 0,
            Some(TcpState::Close) if ev.sport == Some(0) => -errno::EADDRNOTAVAIL,
            _ => return,
        };
        let mut c = Event::new(ev.time, EventKind::Connect);
        c.pid = ev.pid;
        c.tid = ev.tid;
        c.comm.clone_from(&ev.comm);
        c.uid = ev.uid;
        c.family = ev.family;
        c.protocol = Some(Protocol::Tcp);
        c.daddr = ev.daddr;
        c.dport = ev.dport;
        c.attribution = ev.attribution;
        c.cmdline.clone_from(&ev.cmdline);
        c.cgroup.clone_from(&ev.cgroup);
        c.cgroup_id = ev.cgroup_id;
        c.netns = ev.netns;
        c.container_pid = ev.container_pid;
        c.sock = ev.sock;
        c.side = ev.side;
        c.boot_ns = ev.boot_ns;
        c.set_ret(ret);
        c.inferred = Some(if ret == 0 {
            "from the state tracepoint: SYN_SENT -> ESTABLISHED".into()
        } else {
            "from the state tracepoint: SYN_SENT -> CLOSE before a local port was assigned".into()
        });
        if ret != 0 {
            self.add_pool(&mut c);
        }
        out.push(c);
    }
}
