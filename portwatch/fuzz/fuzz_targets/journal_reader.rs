//! `cargo +nightly fuzz run journal_reader`: the journal reader must never
//! panic, and whatever it accepts must survive re-encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portwatch::journal::{encode_frame, read_segment_bytes, segment_header, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    // An odd first byte means "frames after a valid header", so the fuzzer
    // spends its time on framing and resync rather than on finding the magic.
    let bytes = match data.split_first() {
        Some((flag, rest)) if flag & 1 == 1 => {
            let mut b = segment_header().to_vec();
            b.extend_from_slice(rest);
            b
        }
        _ => data.to_vec(),
    };
    let (records, damage) = read_segment_bytes(&bytes);
    for (offset, _) in &damage {
        assert!(*offset <= bytes.len() as u64);
    }
    if records.is_empty() {
        return;
    }
    let mut again = segment_header().to_vec();
    for rec in &records {
        encode_frame(rec, &mut again).expect("a record the reader accepted must encode");
    }
    assert!(again.len() > HEADER_LEN);
    let (reread, damage) = read_segment_bytes(&again);
    assert!(
        damage.is_empty(),
        "re-encoded records read back damaged: {damage:?}"
    );
    assert_eq!(reread, records);
});
