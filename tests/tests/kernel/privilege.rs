//! Least privilege: once attached, `trace` keeps only CAP_SYS_ADMIN,
//! CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, in every thread and in the
//! bounding set, with no_new_privs, and still names the owner of a socket
//! another user opened before the trace (which takes reading that user's
//! /proc/PID/fd after the drop).

use anyhow::{ensure, Context, Result};
use integration_tests::{skip_unless_kernel, traced_run};

/// CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
const KEPT: &str = "0000000000280004";

#[test]
fn after_attaching_trace_keeps_only_what_its_lookups_use() -> Result<()> {
    skip_unless_kernel!();
    // A server of another user, listening before portwatch starts.
    let setup = r#"
setpriv --reuid=65534 --regid=65534 --clear-groups -- /usr/bin/python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 23950)); s.listen(8)
while True:
    c, _ = s.accept(); c.recv(1); c.close()
' privilege-test-server &
for _ in $(seq 1 100); do ss -ltnH 'sport = :23950' | grep -q . && break; sleep 0.05; done
"#;
    let py = r#"
import os, socket, time
me = os.stat("/proc/self/ns/net").st_ino
def procs():
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}/ns/net").st_ino == me:
                    yield p, open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
            except OSError:
                pass
for p, cmd in procs():
    if cmd and cmd[0].endswith(b"portwatch"):
        for t in sorted(os.listdir(f"/proc/{p}/task")):
            st = dict(l.split(":", 1) for l in open(f"/proc/{p}/task/{t}/status").read().splitlines() if ":" in l)
            print("THREAD", t, *(f"{k}={st[k].strip()}" for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs")))
    if b"privilege-test-server" in cmd:
        print(f"SERVER={p}")
        server = int(p)
c = socket.create_connection(("127.0.0.1", 23950)); c.send(b"x"); time.sleep(0.2); c.close()
time.sleep(0.2)
os.kill(server, 9)
"#;
    let run = traced_run(setup, &["--port", "23950"], py)?;
    let threads: Vec<&str> = run
        .workload
        .lines()
        .filter(|l| l.starts_with("THREAD"))
        .collect();
    ensure!(
        !threads.is_empty(),
        "no portwatch thread found: {}",
        run.workload
    );
    for t in &threads {
        for (set, want) in [
            ("CapEff", KEPT),
            ("CapPrm", KEPT),
            ("CapBnd", KEPT),
            ("CapInh", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
            ("NoNewPrivs", "1"),
        ] {
            ensure!(
                t.contains(&format!("{set}={want}")),
                "{set} should be {want}: {t}\nstderr: {}",
                run.stderr
            );
        }
    }
    // The accepted connection is the other user's server's, found through
    // its /proc/PID/fd after the capabilities were dropped.
    let server = run.var("SERVER").context("server pid")?;
    let accepted: Vec<_> = run
        .of_kind("state")
        .filter(|e| e["sport"] == 23950 && e["old_state"] == "LISTEN")
        .collect();
    ensure!(!accepted.is_empty(), "no accept seen: {:#?}", run.events);
    for e in &accepted {
        ensure!(
            e["pid"] == server && e["uid"] == 65534,
            "the accept is not the other user's server's (pid {server}): {e}"
        );
    }
    Ok(())
}

/// The advice for a missing privilege never hands tracing to every local
/// user (capabilities on the binary everyone runs): sudo, or a copy only a
/// group may run.
#[test]
fn the_advice_without_privileges_is_sudo_or_a_group_only_copy() -> Result<()> {
    skip_unless_kernel!();
    let (code, stderr) = integration_tests::run_portwatch(&["trace", "--duration", "1"], true)?;
    ensure!(code == 1, "must fail without privileges: {stderr}");
    ensure!(stderr.contains("sudo"), "{stderr}");
    ensure!(
        stderr.contains("-m 0750") && stderr.contains("-g portwatch"),
        "no group-only copy offered: {stderr}"
    );
    ensure!(
        !stderr.contains("+ep $(command -v portwatch)"),
        "advises capabilities on the binary every user runs: {stderr}"
    );
    Ok(())
}
