//! `portwatch doctor` and `portwatch reserve` against the real kernel. Each
//! test runs in its own network namespace: the port range and the reserved
//! ports are per namespace, so the host's are never changed.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use integration_tests::{in_netns, skip_unless_kernel};
use serde_json::Value;

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Starts a Python TCP listener on 127.0.0.1:PORT in the background, waits
/// until it listens and leaves its pid in `$D/py.pid`.
fn listener(port: u16) -> String {
    format!(
        r#"
python3 -c '
import os, socket, time
s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
print(os.getpid(), flush=True)
time.sleep(120)
' >"$D/py.pid" &
py=$!
trap 'kill $py 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do [ -s "$D/py.pid" ] && break; sleep 0.025; done
[ -s "$D/py.pid" ] || {{ echo "listener did not start" >&2; exit 1; }}
"#
    )
}

fn findings(doc: &Value) -> Vec<&Value> {
    doc["findings"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Findings that flag `port` as an unreserved listener in the ephemeral range.
fn flagging(doc: &Value, port: u16) -> Vec<&Value> {
    let needle = format!("port {port} ");
    findings(doc)
        .into_iter()
        .filter(|f| {
            f["message"]
                .as_str()
                .is_some_and(|m| m.contains(&needle) && m.contains("ephemeral range"))
        })
        .collect()
}

#[test]
fn doctor_flags_a_listener_in_the_ephemeral_range_until_it_is_reserved() -> Result<()> {
    skip_unless_kernel!();
    let run = in_netns(&format!(
        r#"
echo "40000 40100" >{RANGE}
{listen}
"$PW" doctor --json >"$D/before.json"
"$PW" reserve 40050 >"$D/reserve.out"
cat {RESERVED} >"$D/reserved"
"$PW" doctor --json >"$D/after.json"
"#,
        listen = listener(40050)
    ))?;
    let pid: u64 = run.file("py.pid").trim().parse().context("listener pid")?;
    let before = run.json("before.json")?;
    let pc = &before["port_config"];
    ensure!(
        pc["ephemeral_range"]["low"] == 40000 && pc["ephemeral_range"]["high"] == 40100,
        "{pc}"
    );
    ensure!(pc["ephemeral_range_size"] == 101, "{pc}");
    let l = pc["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["port"] == 40050))
        .with_context(|| format!("listener 40050 missing: {pc}"))?;
    ensure!(l["protocol"] == "tcp" && l["addr"] == "127.0.0.1", "{l}");
    ensure!(l["owners"][0]["pid"] == pid, "owner should be {pid}: {l}");

    let hits = flagging(&before, 40050);
    ensure!(
        hits.len() == 1,
        "40050 not flagged once: {:#?}",
        findings(&before)
    );
    let f = hits[0];
    ensure!(
        f["severity"] == "warning" || f["severity"] == "critical",
        "{f}"
    );
    ensure!(f["message"].as_str().unwrap().contains("python3"), "{f}");
    let fix = f["fix"].as_str().context("fix")?;
    ensure!(fix.contains("portwatch reserve 40050"), "{fix}");
    ensure!(
        fix.contains("net.ipv4.ip_local_reserved_ports=40050"),
        "{fix}"
    );

    ensure!(
        run.file("reserved").trim() == "40050",
        "{}",
        run.file("reserved")
    );
    ensure!(
        run.file("reserve.out").contains("after:  40050"),
        "{}",
        run.file("reserve.out")
    );
    let after = run.json("after.json")?;
    ensure!(
        flagging(&after, 40050).is_empty(),
        "still flagged after reserve: {:#?}",
        findings(&after)
    );
    ensure!(after["port_config"]["reserved_ports"] == "40050", "{after}");
    Ok(())
}

#[test]
fn reserve_merges_with_the_reserved_ports_already_set() -> Result<()> {
    skip_unless_kernel!();
    let run = in_netns(&format!(
        r#"
echo 40010,40020-40030 >{RESERVED}
"$PW" reserve 40031 40040-40041 --persist --persist-file "$D/90.conf" >"$D/out"
cat {RESERVED} >"$D/reserved"
"$PW" reserve 40025 >"$D/again"
cat {RESERVED} >"$D/reserved2"
"#
    ))?;
    let merged = "40010,40020-40031,40040-40041";
    ensure!(
        run.file("reserved").trim() == merged,
        "{}",
        run.file("reserved")
    );
    let out = run.file("out");
    ensure!(out.contains("before: 40010,40020-40030"), "{out}");
    ensure!(out.contains(&format!("after:  {merged}")), "{out}");
    let conf = run.file("90.conf");
    ensure!(
        conf.lines()
            .any(|l| l == format!("net.ipv4.ip_local_reserved_ports = {merged}")),
        "{conf}"
    );
    // Already reserved: nothing changes and it says so.
    ensure!(
        run.file("reserved2").trim() == merged,
        "{}",
        run.file("reserved2")
    );
    ensure!(
        run.file("again").contains("unchanged"),
        "{}",
        run.file("again")
    );
    Ok(())
}

/// `portwatch reserve ... | head -1`: the reader goes away, the change is
/// still made, and the exit status is 0.
#[test]
fn reserve_makes_the_change_even_when_stdout_is_closed() -> Result<()> {
    skip_unless_kernel!();
    let run = in_netns(&format!(
        r#"
set -o pipefail
# The reader closes its end at once; portwatch writes half a second later.
rc=0
{{ sleep 0.5; "$PW" reserve 40055 --persist --persist-file "$D/90.conf" 2>"$D/err"; }} \
  | python3 -c 'import os, time; os.close(0); time.sleep(2)' || rc=$?
echo "rc=$rc" >"$D/rc"
cat {RESERVED} >"$D/reserved"
"#
    ))?;
    ensure!(
        run.file("rc").trim() == "rc=0",
        "{}{}",
        run.file("rc"),
        run.file("err")
    );
    ensure!(run.file("err").is_empty(), "{}", run.file("err"));
    ensure!(
        run.file("reserved").trim() == "40055",
        "{}",
        run.file("reserved")
    );
    ensure!(
        run.file("90.conf").contains("= 40055"),
        "{}",
        run.file("90.conf")
    );
    Ok(())
}

#[test]
fn reserve_dry_run_changes_nothing() -> Result<()> {
    skip_unless_kernel!();
    let run = in_netns(&format!(
        r#"
echo 40010 >{RESERVED}
"$PW" reserve 40050 40011 --dry-run --persist --persist-file "$D/90.conf" >"$D/out"
cat {RESERVED} >"$D/reserved"
"#
    ))?;
    ensure!(
        run.file("reserved").trim() == "40010",
        "{}",
        run.file("reserved")
    );
    ensure!(
        !run.dir.path().join("90.conf").exists(),
        "--dry-run wrote the file"
    );
    let out = run.file("out");
    ensure!(out.contains("dry run"), "{out}");
    ensure!(out.contains("before: 40010"), "{out}");
    ensure!(out.contains("after:  40010-40011,40050"), "{out}");
    ensure!(
        out.contains("net.ipv4.ip_local_reserved_ports = 40010-40011,40050"),
        "{out}"
    );
    Ok(())
}

#[test]
fn reserve_rejects_bad_ports_and_unprivileged_callers() -> Result<()> {
    skip_unless_kernel!();
    let run = in_netns(&format!(
        r#"
echo 40010 >{RESERVED}
for bad in 0 65536 40010-40000 abc 1-2-3; do
  rc=0; "$PW" reserve "$bad" 2>"$D/err.$bad" || rc=$?
  echo "$bad $rc" >>"$D/codes"
done
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups -- "$PW" reserve 40050 2>"$D/err.nobody" || rc=$?
echo "nobody $rc" >>"$D/codes"
cat {RESERVED} >"$D/reserved"
"#
    ))?;
    let codes = run.file("codes");
    for line in codes.lines() {
        let (what, rc) = line.split_once(' ').context("codes line")?;
        ensure!(rc != "0", "`reserve {what}` succeeded: {codes}");
    }
    ensure!(codes.lines().count() == 6, "{codes}");
    ensure!(
        run.file("err.0").contains("port 0"),
        "{}",
        run.file("err.0")
    );
    ensure!(
        run.file("err.65536").contains("1 to 65535"),
        "{}",
        run.file("err.65536")
    );
    ensure!(
        run.file("err.40010-40000").contains("reversed"),
        "{}",
        run.file("err.40010-40000")
    );
    ensure!(
        run.file("err.abc").contains("not a port"),
        "{}",
        run.file("err.abc")
    );
    let nobody = run.file("err.nobody");
    ensure!(
        nobody.contains("needs root") && nobody.contains("sudo"),
        "{nobody}"
    );
    ensure!(
        run.file("reserved").trim() == "40010",
        "{}",
        run.file("reserved")
    );
    Ok(())
}

#[test]
fn doctor_capabilities_match_this_kernel_and_what_trace_attaches() -> Result<()> {
    skip_unless_kernel!();
    let run = in_netns(
        r#"
"$PW" doctor --json >"$D/doctor.json"
"$PW" trace --duration 0.3 >/dev/null 2>"$D/trace.err"
"#,
    )?;
    let doc = run.json("doctor.json")?;
    let caps = &doc["capabilities"];
    ensure!(caps["probed"] == true, "{caps}");
    let events = &caps["events"];
    ensure!(events["state"]["mechanism"] == "tracepoint", "{events}");
    ensure!(
        events["state"]["chosen"] == "tracepoint sock:inet_sock_set_state",
        "{events}"
    );

    // Consistent with the kernel, not hard-coded: without the kprobe PMU no
    // kprobe loads; bind/connect use fexit, else kprobes, else bind uses
    // cgroup hooks and connect the state tracepoint, else syscall tracepoints.
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    ensure!(caps["kprobe_pmu"] == kprobes, "{caps}");
    ensure!(caps["mechanisms"]["kprobe"]["loads"] == kprobes, "{caps}");
    for ev in ["bind", "connect"] {
        let e = &events[ev];
        let m = e["mechanism"].as_str().context("mechanism")?;
        let fexit = caps["mechanisms"]["fexit"]["loads"] == true;
        let cgroup = caps["mechanisms"]["cgroup_sock_addr"]["loads"] == true;
        let expected = if fexit {
            "fexit"
        } else if kprobes {
            "kprobe"
        } else if ev == "connect" {
            "tracepoint"
        } else if cgroup {
            "cgroup_sock_addr"
        } else {
            "syscall_tracepoints"
        };
        ensure!(m == expected, "{ev}: {m}, expected {expected}: {e}");
        // The choice is the first attempt that loads, in the collector's order.
        let first = e["attempts"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["loads"] == true))
            .context("an attempt that loads")?;
        ensure!(first["how"] == e["chosen"], "{e}");
    }
    let tax_warning = findings(&doc).into_iter().any(|f| {
        f["severity"] == "warning"
            && f["message"]
                .as_str()
                .is_some_and(|m| m.contains("measured on the development host"))
    });
    let taxed = ["bind", "connect"]
        .iter()
        .any(|ev| events[*ev]["mechanism"] == "syscall_tracepoints");
    ensure!(
        tax_warning == taxed,
        "syscall-tracepoint warning should appear exactly when bind or connect uses them: {:#?}",
        findings(&doc)
    );
    if !kprobes {
        ensure!(events["bind"]["mechanism"] != "kprobe", "{events}");
    }

    // Exactly what trace attaches.
    let err = run.file("trace.err");
    let attached = err
        .lines()
        .find_map(|l| l.strip_prefix("portwatch: attached "))
        .with_context(|| format!("no attached line: {err}"))?;
    ensure!(
        caps["trace_would_attach"] == attached,
        "doctor says {}, trace attached {attached}",
        caps["trace_would_attach"]
    );
    Ok(())
}

#[test]
fn doctor_without_root_checks_ports_and_says_what_is_missing() -> Result<()> {
    skip_unless_kernel!();
    let run = in_netns(&format!(
        r#"
echo "40000 40100" >{RANGE}
{listen}
setpriv --reuid=65534 --regid=65534 --clear-groups -- "$PW" doctor --json >"$D/doctor.json"
setpriv --reuid=65534 --regid=65534 --clear-groups -- "$PW" doctor --color always >"$D/doctor.txt"
"#,
        listen = listener(40060)
    ))?;
    let doc = run.json("doctor.json")?;
    ensure!(doc["capabilities"]["probed"] == false, "{doc}");
    ensure!(doc["capabilities"]["privileged"] == false, "{doc}");
    let missing = findings(&doc).into_iter().find(|f| {
        f["message"]
            .as_str()
            .is_some_and(|m| m.contains("hooks not probed"))
    });
    let missing = missing.with_context(|| format!("no hooks-not-probed finding: {doc}"))?;
    ensure!(missing["fix"] == "sudo portwatch doctor", "{missing}");
    // sock_diag works unprivileged: the listener is still found and flagged,
    // though root's process cannot be searched for its owner.
    ensure!(flagging(&doc, 40060).len() == 1, "{:#?}", findings(&doc));
    ensure!(
        doc["port_config"]["ephemeral_range"]["low"] == 40000,
        "{doc}"
    );
    let text = run.file("doctor.txt");
    ensure!(text.contains("not probed"), "{text}");
    ensure!(
        text.contains('\x1b'),
        "--color always should colour: {text}"
    );
    Ok(())
}
