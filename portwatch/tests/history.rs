//! `portwatch history` shows every time in one convention, marked: local
//! time with its offset by default, UTC (`Z`) with --utc; JSON is UTC.

mod common;

use std::process::Command;

fn history(journal: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .arg("history")
        .arg("--journal")
        .arg(journal)
        .args(args)
        // One hour east of UTC, without needing the tz database.
        .env("TZ", "XXX-1")
        .output()
        .expect("run portwatch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn every_time_is_local_and_marked_or_utc_with_a_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::journal_with_a_record(dir.path());
    let first = ["--port", "1433", "--first"];
    let boots = ["--list-boots"];
    // The record is at 22:01:02 UTC, 23:01:02 at +01:00.
    for (args, what) in [
        (&[][..], "table"),
        (&first[..], "--first"),
        (&boots[..], "--list-boots"),
    ] {
        let local = history(dir.path(), args);
        assert!(
            local.contains("2026-11-23 23:01:02.000+01:00"),
            "{what}: {local}"
        );
        assert!(!local.contains("22:01:02"), "{what}: {local}");
        let mut utc_args = args.to_vec();
        utc_args.push("--utc");
        let utc = history(dir.path(), &utc_args);
        assert!(utc.contains("2026-11-23 22:01:02.000Z"), "{what}: {utc}");
        assert!(!utc.contains("+01:00"), "{what}: {utc}");
    }
    let json = history(dir.path(), &["--json"]);
    assert!(
        json.contains("\"how\":null"),
        "every key, also outside --first: {json}"
    );
    assert!(
        json.contains("\"time\":\"2026-11-23T22:01:02.000000000Z\""),
        "{json}"
    );
    let table = history(dir.path(), &[]);
    let header = table.lines().next().expect("header");
    let row = table.lines().nth(1).expect("row");
    assert_eq!(
        header.find("PID").map(|i| i + 3),
        row.find(" 42 ").map(|i| i + 3),
        "columns line up:\n{table}"
    );
}

#[test]
fn what_a_process_named_itself_reaches_the_terminal_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::journal_with_a_listener(dir.path(), "x\x1b]0;owned\x07", "evil\u{202e}txt.exe");
    for args in [&["--port", "1433", "--first"][..], &[]] {
        let out = history(dir.path(), args);
        assert!(
            !out.contains('\x1b') && !out.contains('\u{202e}'),
            "{out:?}"
        );
        assert!(out.contains(r"x\e]0;owned\x07"), "{out}");
    }
    let first = history(dir.path(), &["--port", "1433", "--first"]);
    assert!(first.contains(r"evil\u{202e}txt.exe"), "{first}");
}
