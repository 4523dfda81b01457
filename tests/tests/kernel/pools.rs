//! Figures that an incident is read from: owners of what predates the
//! trace, and ephemeral pools counted where they live, against `ss`.

use anyhow::{ensure, Context, Result};
use integration_tests::{skip_unless_kernel, traced_run, Run};
use serde_json::Value;

fn pool(run: &Run, dport: u16) -> Option<&Value> {
    run.summary()?["pools"]
        .as_array()?
        .iter()
        .find(|p| p["dport"] == dport)
}

/// A pre-forking server (a master and one worker that accepts, as nginx
/// with one worker) started before the trace: every connection accepted
/// during the trace is its worker's, from the first event.
#[test]
fn a_server_started_before_the_trace_has_its_connections_attributed() -> Result<()> {
    skip_unless_kernel!();
    let server = r#"
import os, socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 24200)); srv.listen(64)
pid = os.fork()
if pid == 0:
    while True:
        s, _ = srv.accept(); s.recv(1); s.close()
open(os.environ["D"] + "/pids", "w").write("%d %d" % (os.getpid(), pid))
os.waitpid(pid, 0)
"#;
    let setup = format!(
        "cat > \"$D/server.py\" <<'PY'\n{server}\nPY\npython3 \"$D/server.py\" >/dev/null 2>&1 &\nfor _ in $(seq 1 200); do [ -s \"$D/pids\" ] && break; sleep 0.025; done"
    );
    let py = r#"
import os, signal, socket
master, worker = map(int, open(os.environ["D"] + "/pids").read().split())
print("MASTER=%d WORKER=%d" % (master, worker), flush=True)
for _ in range(10):
    c = socket.create_connection(("127.0.0.1", 24200)); c.send(b"x"); c.recv(1); c.close()
os.kill(worker, signal.SIGKILL); os.kill(master, signal.SIGKILL)
"#;
    let run = traced_run(&setup, &["--port", "24200"], py)?;
    run.check_clean_exit()?;
    let worker = run.var("WORKER").context("worker")?;
    // The accepted connections' transitions (the listener's own close is
    // by whichever of its holders exits last). On some kernels (Debian's
    // 5.10) the child's LISTEN -> SYN_RECV still shows the listener's ends
    // (dport 0): the state is set before the request's ports are copied.
    let server_side: Vec<&Value> = run
        .of_kind("state")
        .filter(|e| e["sport"] == 24200)
        .filter(|e| !(e["old_state"] == "LISTEN" && e["new_state"] == "CLOSE"))
        .collect();
    let accepted = server_side
        .iter()
        .filter(|e| e["old_state"] == "LISTEN" && e["new_state"] == "SYN_RECV")
        .count();
    ensure!(accepted == 10, "10 accepted expected: {server_side:#?}");
    let wrong: Vec<&&Value> = server_side.iter().filter(|e| e["pid"] != worker).collect();
    ensure!(
        wrong.is_empty(),
        "{} of {} server-side events not the worker's ({worker}): {wrong:#?}",
        wrong.len(),
        server_side.len()
    );
    ensure!(
        server_side.iter().all(|e| e["side"] == "server"),
        "{server_side:#?}"
    );
    Ok(())
}

/// The server closes first: every TIME_WAIT is the server's, on its own
/// listening port, and no client pool is under any pressure.
#[test]
fn server_side_time_wait_is_no_client_pressure() -> Result<()> {
    skip_unless_kernel!();
    let py = r#"
import socket, subprocess
srv = socket.socket(); srv.bind(("127.0.0.1", 24201)); srv.listen(64)
for _ in range(20):
    c = socket.create_connection(("127.0.0.1", 24201)); s, _ = srv.accept()
    s.close(); c.recv(1); c.close()
out = subprocess.run(["ss", "-tanH"], capture_output=True, text=True).stdout
tw = [l for l in out.splitlines() if l.startswith("TIME-WAIT")]
print("SERVER_TW=%d" % len([l for l in tw if l.split()[3].endswith(":24201")]), flush=True)
print("CLIENT_POOL=%d" % len([l for l in out.splitlines() if l.split()[4].endswith(":24201")]), flush=True)
"#;
    let run = traced_run("", &["--port", "24201"], py)?;
    run.check_clean_exit()?;
    ensure!(run.var("SERVER_TW") == Some(20), "{}", run.workload);
    let summary = run.summary().context("summary")?;
    ensure!(
        summary["timewait_destinations"]
            .as_array()
            .is_some_and(|d| d.is_empty()),
        "server-side TIME_WAIT is no destination: {summary}"
    );
    let p = pool(&run, 24201).context("pool towards the server")?;
    ensure!(
        Some(p["in_use"].as_u64().unwrap_or(99)) == run.var("CLIENT_POOL"),
        "pool {p} vs ss {}",
        run.workload
    );
    ensure!(p["in_use"] == 0 && p["pressure"] == 0.0, "{p}");
    Ok(())
}

/// A container-like namespace with a 10-port range, traced from outside
/// it: clients hold connections until connect() fails, then close first.
/// The failed connect names its destination and the ports held towards
/// it; the summary's pool uses the namespace's own range and counts what
/// its `ss` counts.
#[test]
fn a_containers_pool_is_counted_in_its_own_namespace_against_its_own_range() -> Result<()> {
    skip_unless_kernel!();
    let py = r#"
import os, subprocess
inner = r'''
import os, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40009"], check=True)
# As in every test namespace (STEADY_TIMEWAIT): TIME_WAIT lives its 60 s.
subprocess.run(["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=0", "net.ipv4.tcp_rfc1337=1"], check=True)
srv = socket.socket(); srv.bind(("127.0.0.1", 24202)); srv.listen(64)
held = []
while True:
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", 24202))
    except OSError as e:
        print("FAILED_ERRNO=%d HELD=%d" % (e.errno, len(held)), flush=True)
        break
    held.append((c, srv.accept()[0]))
for c, s in held:
    c.close(); s.recv(1); s.close()
import time; time.sleep(0.3)
out = subprocess.run(["ss", "-tanH"], capture_output=True, text=True).stdout
towards = [l for l in out.splitlines() if l.split()[4] == "127.0.0.1:24202"
           and 40000 <= int(l.split()[3].rsplit(":", 1)[1]) <= 40009]
print("INNER_SS=%d" % len(towards), flush=True)
print("NETNS=%d" % os.stat("/proc/self/ns/net").st_ino, flush=True)
# Keep the namespace (and its TIME_WAIT) alive until portwatch has summed up.
subprocess.Popen(["sleep", "20"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''
out = subprocess.run(["unshare", "--net", "python3", "-c", inner], capture_output=True, text=True, check=True).stdout
print(out, flush=True)
"#;
    let run = traced_run("", &["--port", "24202"], py)?;
    run.check_clean_exit()?;
    ensure!(run.var("FAILED_ERRNO") == Some(99), "{}", run.workload);
    let held = run.var("HELD").context("held")?;
    let inner_ns = run.var("NETNS").context("netns")?;
    let failed = run
        .of_kind("connect")
        .find(|e| e["errno"] == "EADDRNOTAVAIL")
        .context("the failed connect")?;
    ensure!(
        failed["daddr"] == "127.0.0.1" && failed["dport"] == 24202 && failed["netns"] == inner_ns,
        "{failed}"
    );
    ensure!(
        failed["pool"]["in_use"] == held && failed["pool"]["capacity"] == 10,
        "the ports held towards it when it failed ({held}): {failed}"
    );
    let p = pool(&run, 24202).context("pool")?;
    ensure!(p["netns"] == inner_ns, "{p}");
    ensure!(
        p["range_low"] == 40000 && p["range_high"] == 40009 && p["capacity"] == 10,
        "the namespace's own range: {p}"
    );
    ensure!(
        p["in_use"].as_u64() == run.var("INNER_SS"),
        "pool {p} vs the namespace's ss: {}",
        run.workload
    );
    ensure!(p["by_state"]["TIME_WAIT"] == p["in_use"], "{p}");
    // The failure is charged to its destination in the summary too.
    let procs = run.summary().context("summary")?["processes"].clone();
    ensure!(
        procs
            .as_array()
            .is_some_and(|ps| ps
                .iter()
                .any(|p| p["connect_failures"].as_array().is_some_and(|f| f
                    .iter()
                    .any(|f| f["dport"] == 24202 && f["errno"] == "EADDRNOTAVAIL")))),
        "{procs}"
    );
    Ok(())
}

/// `--netns` keeps other namespaces' sockets out (filtered in the kernel:
/// userspace does not look at the namespace when selecting events).
#[test]
fn netns_filter_keeps_other_namespaces_out() -> Result<()> {
    skip_unless_kernel!();
    let setup = "ip netns del pwfilter 2>/dev/null; ip netns add pwfilter && ip -n pwfilter link set lo up && echo pwfilter > \"$D/name\"";
    let py = r#"
import os, socket, subprocess
name = open(os.environ["D"] + "/name").read().strip()
script = "import socket\nsrv = socket.socket(); srv.bind(('127.0.0.1', 24203)); srv.listen()\nfor _ in range(3):\n    c = socket.create_connection(('127.0.0.1', 24203)); s, _ = srv.accept(); c.close(); s.close()\n"
subprocess.run(["ip", "netns", "exec", name, "python3", "-c", script], check=True)
exec(script)
print("INNER=%d" % os.stat("/run/netns/" + name).st_ino, flush=True)
"#;
    let run = traced_run(
        setup,
        &["--port", "24203", "--netns", "/run/netns/pwfilter"],
        py,
    );
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", "pwfilter"])
        .status();
    let run = run?;
    run.check_clean_exit()?;
    let inner = run.var("INNER").context("inner")?;
    let states: Vec<&Value> = run.of_kind("state").collect();
    ensure!(states.len() >= 12, "the namespace's events: {states:#?}");
    ensure!(
        run.events
            .iter()
            .filter(|e| e["event"] != "summary" && e["event"] != "lost")
            .all(|e| e["netns"] == inner),
        "only {inner}'s events: {:#?}",
        run.events
    );
    Ok(())
}
