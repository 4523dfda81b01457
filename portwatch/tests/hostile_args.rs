//! Every flag of every subcommand, fed bad values: too large, negative,
//! NaN, empty, non-UTF-8, too many. Each must exit 2 with a message that
//! says what is allowed, and nothing anyone can type may panic. The table
//! below must name every argument the CLI has, so a new flag is swept too.
//! No root needed: the values are refused before anything runs.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::process::Command;

use clap::CommandFactory as _;
use portwatch::cli::Cli;

/// Bytes that are not UTF-8.
const NOT_UTF8: &[u8] = b"caf\xe9\xff";

/// The command line before the flag under test: positionals a subcommand
/// requires, and a journal that does not exist (nothing is read or written).
fn base(sub: &str) -> Vec<&'static str> {
    match sub {
        "who" => vec!["who", "1433"],
        "reserve" => vec!["reserve", "1433", "--dry-run"],
        "install-service" => vec!["install-service", "--dry-run"],
        "explain" => vec!["explain", "--no-checks", "EADDRINUSE"],
        "trace" => vec!["trace"],
        // Were a bad value accepted, the recorder could not create this.
        "record" => vec!["record", "--journal=/proc/portwatch-sweep"],
        "history" => vec!["history"],
        "doctor" => vec!["doctor"],
        "completions" => vec!["completions"],
        "manpages" => vec!["manpages"],
        // Not a terminal and no --once: were a bad value accepted, top
        // would refuse to draw (exit 1), not run.
        "top" => vec!["top"],
        // An address nobody can bind: an accepted bad value fails to serve.
        "serve" => vec!["serve", "--listen=192.0.2.1:9"],
        other => panic!("no base command line for {other}"),
    }
}

/// (subcommand, argument id, values that must be refused with exit 2, a
/// word the refusal must contain to say what is allowed; `|` separates
/// alternatives). `NOT_UTF8` is
/// added to every value a String or number parser takes.
#[rustfmt::skip]
const REFUSED: &[(&str, &str, &[&str], &str)] = &[
    ("trace", "ports", &["0", "65536", "-1", "NaN", "", "1e3", "80,443", "99999999999999999999"], "1 to 65535"),
    ("trace", "pid", &["0", "-1", "4294967296", "NaN", "", "1.5"], "1 to 4294967295"),
    ("trace", "comm", &[""], "command name"),
    ("trace", "netns", &["", "   "], "namespace inode"),
    ("trace", "duration", &["0", "-1", "NaN", "inf", "-inf", "1e20", "", "abc", "1e400"], "seconds"),
    ("trace", "color", &["purple", ""], "possible values"),
    ("trace", "ring_bytes", &["0", "4095", "5000", "4294967296", "1073741824", "", "-4096"], "power of two"),
    ("trace", "stall_reader_ms", &["-1", "600001", "1e3", ""], "0..=600000"),
    ("who", "port", &["0", "65536", "-1", "NaN", ""], "1 to 65535"),
    ("who", "remote", &["", "nonsense", "1.2.3.4:99999", "[::1"], "ADDR:PORT"),
    ("who", "to", &["", "x:y", "10.0.0.1:65536"], "ADDR:PORT"),
    ("who", "states", &["BOGUS", ""], "LISTEN"),
    ("who", "netns", &["", "   "], "namespace inode"),
    ("doctor", "netns", &["", "   "], "namespace inode"),
    ("completions", "shell", &["tcsh", ""], "possible values"),
    ("record", "max_size", &["0", "1K", "-1", "1e20", "99999999999999999999G", "18446744073709551615G", "", "M"], "64M|give at most"),
    ("record", "fsync", &["sometimes", ""], "possible values"),
    ("record", "duration", &["0", "-5", "NaN", "1e20", ""], "seconds"),
    ("history", "ports", &["0", "65536", "-1", "NaN", ""], "1 to 65535"),
    ("history", "pid", &["0", "-1", "4294967296", ""], "1 to 4294967295"),
    ("history", "comm", &[""], "command name"),
    ("history", "boot", &["1", "+1", "", "../x", "a b", "\u{1b}[2J", "-"], "--list-boots"),
    ("history", "since", &["yesterday", "5w", "99999999999999999999d", "400000000d", "", "-3d", "9999999999999999999999999d", "99999999999999999999999999999999999999d", "99999999999999999999999999999999999999999d"], "2h|use s, m, h or d|give at most"),
    ("history", "until", &["yesterday", "400000000d", ""], "2h|give at most"),
    ("explain", "port", &["0", "65536", "-1", "NaN", ""], "1 to 65535"),
    ("reserve", "ports", &["0", "65536", "40010-40000", "abc", "", "1-2-3", "-", "1,,2"], "65535|PORT or LOW-HIGH|lower port first|stray comma"),
    ("doctor", "color", &["purple"], "possible values"),
    ("top", "interval", &["0", "-1", "NaN", "inf", "1e20", "1e-10", "0.01", "3601", ""], "seconds"),
    ("top", "netns", &["", "   "], "namespace inode"),
    ("serve", "listen", &["", "9464", "localhost:9464", "1.2.3.4:65536", "[::1"], "ADDR:PORT"),
    ("serve", "top_k", &["0", "1001", "-1", "NaN", ""], "1..=1000"),
    ("serve", "interval", &["0", "-1", "NaN", "1e-10", "3601", ""], "seconds"),
    ("serve", "netns", &["", "   "], "namespace inode"),
];

/// Path arguments: an empty path is refused; any other bytes are a path.
#[rustfmt::skip]
const PATHS: &[(&str, &str)] = &[
    ("trace", "replay"), ("trace", "stall_reader_until"), ("who", "journal"),
    ("record", "journal"), ("history", "journal"), ("install-service", "journal"),
    ("install-service", "binary"), ("install-service", "unit_dir"),
    ("reserve", "persist_file"), ("explain", "journal"), ("manpages", "dir"),
];

/// Arguments that take no value, or any text at all (explain's message).
#[rustfmt::skip]
const NO_BAD_VALUE: &[(&str, &str)] = &[
    ("trace", "json"), ("trace", "errors"), ("trace", "summary_only"),
    ("who", "json"), ("who", "count"), ("history", "first"), ("history", "list_boots"),
    ("history", "json"), ("history", "utc"), ("install-service", "dry_run"),
    ("install-service", "now"), ("doctor", "json"), ("doctor", "facts"),
    ("reserve", "persist"), ("reserve", "dry_run"), ("explain", "json"),
    ("explain", "no_checks"), ("explain", "text"), ("top", "once"), ("top", "json"),
];

/// The flag as typed, or None for a positional argument.
fn flag(sub: &str, id: &str) -> Option<String> {
    let cmd = Cli::command();
    let arg = cmd
        .find_subcommand(sub)
        .and_then(|s| s.get_arguments().find(|a| a.get_id() == id))
        .unwrap_or_else(|| panic!("{sub} has no argument {id}"));
    arg.get_long().map(|l| format!("--{l}"))
}

/// The command line with `value` for the argument: `--flag=value` (so that
/// `-1` is a value, not a flag), or the value in a positional's place.
fn args_with(sub: &str, id: &str, value: &OsStr) -> Vec<OsString> {
    let mut args: Vec<OsString> = base(sub).into_iter().map(OsString::from).collect();
    match flag(sub, id) {
        Some(f) => {
            // In place of the base's own value for the same flag.
            let prefix = format!("{f}=");
            args.retain(|a| !a.to_string_lossy().starts_with(&prefix));
            let mut a = OsString::from(prefix);
            a.push(value);
            args.push(a);
        }
        None => {
            // Positional: instead of the base's own (who's port, reserve's
            // ports), after `--` so that `-1` is a value.
            args.retain(|a| a != "1433");
            args.push("--".into());
            args.push(value.to_owned());
        }
    }
    args
}

fn run(args: &[OsString]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .args(args)
        .env("PORTWATCH_HOOKS", "none-such")
        .output()
        .expect("run portwatch");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(args: &[OsString], hints: &[&str]) {
    let (code, err) = run(args);
    let shown = format!("{args:?}");
    assert!(!err.contains("panicked"), "{shown} panicked: {err}");
    assert_eq!(code, Some(2), "{shown} exited {code:?}: {err}");
    assert!(err.starts_with("error:"), "{shown}: {err}");
    assert!(
        hints.iter().any(|h| err.contains(h)),
        "{shown}: the message does not say what is allowed ({hints:?}): {err}"
    );
}

#[test]
fn every_argument_of_every_subcommand_is_swept() {
    let cmd = Cli::command();
    let mut missing = Vec::new();
    for sub in cmd.get_subcommands() {
        let name = sub.get_name();
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let known = REFUSED.iter().any(|(s, i, _, _)| *s == name && *i == id)
                || PATHS.contains(&(name, id))
                || NO_BAD_VALUE.contains(&(name, id));
            if !known {
                missing.push(format!("{name} {id}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "arguments without bad values in this sweep: {missing:?}"
    );
}

#[test]
fn bad_values_exit_2_saying_what_is_allowed() {
    for (sub, id, values, hint) in REFUSED {
        let hints: Vec<&str> = hint.split('|').collect();
        for v in *values {
            assert_refused(&args_with(sub, id, OsStr::new(v)), &hints);
        }
        // Said as not UTF-8, or as not one of the allowed values.
        let bytes = args_with(sub, id, OsStr::from_bytes(NOT_UTF8));
        assert_refused(&bytes, &[&["UTF-8"], hints.as_slice()].concat());
    }
    for (sub, id) in PATHS {
        assert_refused(&args_with(sub, id, OsStr::new("")), &["value is required"]);
    }
}

#[test]
fn more_ports_than_the_kernel_filter_holds_exit_2() {
    let mut args: Vec<OsString> = vec!["trace".into()];
    for p in 1000..1257 {
        args.push(format!("--port={p}").into());
    }
    assert_refused(&args, &["at most 256"]);
    // The same port many times is one port.
    let mut same: Vec<OsString> = vec!["trace".into(), "--replay=/nonexistent".into()];
    same.extend((0..300).map(|_| OsString::from("--port=80")));
    let (code, err) = run(&same);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot open the recording"), "{err}");
}

/// Whatever the value, parsing returns (a command or an error); it never
/// panics. In-process, over every argument, so nothing runs.
#[test]
fn no_value_panics_the_parser() {
    let long = "9".repeat(100_000);
    let emoji = "\u{1f642}".repeat(200);
    let hostile: Vec<&OsStr> = [
        "",
        "-",
        "--",
        "-1",
        "0",
        "NaN",
        "inf",
        "-inf",
        "1e19",
        "1e20",
        "1e308",
        "18446744073709551616",
        "340282366920938463463374607431768211456d",
        "\u{1b}[2J\u{7}",
        "\u{202e}1433",
        "é",
        "%s%n",
        "          ",
        "1-",
        "-65535",
        "0x10",
        "1_000",
        "٣",
        long.as_str(),
        emoji.as_str(),
    ]
    .into_iter()
    .map(OsStr::new)
    .chain([OsStr::from_bytes(NOT_UTF8)])
    .collect();
    let cmd = Cli::command();
    for sub in cmd.get_subcommands() {
        let name = sub.get_name().to_owned();
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") || !arg.get_action().takes_values() {
                continue;
            }
            for v in &hostile {
                let args = std::iter::once(OsString::from("portwatch"))
                    .chain(args_with(&name, id, v))
                    .collect::<Vec<_>>();
                let parsed = std::panic::catch_unwind(|| {
                    Cli::try_parse_checked_from(args.clone()).map_err(|e| e.render().to_string())
                });
                assert!(parsed.is_ok(), "{args:?} panicked the parser");
            }
        }
    }
}
