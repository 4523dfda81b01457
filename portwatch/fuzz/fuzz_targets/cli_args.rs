//! `cargo +nightly fuzz run cli_args`: whatever a user types, parsing the
//! command line (clap and portwatch's own value parsers: sizes, durations,
//! ports, times, boots) ends in a command or an error, never a panic.
//! Arguments are the input split at zero bytes, non-UTF-8 included.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;

use libfuzzer_sys::fuzz_target;
use portwatch::cli::Cli;

fuzz_target!(|data: &[u8]| {
    let args = std::iter::once(OsString::from("portwatch"))
        .chain(data.split(|b| *b == 0).map(|a| OsString::from_vec(a.to_vec())));
    if let Err(e) = Cli::try_parse_checked_from(args) {
        // Rendering the message must not panic either.
        let _ = e.render().to_string();
    }
    // The parsers behind the flags, straight: `history --since`, `reserve`.
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = portwatch::timefmt::parse_when(s, portwatch::timefmt::now_ns());
        let _ = portwatch::sysctl::parse_user_ports(s);
    }
});
