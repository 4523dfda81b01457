//! `cargo +nightly fuzz run etw_decode`: the ETW payload decoders must never
//! panic, whatever the bytes, and what they accept must go through the
//! connection table without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portwatch::source::windows::conn::ConnTable;
use portwatch::source::windows::{decode, PointerSize, Provider, RawEvent};

/// The events portwatch decodes, so the fuzzer spends its time on payloads.
const TCPIP: &[u16] = &[
    1017, 1033, 1034, 1038, 1039, 1040, 1043, 1050, 1051, 1052, 1053, 1054, 1110, 1122, 1300,
];
const KERNEL_NETWORK: &[u16] = &[12, 13, 15, 28, 29, 31];
const AFD: &[u16] = &[1030];

fuzz_target!(|data: &[u8]| {
    // Header: provider, event, version, pointer size; then events of the
    // form [len, payload...] fed in order through one connection table.
    let Some((&[p, e, v, ptr], mut rest)) = data.split_first_chunk::<4>().map(|(h, r)| (h, r))
    else {
        return;
    };
    let (provider, ids) = match p % 3 {
        0 => (Provider::Tcpip, TCPIP),
        1 => (Provider::KernelNetwork, KERNEL_NETWORK),
        _ => (Provider::WinsockAfd, AFD),
    };
    let pointer = if ptr & 1 == 0 {
        PointerSize::Eight
    } else {
        PointerSize::Four
    };
    let mut table = ConnTable::new();
    let mut out = Vec::new();
    let mut id = ids[usize::from(e) % ids.len()];
    let mut time = 0i128;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        let raw = RawEvent {
            provider,
            id,
            version: v % 5,
            pointer,
            time,
            header_pid: 42,
            data: payload,
        };
        if let Ok(d) = decode(&raw) {
            table.push(d, time, &mut out);
        }
        id = ids[(usize::from(id) + usize::from(len)) % ids.len()];
        time += 1_000_000;
    }
    table.release_expired(i128::MAX, &mut out);
    assert!(!table.has_pending());
});
