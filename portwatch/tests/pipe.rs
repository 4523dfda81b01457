//! A closed pipe on stdout (`portwatch who 7000 | head -2`) ends every
//! subcommand quietly with exit status 0: nothing on stderr, no panic.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

mod common;
use common::journal_with_a_record;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/session.jsonl");

/// The write end of a pipe whose read end is already closed: every write
/// fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both are fresh descriptors this test owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

fn into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(closed_pipe()))
        .output()
        .expect("run portwatch");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_subcommand_ends_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    journal_with_a_record(&journal);
    let journal = journal.to_str().expect("utf-8 path");
    let units = dir.path().to_str().expect("utf-8 path");
    let runs: &[&[&str]] = &[
        &["trace", "--replay", FIXTURE],
        &["trace", "--replay", FIXTURE, "--json"],
        &["who", "1", "--journal", journal],
        &["who", "1", "--json", "--journal", journal],
        &["history", "--journal", journal],
        &["history", "--journal", journal, "--json"],
        &["history", "--journal", journal, "--list-boots"],
        &["history", "--journal", journal, "--port", "1433", "--first"],
        &["doctor"],
        &["doctor", "--json"],
        &["reserve", "1433", "--dry-run", "--persist"],
        &[
            "explain",
            "--no-checks",
            "[Errno 98] Address already in use",
        ],
        &["explain", "--no-checks", "--json", "EADDRNOTAVAIL"],
        &[
            "install-service",
            "--dry-run",
            "--binary",
            "/usr/bin/portwatch",
            "--unit-dir",
            units,
        ],
        &["completions", "bash"],
        &["manpages", "--dir", units],
        &["--help"],
    ];
    for args in runs {
        let (code, stderr) = into_closed_pipe(args);
        assert_eq!(code, Some(0), "portwatch {args:?}: {stderr}");
        assert!(
            !stderr.contains("error") && !stderr.contains("panicked"),
            "portwatch {args:?} said: {stderr}"
        );
    }
}
