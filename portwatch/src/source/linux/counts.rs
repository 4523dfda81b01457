//! Aggregate mode's kernel counts, for `top` and `serve`: the per-CPU
//! `COUNTS` slots and `DEST_COUNTS` table (portwatch-ebpf/src/common.rs),
//! summed over CPUs at each read, and [`Tally`], which turns those totals
//! into what changed since the last read ([`Counted`]).

use std::collections::HashMap;

use portwatch_common::{counts, DestKey};

use super::decode;
use crate::model::{Counted, CountedConnects, SmolStr, TcpState};
use crate::workload::Workload;

/// The kernel's totals since attach, as one read found them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// `COUNTS` summed over CPUs, by [`counts`] slot.
    pub slots: Vec<u64>,
    pub dests: Vec<(DestKey, DestTotal)>,
}

/// A `DEST_COUNTS` entry summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestTotal {
    pub connects: u64,
    pub established: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// Totals into deltas. The kernel's counters only grow, except that an
/// entry userspace deleted (its process exited) starts again from zero.
#[derive(Debug, Default)]
pub struct Tally {
    /// No connect hook is attached: a connect is the state tracepoint's
    /// SYN_SENT -> ESTABLISHED (TCP only; failures cross the ring), as the
    /// full trace infers it.
    from_state: bool,
    slots: Vec<u64>,
    dests: HashMap<DestKey, u64>,
}

impl Tally {
    pub fn new(connects_from_state: bool) -> Self {
        Tally {
            from_state: connects_from_state,
            ..Default::default()
        }
    }

    fn connects(&self, t: &DestTotal) -> u64 {
        if self.from_state {
            t.established
        } else {
            t.connects
        }
    }

    /// What the kernel counted since the last call. `cgroup_path` names a
    /// cgroup id, for the workload of a process that may be gone.
    pub fn delta(
        &mut self,
        totals: &Totals,
        mut cgroup_path: impl FnMut(u64) -> Option<SmolStr>,
    ) -> Counted {
        let slot = |v: &[u64], i: u32| v.get(i as usize).copied().unwrap_or(0);
        let grown = |i: u32| slot(&totals.slots, i).saturating_sub(slot(&self.slots, i));
        let mut out = Counted::default();
        for i in 0..counts::TRANSITIONS {
            let n = grown(i);
            if n == 0 {
                continue;
            }
            out.events += n;
            let old = TcpState::from_kernel((i >> 4) as u8);
            let new = TcpState::from_kernel((i & 15) as u8);
            if let (Some(old), Some(new)) = (old, new) {
                out.transitions.push((old, new, n));
            }
        }
        out.events += grown(counts::CALLS);
        out.uncounted = grown(counts::DEST_FULL);
        out.gaps = grown(counts::GAPS);
        for (key, t) in &totals.dests {
            let now = self.connects(t);
            let before = self.dests.insert(*key, now).unwrap_or(0);
            // Fewer than last time: deleted and made again since.
            let n = if now >= before { now - before } else { now };
            let Some(daddr) = decode::addr(key.family, &key.daddr) else {
                continue;
            };
            if n == 0 {
                continue;
            }
            let cgroup = (t.cgroup_id != 0)
                .then(|| cgroup_path(t.cgroup_id))
                .flatten();
            out.connects.push(CountedConnects {
                netns: (key.netns != 0).then_some(u64::from(key.netns)),
                pid: (key.tgid != 0).then_some(key.tgid),
                comm: (key.tgid != 0).then(|| decode::comm(&t.comm)),
                workload: Workload::of(cgroup.as_deref()),
                daddr,
                dport: key.dport,
                n,
            });
        }
        self.slots.clone_from(&totals.slots);
        out
    }

    /// The entries of `totals` whose process has exited (`alive` says
    /// not), already counted by [`Tally::delta`]: the caller deletes them
    /// from the kernel's table so that it does not fill up. A dead process
    /// counts no more; a new one that gets its pid starts a new entry.
    pub fn gone(&mut self, totals: &Totals, alive: impl Fn(u32) -> bool) -> Vec<DestKey> {
        let gone: Vec<DestKey> = totals
            .dests
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| self.dests.contains_key(k) && !alive(k.tgid))
            .collect();
        for k in &gone {
            self.dests.remove(k);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portwatch_common::{tcp_state as st, AF_INET};

    fn key(tgid: u32, port: u16) -> DestKey {
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        DestKey {
            netns: 4026531840,
            tgid,
            family: AF_INET,
            dport: port,
            _pad: 0,
            daddr,
        }
    }

    fn total(connects: u64, established: u64) -> DestTotal {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"client");
        DestTotal {
            connects,
            established,
            cgroup_id: 7,
            comm,
        }
    }

    fn slots(pairs: &[(u8, u8, u64)], calls: u64, full: u64, gaps: u64) -> Vec<u64> {
        let mut v = vec![0; counts::SLOTS as usize];
        for (o, n, c) in pairs {
            v[usize::from(*o) << 4 | usize::from(*n)] = *c;
        }
        v[counts::CALLS as usize] = calls;
        v[counts::DEST_FULL as usize] = full;
        v[counts::GAPS as usize] = gaps;
        v
    }

    #[test]
    fn each_read_gives_what_grew_since_the_last() {
        let mut tally = Tally::new(false);
        let first = Totals {
            slots: slots(&[(st::CLOSE, st::SYN_SENT, 3)], 3, 0, 1),
            dests: vec![(key(10, 80), total(3, 3))],
        };
        let c = tally.delta(&first, |_| Some("/system.slice/web.service".into()));
        assert_eq!(c.events, 6);
        assert_eq!(c.transitions, vec![(TcpState::Close, TcpState::SynSent, 3)]);
        assert_eq!(c.connects.len(), 1);
        let cc = &c.connects[0];
        assert_eq!(
            (cc.pid, cc.comm.as_deref(), cc.dport, cc.n, cc.netns),
            (Some(10), Some("client"), 80, 3, Some(4026531840))
        );
        assert_eq!(cc.daddr.to_string(), "127.0.0.1");
        assert_eq!(cc.workload.unit.as_deref(), Some("web.service"));

        let second = Totals {
            slots: slots(
                &[
                    (st::CLOSE, st::SYN_SENT, 5),
                    (st::SYN_SENT, st::ESTABLISHED, 4),
                ],
                5,
                2,
                4,
            ),
            dests: vec![(key(10, 80), total(5, 5)), (key(11, 443), total(0, 0))],
        };
        let c = tally.delta(&second, |_| None);
        assert_eq!(c.events, 2 + 4 + 2);
        assert_eq!((c.uncounted, c.gaps), (2, 3));
        assert_eq!(
            c.connects.iter().map(|c| (c.pid, c.n)).collect::<Vec<_>>(),
            vec![(Some(10), 2)]
        );
        // Nothing new: nothing counted.
        assert_eq!(tally.delta(&second, |_| None), Counted::default());
    }

    #[test]
    fn without_a_connect_hook_connects_are_the_established_transitions() {
        let mut tally = Tally::new(true);
        let t = Totals {
            slots: slots(&[], 0, 0, 0),
            dests: vec![(key(10, 80), total(0, 4))],
        };
        assert_eq!(tally.delta(&t, |_| None).connects[0].n, 4);
    }

    #[test]
    fn an_exited_process_entry_is_deleted_once_counted_and_may_start_again() {
        let mut tally = Tally::new(false);
        let t = Totals {
            slots: slots(&[], 0, 0, 0),
            dests: vec![(key(10, 80), total(5, 5)), (key(12, 80), total(1, 1))],
        };
        tally.delta(&t, |_| None);
        assert_eq!(tally.gone(&t, |pid| pid == 12), vec![key(10, 80)]);
        // The pid again, a new process: its entry starts from 1.
        let t = Totals {
            slots: slots(&[], 0, 0, 0),
            dests: vec![(key(10, 80), total(1, 1)), (key(12, 80), total(1, 1))],
        };
        let c = tally.delta(&t, |_| None);
        assert_eq!(
            c.connects.iter().map(|c| (c.pid, c.n)).collect::<Vec<_>>(),
            vec![(Some(10), 1)]
        );
    }
}
