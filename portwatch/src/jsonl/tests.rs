//! The hand-written line must be what serde_json makes of the derive, for
//! every value a field can take.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::model::{EventKind, Holder, PoolUse, SmolStr, SockId};

fn serde_line(ev: &Event) -> String {
    serde_json::to_string(ev).expect("json") + "\n"
}

fn ours(ev: &Event, cache: &mut TimeCache) -> String {
    let mut out = Vec::new();
    event(&mut out, ev, cache);
    String::from_utf8(out).expect("utf8")
}

/// xorshift64*: a fixed sequence of varied events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn some(&mut self) -> bool {
        !self.next().is_multiple_of(3)
    }
}

const TEXTS: &[&str] = &[
    "",
    "nginx",
    "python3",
    "a \"quoted\" name",
    "back\\slash",
    "tab\tnew\nline\r",
    "\u{1}\u{1f}\u{7f}",
    "x\x1b]0;owned\x07",
    "nginx-wörker ✓ 日本",
    "/usr/bin/java -Xmx2g -jar /opt/app/service.jar --port 8080 --name 'a long one that no inline string holds'",
    "evil\u{202e}txt",
];

const TIMES: &[i128] = &[
    0,
    1,
    999_999_999,
    1_000_000_000,
    1_795_471_262_123_456_789,
    1_795_471_262_999_999_999,
    1_795_471_263_000_000_000,
    -1,
    -1_000_000_001,
    -86_400_000_000_000,
    253_402_300_799_999_999_999,
    253_402_300_800_000_000_000,
    i128::MAX,
    i128::MIN,
];

fn addrs() -> Vec<IpAddr> {
    [
        "0.0.0.0",
        "127.0.0.1",
        "255.255.255.255",
        "10.1.22.203",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1:2:3:4",
        "2001:db8:85a3::8a2e:370:7334",
        "1:2:3:4:5:6:7:8",
        "::127.0.0.1",
    ]
    .iter()
    .map(|a| a.parse().expect("address"))
    .collect()
}

fn random_event(r: &mut Rng) -> Event {
    let addrs = addrs();
    // Every state, by the kernel's numbers.
    let states: Vec<TcpState> = (0..=255).filter_map(TcpState::from_kernel).collect();
    assert_eq!(states.len(), 12);
    let kinds = [
        EventKind::State,
        EventKind::Bind,
        EventKind::Connect,
        EventKind::Listen,
        EventKind::Timewait,
        EventKind::Lost,
    ];
    let text = |r: &mut Rng| r.some().then(|| SmolStr::new(r.pick(TEXTS)));
    let mut ev = Event::new(r.pick(TIMES), r.pick(&kinds));
    if r.some() {
        // Consecutive events within a second, as a trace has them.
        ev.time = 1_795_471_262_000_000_000 + (r.next() % 3_000_000_000) as i128;
    }
    ev.pid = r.some().then(|| r.next() as u32);
    ev.tid = r.some().then(|| r.pick(&[0, 1, u32::MAX]));
    ev.comm = text(r);
    ev.uid = r.some().then(|| r.next() as u32);
    ev.family = r.some().then(|| r.pick(&[Family::Ipv4, Family::Ipv6]));
    ev.protocol = r.some().then(|| r.pick(&[Protocol::Tcp, Protocol::Udp]));
    ev.saddr = r.some().then(|| r.pick(&addrs));
    ev.sport = r.some().then(|| r.next() as u16);
    ev.daddr = r.some().then(|| r.pick(&addrs));
    ev.dport = r.some().then(|| r.pick(&[0, 1, u16::MAX]));
    ev.old_state = r.some().then(|| r.pick(&states));
    ev.new_state = r.some().then(|| r.pick(&states));
    if r.some() {
        ev.set_ret(r.pick(&[0, -98, -99, -115, -4242, i32::MIN + 1]));
    }
    if r.next().is_multiple_of(5) {
        ev.holder = Some(Box::new(Holder {
            pid: r.some().then_some(42),
            comm: r.some().then(|| r.pick(TEXTS).to_owned()),
            state: r.some().then(|| r.pick(&states)),
            protocol: Some(Protocol::Tcp),
            saddr: r.pick(&addrs),
            sport: 8080,
            daddr: r.pick(&addrs),
            dport: 0,
        }));
    }
    ev.attribution = r.pick(&[
        Attribution::Current,
        Attribution::Remembered,
        Attribution::Unknown,
    ]);
    ev.cmdline = text(r);
    ev.cgroup = text(r);
    ev.cgroup_id = r.some().then(|| r.next());
    ev.unit = text(r);
    ev.container_runtime = text(r);
    ev.container_id = text(r);
    ev.pod_uid = text(r);
    ev.lost = r.some().then(|| r.pick(&[0, 1, u64::MAX]));
    ev.lost_reason = r.some().then(|| {
        r.pick(&[
            LostReason::RingBuffer,
            LostReason::Recursion,
            LostReason::Inferred,
            LostReason::Overflow,
        ])
    });
    let any = r.next();
    ev.sock = r
        .some()
        .then(|| SockId(r.pick(&[0, 0xfeed, u64::MAX, any])));
    ev.netns = r.some().then(|| r.next());
    ev.container_pid = r.some().then(|| r.next() as u32);
    ev.side = r.some().then(|| r.pick(&[Side::Client, Side::Server]));
    if r.next().is_multiple_of(5) {
        ev.pool = Some(Box::new(PoolUse {
            in_use: 3,
            by_state: [("TIME_WAIT".to_owned(), 3)].into_iter().collect(),
            capacity: 10,
            range_low: 40000,
            range_high: 40009,
        }));
    }
    ev.lookup_error = text(r).map(String::from);
    ev.inferred = text(r).map(String::from);
    ev
}

#[test]
fn every_line_is_what_serde_json_writes() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cache = TimeCache::default();
    for i in 0..20_000 {
        let ev = random_event(&mut r);
        assert_eq!(ours(&ev, &mut cache), serde_line(&ev), "event {i}: {ev:?}");
    }
}

#[test]
fn the_word_at_a_time_check_finds_every_byte_that_needs_escaping() {
    let plain = |b: u8| !(b < 0x20 || b == b'"' || b == b'\\');
    for len in 0..20 {
        for at in 0..len {
            for b in 0..=255u8 {
                let mut s = vec![b'a'; len];
                s[at] = b;
                // Bytes that borrow or carry next to it must not hide it.
                if at > 0 {
                    s[at - 1] = 0xff;
                }
                assert_eq!(needs_escape(&s), !plain(b), "{s:?}");
            }
        }
    }
}

#[test]
fn bare_and_lost_events_match_too() {
    let mut cache = TimeCache::default();
    for ev in [
        Event::new(0, EventKind::State),
        Event::lost(5, 7, LostReason::Recursion),
    ] {
        assert_eq!(ours(&ev, &mut cache), serde_line(&ev));
    }
}

#[test]
fn times_in_the_same_second_reuse_the_date_and_others_do_not() {
    let mut cache = TimeCache::default();
    let base = 1_795_471_262_000_000_000;
    for t in [base, base + 5, base + 999_999_999, base - 1, base + NS] {
        let ev = Event::new(t, EventKind::State);
        assert_eq!(ours(&ev, &mut cache), serde_line(&ev), "{t}");
    }
    let v4 = Event {
        saddr: Some(IpAddr::V4(Ipv4Addr::new(1, 20, 255, 0))),
        daddr: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ..Event::new(base, EventKind::State)
    };
    assert_eq!(ours(&v4, &mut cache), serde_line(&v4));
}
