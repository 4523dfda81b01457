//! Turns the kernel's [`RawEvent`] bytes into model events.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portwatch_common::{
    flags, kind, RawEvent, AF_INET, AF_INET6, EVENT_VERSION, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::model::{
    Attribution, Event, EventKind, Family, Hints, Protocol, SmolStr, SockId, TcpState,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes, expected {expected}", expected = std::mem::size_of::<RawEvent>())]
    Size(usize),
    #[error("event version {0}, this portwatch reads version {EVENT_VERSION}: the eBPF object and the binary do not match; rebuild with `cargo xtask build`")]
    Version(u16),
    #[error("unknown event kind {0}")]
    Kind(u8),
}

/// Converts CLOCK_BOOTTIME (what `bpf_ktime_get_boot_ns` reads) to wall
/// time. The offset between the two moves when the wall clock is stepped
/// (NTP at boot, an admin's `date -s`), so a long-running reader calls
/// [`Clock::refresh`] now and then; events stamped before the sample that
/// saw a step keep the offset they happened under.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - boottime, in ns.
    offset: i128,
    /// The boot time of the sample that set `offset`, and the offset before it.
    since: u64,
    prev: i128,
}

/// Test hook: `FILE:STEP_S` makes this process's wall clock read STEP_S
/// seconds later once FILE exists, as an NTP step would, so that tests can
/// step a clock without touching the machine's.
pub const TEST_STEP_ENV: &str = "PORTWATCH_TEST_CLOCK_STEP";

fn read_clock(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on Linux >= 2.6.39.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// (realtime, boottime) now, with the test step applied.
fn sample() -> (i128, u64) {
    use std::sync::OnceLock;
    static STEP: OnceLock<Option<(std::path::PathBuf, i128)>> = OnceLock::new();
    let boot = read_clock(libc::CLOCK_BOOTTIME);
    let mut real = read_clock(libc::CLOCK_REALTIME);
    let step = STEP.get_or_init(|| {
        let v = std::env::var(TEST_STEP_ENV).ok()?;
        let (file, secs) = v.rsplit_once(':')?;
        let secs: i128 = secs.parse().ok()?;
        Some((file.into(), secs * 1_000_000_000))
    });
    if let Some((file, by)) = step {
        if file.exists() {
            real += by;
        }
    }
    (real, u64::try_from(boot).unwrap_or(0))
}

impl Clock {
    pub fn new() -> Self {
        let (real, boot) = sample();
        let offset = real - i128::from(boot);
        Clock {
            offset,
            since: 0,
            prev: offset,
        }
    }

    pub fn with_offset(offset: i128) -> Self {
        Clock {
            offset,
            since: 0,
            prev: offset,
        }
    }

    /// Samples the offset again; a change of more than a millisecond (a
    /// step, not drift correction) starts a new period.
    pub fn refresh(&mut self) {
        let (real, boot) = sample();
        self.set(real - i128::from(boot), boot);
    }

    fn set(&mut self, offset: i128, at_boot_ns: u64) {
        if (offset - self.offset).abs() > 1_000_000 {
            self.prev = self.offset;
            self.since = at_boot_ns;
        }
        self.offset = offset;
    }

    pub fn wall(&self, boot_ns: u64) -> i128 {
        let offset = if boot_ns < self.since {
            self.prev
        } else {
            self.offset
        };
        boot_ns as i128 + offset
    }

    /// The inverse of [`Clock::wall`] under the current offset.
    pub fn boot_ns(&self, wall: i128) -> u64 {
        u64::try_from(wall - self.offset).unwrap_or(0)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Turns raw events into model events: wall time from the kernel's boot
/// clock, and socket ids that do not reveal kernel addresses.
pub struct Decoder {
    pub clock: Clock,
    /// Random keys, new each run: ids tie one run's events together only.
    ids: std::collections::hash_map::RandomState,
}

impl Decoder {
    pub fn new(clock: Clock) -> Self {
        Decoder {
            clock,
            ids: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn sock_id(&self, skaddr: u64) -> SockId {
        use std::hash::BuildHasher as _;
        SockId(self.ids.hash_one(skaddr))
    }

    pub fn decode(&self, raw: &RawEvent) -> Result<(Event, Hints), DecodeError> {
        let (mut ev, hints) = decode(raw, &self.clock)?;
        if raw.skaddr != 0 {
            ev.sock = Some(self.sock_id(raw.skaddr));
        }
        Ok((ev, hints))
    }
}

pub fn parse(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    if bytes.len() != std::mem::size_of::<RawEvent>() {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: length checked; RawEvent is plain old data, read unaligned.
    let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if raw.version != EVENT_VERSION {
        return Err(DecodeError::Version(raw.version));
    }
    Ok(raw)
}

pub(crate) fn addr(family: u16, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

/// A command name from the kernel's 16 bytes: inline, never allocated
/// unless lossy decoding makes it longer than 23 bytes.
pub fn comm(bytes: &[u8; 16]) -> SmolStr {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    SmolStr::new(String::from_utf8_lossy(&bytes[..end]))
}

/// Decodes everything but the socket id (see [`Decoder`]).
pub fn decode(raw: &RawEvent, clock: &Clock) -> Result<(Event, Hints), DecodeError> {
    let event = match raw.kind {
        kind::STATE => EventKind::State,
        kind::BIND => EventKind::Bind,
        kind::CONNECT => EventKind::Connect,
        k => return Err(DecodeError::Kind(k)),
    };
    let mut ev = Event::new(clock.wall(raw.ts_ns), event);
    ev.boot_ns = raw.ts_ns;
    ev.netns = (raw.netns != 0).then_some(u64::from(raw.netns));
    ev.family = match raw.family {
        AF_INET => Some(Family::Ipv4),
        AF_INET6 => Some(Family::Ipv6),
        _ => None,
    };
    ev.protocol = match raw.protocol {
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        _ => None,
    };
    let o = &raw.owner;
    if o.tgid != 0 {
        ev.pid = Some(o.tgid);
        ev.tid = Some(o.tid);
        ev.uid = Some(o.uid);
        ev.comm = Some(comm(&o.comm));
        ev.cgroup_id = (o.cgroup_id != 0).then_some(o.cgroup_id);
    }
    ev.attribution = if raw.flags & flags::OWNER_CURRENT != 0 {
        Attribution::Current
    } else if raw.flags & flags::OWNER_REMEMBERED != 0 {
        Attribution::Remembered
    } else {
        Attribution::Unknown
    };
    match event {
        EventKind::State => {
            ev.saddr = addr(raw.family, &raw.saddr);
            ev.daddr = addr(raw.family, &raw.daddr);
            ev.sport = Some(raw.sport);
            ev.dport = Some(raw.dport);
            ev.old_state = TcpState::from_kernel(raw.old_state);
            ev.new_state = TcpState::from_kernel(raw.new_state);
            if ev.old_state == Some(TcpState::Close) && ev.new_state == Some(TcpState::Listen) {
                ev.event = EventKind::Listen;
            }
        }
        EventKind::Bind => {
            ev.saddr = addr(raw.family, &raw.saddr);
            ev.sport = Some(raw.sport);
            ev.set_ret(raw.ret);
        }
        _ => {
            ev.daddr = addr(raw.family, &raw.daddr);
            ev.dport = Some(raw.dport);
            ev.set_ret(raw.ret);
        }
    }
    ev.side = match raw.side as u8 {
        portwatch_common::side::CLIENT => Some(crate::model::Side::Client),
        portwatch_common::side::SERVER => Some(crate::model::Side::Server),
        _ => None,
    };
    let hints = Hints {
        timewait_confirmed: raw.flags & flags::TIMEWAIT_CONFIRMED != 0,
        stale_owner: raw.flags & flags::STALE_OWNER != 0,
        ambiguous_listener: raw.flags & flags::AMBIGUOUS_LISTENER != 0,
        replayed: false,
        bind_attempt: raw.kind == kind::BIND && raw.flags & flags::BIND_ATTEMPT != 0,
        bind_confirmed: raw.kind == kind::BIND && raw.flags & flags::BIND_CONFIRMED != 0,
    };
    Ok((ev, hints))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portwatch_common::{tcp_state, Owner};

    fn raw_state(old: u8, new: u8) -> RawEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        RawEvent {
            kind: kind::STATE,
            flags: flags::OWNER_REMEMBERED | flags::TIMEWAIT_CONFIRMED,
            family: AF_INET,
            protocol: IPPROTO_TCP,
            old_state: old,
            new_state: new,
            sport: 40001,
            dport: 1433,
            ts_ns: 5_000_000_000,
            skaddr: 0xffff_8880_1234_5678,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            owner: Owner {
                tgid: 4242,
                tid: 4243,
                uid: 1000,
                state: 0,
                side: 0,
                _pad: [0; 2],
                cgroup_id: 7,
                comm,
            },
            ..RawEvent::zeroed()
        }
    }

    fn bytes(raw: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is repr(C) plain old data without implicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (raw as *const RawEvent).cast::<u8>(),
                std::mem::size_of::<RawEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_state_transition_with_its_remembered_owner() {
        let raw = raw_state(tcp_state::FIN_WAIT2, tcp_state::CLOSE);
        let parsed = parse(&bytes(&raw)).expect("parse");
        let (ev, hints) = decode(&parsed, &Clock::with_offset(1_000)).expect("decode");
        assert_eq!(ev.time, 5_000_001_000);
        assert_eq!(ev.event, EventKind::State);
        assert_eq!(ev.pid, Some(4242));
        assert_eq!(ev.tid, Some(4243));
        assert_eq!(ev.comm.as_deref(), Some("curl"));
        assert_eq!(ev.cgroup_id, Some(7));
        assert_eq!(ev.saddr, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ev.daddr, Some("10.1.2.3".parse().unwrap()));
        assert_eq!((ev.sport, ev.dport), (Some(40001), Some(1433)));
        assert_eq!(ev.old_state, Some(TcpState::FinWait2));
        assert_eq!(ev.new_state, Some(TcpState::Close));
        assert_eq!(ev.attribution, Attribution::Remembered);
        assert_eq!(ev.sock, None, "ids come from a Decoder");
        assert_eq!(ev.netns, None);
        assert_eq!(ev.boot_ns, 5_000_000_000);
        assert!(hints.timewait_confirmed);
    }

    #[test]
    fn socket_ids_are_stable_within_a_run_and_hide_the_address() {
        let mut raw = raw_state(tcp_state::FIN_WAIT2, tcp_state::CLOSE);
        raw.netns = 4026531840;
        let d = Decoder::new(Clock::with_offset(0));
        let (a, _) = d.decode(&raw).expect("decode");
        let (b, _) = d.decode(&raw).expect("decode");
        assert_eq!(a.netns, Some(4026531840));
        assert_eq!(a.sock, b.sock);
        let id = a.sock.expect("id");
        assert_ne!(id.0, raw.skaddr);
        let json = serde_json::to_string(&a).expect("json");
        assert!(!json.contains("ffff8880"), "{json}");
        // Another run, another key.
        let (c, _) = Decoder::new(Clock::with_offset(0))
            .decode(&raw)
            .expect("decode");
        assert_ne!(c.sock, a.sock);
        raw.skaddr += 8;
        assert_ne!(d.decode(&raw).expect("decode").0.sock, a.sock);
    }

    #[test]
    fn a_clock_step_moves_later_events_only() {
        let mut c = Clock::with_offset(1_000);
        c.set(1_000 + 3_600_000_000_000, 50_000);
        assert_eq!(c.wall(40_000), 41_000, "before the sample: old offset");
        assert_eq!(c.wall(60_000), 60_000 + 1_000 + 3_600_000_000_000);
        // Drift corrections do not start a new period.
        let mut d = Clock::with_offset(0);
        d.set(500, 10);
        assert_eq!(d.wall(5), 505);
    }

    #[test]
    fn close_to_listen_is_a_listen_event() {
        let raw = raw_state(tcp_state::CLOSE, tcp_state::LISTEN);
        let (ev, _) = decode(&raw, &Clock::with_offset(0)).expect("decode");
        assert_eq!(ev.event, EventKind::Listen);
    }

    #[test]
    fn decodes_a_failed_ipv6_bind_with_errno_name() {
        let mut raw = raw_state(0, 0);
        raw.kind = kind::BIND;
        raw.family = AF_INET6;
        raw.protocol = 0;
        raw.flags = flags::OWNER_CURRENT;
        raw.ret = -98;
        raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        raw.sport = 1433;
        raw.dport = 0;
        let (ev, _) = decode(&raw, &Clock::with_offset(0)).expect("decode");
        assert_eq!(ev.event, EventKind::Bind);
        assert_eq!(ev.family, Some(Family::Ipv6));
        assert_eq!(ev.protocol, None);
        assert_eq!(ev.saddr, Some("::1".parse().unwrap()));
        assert_eq!(ev.sport, Some(1433));
        assert_eq!(ev.ret, Some(-98));
        assert_eq!(ev.errno.as_deref(), Some("EADDRINUSE"));
        assert_eq!(ev.attribution, Attribution::Current);
    }

    #[test]
    fn rejects_wrong_size_version_and_kind() {
        let raw = raw_state(1, 7);
        let mut b = bytes(&raw);
        assert_eq!(parse(&b[..100]), Err(DecodeError::Size(100)));
        b[0] = 99;
        assert_eq!(parse(&b), Err(DecodeError::Version(99)));
        let mut bad = raw;
        bad.kind = 77;
        assert_eq!(
            decode(&bad, &Clock::with_offset(0)).err(),
            Some(DecodeError::Kind(77))
        );
    }

    #[test]
    fn unknown_owner_has_no_pid_rather_than_a_bystander() {
        let mut raw = raw_state(tcp_state::SYN_SENT, tcp_state::ESTABLISHED);
        raw.flags = 0;
        raw.owner = Owner::zeroed();
        let (ev, _) = decode(&raw, &Clock::with_offset(0)).expect("decode");
        assert_eq!(ev.pid, None);
        assert_eq!(ev.comm, None);
        assert_eq!(ev.attribution, Attribution::Unknown);
    }
}
