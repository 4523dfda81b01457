//! An [`Event`] as one line of JSON, byte for byte what `serde_json` makes
//! of its `Serialize` derive, written without serde's per-field work: the
//! keys are constants, numbers go through `itoa`, the time's date part is
//! formatted once per second, and strings that need no escaping are copied
//! as they are. `trace --json` writes every event this way (the derive is
//! still the schema; the tests hold the two together).
//!
//! What is rare (a holder, a pool, a string that needs escapes) goes
//! through `serde_json` itself.

use std::net::IpAddr;

use crate::model::{Attribution, Event, Family, LostReason, Protocol, Side, TcpState};

/// The date and time of day of one second, as [`crate::timefmt::format_ns`]
/// writes them, so that only the nanoseconds change between events.
#[derive(Default)]
pub struct TimeCache {
    /// The second, and its text; None when the second is out of range (the
    /// whole text is then a fixed fallback).
    second: Option<(i128, Option<Seconds>)>,
}

const NS: i128 = 1_000_000_000;

/// `2026-11-23T22:01:02`, on the stack (a year has at most five
/// characters with its sign).
#[derive(Default)]
struct Seconds {
    text: [u8; 24],
    len: usize,
}

impl std::fmt::Write for Seconds {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.text
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl TimeCache {
    fn write(&mut self, out: &mut Vec<u8>, ns: i128) {
        let second = ns.div_euclid(NS);
        let seconds = match (&self.second, second.checked_mul(NS)) {
            (Some((s, seconds)), _) if *s == second => seconds,
            // Far out of range: no date to share.
            (_, None) => &None,
            (_, Some(start)) => {
                let seconds = time::OffsetDateTime::from_unix_timestamp_nanos(start)
                    .ok()
                    .and_then(|t| {
                        let mut s = Seconds::default();
                        crate::timefmt::write_seconds(&mut s, t).ok()?;
                        Some(s)
                    });
                &self.second.insert((second, seconds)).1
            }
        };
        out.push(b'"');
        match seconds {
            Some(s) => {
                out.extend_from_slice(&s.text[..s.len]);
                out.push(b'.');
                let frac = ns.rem_euclid(NS) as u32;
                let mut digits = [b'0'; 9];
                let mut n = frac;
                for d in digits.iter_mut().rev() {
                    *d = b'0' + (n % 10) as u8;
                    n /= 10;
                }
                out.extend_from_slice(&digits);
                out.push(b'Z');
            }
            None => out.extend_from_slice(crate::timefmt::format_ns(ns).as_bytes()),
        }
        out.push(b'"');
    }
}

/// Writes `ev` and a newline to `out`.
pub fn event(out: &mut Vec<u8>, ev: &Event, time: &mut TimeCache) {
    out.extend_from_slice(b"{\"time\":");
    time.write(out, ev.time);
    out.extend_from_slice(b",\"event\":\"");
    out.extend_from_slice(ev.event.name().as_bytes());
    out.extend_from_slice(b"\",\"pid\":");
    num(out, ev.pid);
    out.extend_from_slice(b",\"tid\":");
    num(out, ev.tid);
    out.extend_from_slice(b",\"comm\":");
    string(out, ev.comm.as_deref());
    out.extend_from_slice(b",\"uid\":");
    num(out, ev.uid);
    out.extend_from_slice(b",\"family\":");
    name(out, ev.family.map(family));
    out.extend_from_slice(b",\"protocol\":");
    name(out, ev.protocol.map(Protocol::name));
    out.extend_from_slice(b",\"saddr\":");
    addr(out, ev.saddr);
    out.extend_from_slice(b",\"sport\":");
    num(out, ev.sport);
    out.extend_from_slice(b",\"daddr\":");
    addr(out, ev.daddr);
    out.extend_from_slice(b",\"dport\":");
    num(out, ev.dport);
    out.extend_from_slice(b",\"old_state\":");
    name(out, ev.old_state.map(TcpState::name));
    out.extend_from_slice(b",\"new_state\":");
    name(out, ev.new_state.map(TcpState::name));
    out.extend_from_slice(b",\"ret\":");
    num(out, ev.ret);
    out.extend_from_slice(b",\"errno\":");
    string(out, ev.errno.as_deref());
    out.extend_from_slice(b",\"holder\":");
    serde(out, &ev.holder);
    out.extend_from_slice(b",\"attribution\":");
    name(out, Some(attribution(ev.attribution)));
    out.extend_from_slice(b",\"cmdline\":");
    string(out, ev.cmdline.as_deref());
    out.extend_from_slice(b",\"cgroup\":");
    string(out, ev.cgroup.as_deref());
    out.extend_from_slice(b",\"cgroup_id\":");
    num(out, ev.cgroup_id);
    out.extend_from_slice(b",\"unit\":");
    string(out, ev.unit.as_deref());
    out.extend_from_slice(b",\"container_runtime\":");
    string(out, ev.container_runtime.as_deref());
    out.extend_from_slice(b",\"container_id\":");
    string(out, ev.container_id.as_deref());
    out.extend_from_slice(b",\"pod_uid\":");
    string(out, ev.pod_uid.as_deref());
    out.extend_from_slice(b",\"lost\":");
    num(out, ev.lost);
    out.extend_from_slice(b",\"lost_reason\":");
    name(out, ev.lost_reason.map(lost_reason));
    out.extend_from_slice(b",\"sock\":");
    match ev.sock {
        Some(id) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push(b'"');
            for shift in (0..16).rev() {
                out.push(HEX[(id.0 >> (shift * 4)) as usize & 0xf]);
            }
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"netns\":");
    num(out, ev.netns);
    out.extend_from_slice(b",\"container_pid\":");
    num(out, ev.container_pid);
    out.extend_from_slice(b",\"side\":");
    name(out, ev.side.map(side));
    out.extend_from_slice(b",\"pool\":");
    serde(out, &ev.pool);
    out.extend_from_slice(b",\"lookup_error\":");
    string(out, ev.lookup_error.as_deref());
    out.extend_from_slice(b",\"inferred\":");
    string(out, ev.inferred.as_deref());
    out.extend_from_slice(b"}\n");
}

fn num<N: itoa::Integer>(out: &mut Vec<u8>, n: Option<N>) {
    match n {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A name that needs no escaping (an enum's).
fn name(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Any text: copied when nothing in it needs escaping, else escaped by
/// serde_json.
fn string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) if !needs_escape(s.as_bytes()) => name(out, Some(s)),
        Some(s) => serde(out, &s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Whether JSON escapes any byte of `s`: a control character, `"` or `\`.
/// Eight bytes at a time (command lines are long), with the bit tricks
/// "has a byte less than n" and "has a zero byte".
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    let less_than = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0;
    let has = |x: u64, b: u8| less_than(x ^ (ONES * u64::from(b)), 1);
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(w);
        let x = u64::from_le_bytes(bytes);
        if less_than(x, 0x20) || has(x, b'"') || has(x, b'\\') {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn serde<T: serde::Serialize>(out: &mut Vec<u8>, v: &T) {
    // Writing to a Vec cannot fail, and these types always serialize.
    let _ = serde_json::to_writer(out, v);
}

fn addr(out: &mut Vec<u8>, a: Option<IpAddr>) {
    match a {
        Some(IpAddr::V4(a)) => {
            let mut buf = itoa::Buffer::new();
            out.push(b'"');
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(buf.format(octet).as_bytes());
            }
            out.push(b'"');
        }
        Some(IpAddr::V6(a)) => {
            use std::io::Write as _;
            out.push(b'"');
            let _ = write!(out, "{a}");
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn family(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    }
}

fn attribution(a: Attribution) -> &'static str {
    match a {
        Attribution::Current => "current",
        Attribution::Remembered => "remembered",
        Attribution::Unknown => "unknown",
    }
}

fn lost_reason(r: LostReason) -> &'static str {
    match r {
        LostReason::RingBuffer => "ring_buffer",
        LostReason::Recursion => "recursion",
        LostReason::Inferred => "inferred",
        LostReason::Overflow => "overflow",
    }
}

fn side(s: Side) -> &'static str {
    match s {
        Side::Client => "client",
        Side::Server => "server",
    }
}

#[cfg(test)]
mod tests;
