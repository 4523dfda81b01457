//! The DaemonSet's privileges (dist/kubernetes/portwatch.yaml), checked on
//! the real thing: `serve` with exactly the capabilities the manifest adds
//! counts a workload in another network namespace, as on a node whose pods
//! each have their own; without SYS_ADMIN or SYS_PTRACE it cannot.

use anyhow::{ensure, Context, Result};
use integration_tests::{in_netns_with, need_tool, skip_unless_kernel, STEADY_TIMEWAIT};

const MANIFEST: &str = include_str!("../../../dist/kubernetes/portwatch.yaml");

/// The capabilities the manifest adds, as setpriv names them (`bpf`).
fn manifest_caps() -> Result<Vec<String>> {
    let line = MANIFEST
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: ["))
        .context("no capabilities.add in the manifest")?;
    Ok(line
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_lowercase())
        .collect())
}

/// TIME_WAIT entries of `twclient` and the ports it holds towards its
/// server, as `serve` with `caps` reports them, the workload running in a
/// namespace of its own.
fn counted_with(caps: &[String]) -> Result<(f64, Option<f64>, String)> {
    let set: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let script = format!(
        r#"
setpriv --bounding-set -all,{set} --inh-caps -all -- \
    "$PW" serve --listen 127.0.0.1:19466 --interval 0.5 2>"$D/serve.err" &
pw=$!
for _ in $(seq 1 600); do grep -q '^portwatch: serving' "$D/serve.err" && break; sleep 0.1; done
grep -q '^portwatch: serving' "$D/serve.err"
unshare --net bash -c 'ip link set lo up; {STEADY_TIMEWAIT}; python3 "$D/work.py" 24304 1 25 0 && touch "$D/done"; exec sleep 60' &
nested=$!
for _ in $(seq 1 600); do [ -e "$D/done" ] && break; sleep 0.1; done
sleep 2
curl -sSf http://127.0.0.1:19466/metrics >"$D/metrics.txt"
kill $nested
kill -TERM $pw
wait $pw
"#,
        set = set.join(",")
    );
    let run = in_netns_with(&script, &[("work.py", super::live::WORKLOAD)])?;
    let metrics = run.file("metrics.txt");
    let find = |prefix: &str, label: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains(label))
            .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
    };
    let entries = find(
        "portwatch_tcp_timewait_entries_total{",
        r#"comm="twclient""#,
    );
    let pool = find("portwatch_ephemeral_ports_in_use{", r#"dport="24304""#);
    Ok((entries.unwrap_or(0.0), pool, run.file("serve.err")))
}

#[test]
fn the_daemonsets_capabilities_suffice_and_the_broad_ones_are_needed() -> Result<()> {
    skip_unless_kernel!();
    need_tool!("curl", "curl");
    let caps = manifest_caps()?;
    ensure!(
        caps.iter().any(|c| c == "bpf") && caps.iter().any(|c| c == "perfmon"),
        "{caps:?}"
    );
    let (entries, pool, err) = counted_with(&caps)?;
    ensure!(
        entries == 25.0 && pool == Some(25.0),
        "with {caps:?}: {entries} TIME_WAIT entries, pool {pool:?}, expected 25 each:\n{err}"
    );
    // Without either, the other namespace's table cannot be read: its pool
    // is not counted (and where TIME_WAIT is confirmed through that table,
    // rather than seen by an fentry/kprobe hook on tcp_time_wait, no entry
    // is confirmed either).
    for dropped in ["sys_admin", "sys_ptrace"] {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        ensure!(fewer.len() < caps.len(), "the manifest lacks {dropped}");
        let (entries, pool, err) = counted_with(&fewer)?;
        ensure!(
            pool.is_none_or(|p| p == 0.0),
            "without {dropped} the other namespace's pool was still counted ({pool:?}): is it needed?\n{err}"
        );
        ensure!(
            entries == 0.0 || err.contains("timewait=fentry") || err.contains("timewait=kprobe"),
            "without {dropped} {entries} TIME_WAIT entries were still confirmed through sock_diag: is it needed?\n{err}"
        );
    }
    Ok(())
}
