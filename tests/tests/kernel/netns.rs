//! The same ports in several network namespaces, as on a container host:
//! every answer must come from the event's own namespace, also when its
//! processes are gone by the time the event is read.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use integration_tests::{skip_unless_kernel, traced_run, Run};
use serde_json::Value;

/// Python helpers every workload here starts with: the pid as the host (and
/// so portwatch) sees it, also from inside a pid namespace, and a runner for
/// a script in fresh network (and pid) namespaces.
const PRELUDE: &str = r#"
import os, socket, subprocess, sys, time
def host_pid():
    for line in open("/proc/self/status"):
        if line.startswith("NSpid:"):
            return int(line.split()[1])
    return os.getpid()
def netns():
    return os.stat("/proc/self/ns/net").st_ino
def in_new_namespaces(script, pid=True):
    script = INNER_PRELUDE + "subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)\n" + script
    args = ["unshare", "--net"] + (["--pid", "--fork"] if pid else []) + ["python3", "-c", script]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
def failing_bind(port):
    """A child that fails to bind `port` and exits at once; its host pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", port))
            os._exit(3)
        except OSError as e:
            os.write(w, b"%d %d" % (host_pid(), e.errno))
            os._exit(0)
    _, st = os.waitpid(pid, 0)
    assert st == 0, "the bind did not fail"
    hp, err = os.read(r, 64).split()
    os.close(r); os.close(w)
    assert int(err) == 98, err
    return int(hp)
"#;

/// The same helpers, for the scripts that run inside new namespaces.
fn prelude() -> String {
    format!("INNER_PRELUDE = {PRELUDE:?}\n{PRELUDE}\n")
}

fn failed_binds(run: &Run, port: u16) -> Vec<&Value> {
    run.of_kind("bind")
        .filter(|e| e["errno"] == "EADDRINUSE" && e["sport"] == port)
        .collect()
}

/// A listener on the same port here and in a container (its own network
/// and pid namespaces); short-lived processes on both sides fail to bind it
/// and exit at once. Each failure's holder must be its own namespace's
/// listener, every time.
#[test]
fn a_failed_bind_names_the_holder_in_the_binders_own_namespace() -> Result<()> {
    skip_unless_kernel!();
    const N: usize = 20;
    let py = format!(
        r#"{prelude}
PORT, N = 24000, {N}
a = socket.socket(); a.bind(("0.0.0.0", PORT)); a.listen()
print("A_LISTENER=%d" % host_pid(), flush=True)
inner = in_new_namespaces('''
b = socket.socket(); b.bind(("0.0.0.0", 24000)); b.listen()
print("B_LISTENER=%d" % host_pid(), flush=True)
for _ in range({N}):
    print("B_BINDER=%d" % failing_bind(24000), flush=True)
''')
# Interleave both sides while the container's side runs.
for _ in range(N):
    print("A_BINDER=%d" % failing_bind(PORT), flush=True)
out, _ = inner.communicate()
assert inner.returncode == 0
print(out, flush=True)
"#,
        prelude = prelude()
    );
    let run = traced_run("", &["--port", "24000"], &py)?;
    run.check_clean_exit()?;
    let a = run.var("A_LISTENER").context("A's listener")?;
    let b = run.var("B_LISTENER").context("B's listener")?;
    let a_binders = run.vars("A_BINDER");
    let b_binders = run.vars("B_BINDER");
    ensure!(
        a_binders.len() == N && b_binders.len() == N,
        "{}",
        run.workload
    );
    let failed = failed_binds(&run, 24000);
    ensure!(
        failed.len() == 2 * N,
        "{} failed binds: {:#?}",
        failed.len(),
        run.events
    );
    let mut right = 0;
    for e in &failed {
        let pid = e["pid"].as_u64().context("pid")?;
        let want = if a_binders.contains(&pid) {
            a
        } else if b_binders.contains(&pid) {
            b
        } else {
            anyhow::bail!("a bind by an unknown pid: {e}");
        };
        if e["holder"]["pid"] == want {
            right += 1;
        } else {
            eprintln!("wrong holder (want {want}): {e}");
        }
    }
    eprintln!(
        "netns holder: the binder's own namespace's listener named in {right} of {} failed binds",
        failed.len()
    );
    ensure!(right == failed.len(), "{right} of {} right", failed.len());
    // The two sides are told apart by namespace in the events themselves.
    let ns_of = |pids: &[u64]| -> Vec<Value> {
        failed
            .iter()
            .filter(|e| e["pid"].as_u64().is_some_and(|p| pids.contains(&p)))
            .map(|e| e["netns"].clone())
            .collect()
    };
    let (na, nb) = (ns_of(&a_binders), ns_of(&b_binders));
    ensure!(na.iter().all(|n| n.is_u64() && *n == na[0]), "{na:?}");
    ensure!(nb.iter().all(|n| n.is_u64() && *n == nb[0]), "{nb:?}");
    ensure!(na[0] != nb[0], "both sides in one namespace?");
    Ok(())
}

/// Two servers on the same port in two network namespaces, both accepting
/// at the same time: every server-side transition is its own namespace's
/// server's.
#[test]
fn accepted_connections_are_charged_to_their_own_namespaces_server() -> Result<()> {
    skip_unless_kernel!();
    const N: usize = 10;
    let server = format!(
        r#"
srv = socket.socket(); srv.bind(("0.0.0.0", 24001)); srv.listen(64)
print("SERVER=%d NETNS=%d" % (host_pid(), netns()), flush=True)
# Both servers listen before either accepts.
open("%s/ready-%d" % (os.environ["D"], netns()), "w").close()
while len([f for f in os.listdir(os.environ["D"]) if f.startswith("ready-")]) < 2:
    time.sleep(0.01)
pid = os.fork()
if pid == 0:
    for _ in range({N}):
        c = socket.create_connection(("127.0.0.1", 24001)); c.recv(1); c.close()
    os._exit(0)
for _ in range({N}):
    s, _ = srv.accept(); s.close()
os.waitpid(pid, 0)
"#
    );
    let py = format!(
        r#"{prelude}
SERVER = {server:?}
inner = in_new_namespaces(SERVER, pid=False)
here = subprocess.Popen(["python3", "-c", INNER_PRELUDE + SERVER], stdout=subprocess.PIPE, text=True)
for p in (inner, here):
    out, _ = p.communicate()
    assert p.returncode == 0
    print(out, flush=True)
"#,
        prelude = prelude()
    );
    let run = traced_run("", &["--port", "24001"], &py)?;
    run.check_clean_exit()?;
    let servers = run.vars("SERVER");
    let namespaces = run.vars("NETNS");
    ensure!(
        servers.len() == 2 && namespaces.len() == 2,
        "{}",
        run.workload
    );
    ensure!(namespaces[0] != namespaces[1], "{}", run.workload);
    let server_of: HashMap<u64, u64> = namespaces.into_iter().zip(servers).collect();
    let mut accepted: HashMap<u64, usize> = HashMap::new();
    let server_side: Vec<&Value> = run
        .of_kind("state")
        .filter(|e| e["sport"] == 24001)
        .collect();
    for e in &server_side {
        let ns = e["netns"].as_u64().context("netns")?;
        let want = server_of
            .get(&ns)
            .with_context(|| format!("unknown netns: {e}"))?;
        ensure!(
            e["pid"] == *want,
            "charged to the wrong server (want {want}): {e}"
        );
        if e["old_state"] == "LISTEN" && e["new_state"] == "SYN_RECV" {
            *accepted.entry(ns).or_default() += 1;
        }
    }
    ensure!(
        accepted.len() == 2 && accepted.values().all(|n| *n == N),
        "{N} accepted per namespace expected: {accepted:?}"
    );
    Ok(())
}

/// Everything in a container's namespace has exited (and the namespace is
/// gone) before portwatch reads its events; the same port is held here.
/// The container's events keep their processes, and its failed bind names
/// the container's listener this trace saw, never the listener here.
#[test]
fn processes_gone_before_their_events_are_read_keep_their_answers() -> Result<()> {
    skip_unless_kernel!();
    let py = format!(
        r#"{prelude}
a = socket.socket(); a.bind(("0.0.0.0", 24002)); a.listen()
print("A_LISTENER=%d" % host_pid(), flush=True)
inner = in_new_namespaces('''
b = socket.socket(); b.bind(("0.0.0.0", 24002)); b.listen()
print("B_LISTENER=%d" % host_pid(), flush=True)
print("B_BINDER=%d" % failing_bind(24002), flush=True)
pid = os.fork()
if pid == 0:
    c = socket.create_connection(("127.0.0.1", 24002)); c.close()
    print("B_CLIENT=%d" % host_pid(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
''')
out, _ = inner.communicate()
assert inner.returncode == 0
print(out, flush=True)
print("A_BINDER=%d" % failing_bind(24002), flush=True)
# The container and all its processes are gone: let portwatch read now.
open(os.environ["D"] + "/go", "w").close()
time.sleep(0.5)
"#,
        prelude = prelude()
    );
    let go = "$D/go";
    let run = traced_run("", &["--port", "24002", "--stall-reader-until", go], &py)?;
    run.check_clean_exit()?;
    let (a, b) = (
        run.var("A_LISTENER").context("A")?,
        run.var("B_LISTENER").context("B")?,
    );
    let (a_binder, b_binder) = (
        run.var("A_BINDER").context("A binder")?,
        run.var("B_BINDER").context("B binder")?,
    );
    let client = run.var("B_CLIENT").context("B client")?;
    let failed = failed_binds(&run, 24002);
    let holder_of = |binder: u64| {
        failed
            .iter()
            .find(|e| e["pid"] == binder)
            .map(|e| e["holder"]["pid"].clone())
    };
    ensure!(
        holder_of(b_binder) == Some(b.into()),
        "container's bind: {failed:#?}"
    );
    ensure!(
        holder_of(a_binder) == Some(a.into()),
        "bind here: {failed:#?}"
    );
    // The container's client is still named on its connection's events.
    ensure!(
        run.of_kind("state")
            .any(|e| e["pid"] == client && e["old_state"] == "SYN_SENT"),
        "client events: {:#?}",
        run.events
    );
    Ok(())
}

/// `who` and `doctor` look into a container's namespace with `--netns`,
/// without nsenter: its sockets, its range, its listeners in that range.
#[test]
fn who_and_doctor_look_into_another_namespace() -> Result<()> {
    skip_unless_kernel!();
    let run = integration_tests::in_netns(
        r#"
ip netns del pwlook 2>/dev/null || true
ip netns add pwlook
ip -n pwlook link set lo up
ip netns exec pwlook sysctl -qw net.ipv4.ip_local_port_range="40000 40100"
ip netns exec pwlook python3 -c '
import os, socket, time
s = socket.socket(); s.bind(("127.0.0.1", 40050)); s.listen()
open(os.environ["D"] + "/pid", "w").write(str(os.getpid()))
time.sleep(30)
' >/dev/null 2>&1 &
for _ in $(seq 1 200); do [ -s "$D/pid" ] && break; sleep 0.025; done
"$PW" who 40050 --netns /run/netns/pwlook --json > "$D/who_there"
"$PW" who 40050 --json > "$D/who_here"
"$PW" doctor --netns "$(cat "$D/pid")" --json > "$D/doctor_there"
kill "$(cat "$D/pid")"
ip netns del pwlook
"#,
    )?;
    let pid: u64 = run.file("pid").trim().parse().context("pid")?;
    let there = run.json("who_there")?;
    let here = run.json("who_here")?;
    ensure!(
        there["sockets"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["pid"] == pid && s["state"] == "LISTEN")),
        "the namespace's listener: {there}"
    );
    ensure!(
        here["sockets"].as_array().is_some_and(|s| s.is_empty()),
        "nothing here: {here}"
    );
    let doctor = run.json("doctor_there")?;
    let flagged = doctor["findings"].as_array().is_some_and(|f| {
        f.iter().any(|f| {
            f["message"]
                .as_str()
                .is_some_and(|m| m.contains("40050") && m.contains("40000-40100"))
        })
    });
    ensure!(
        flagged,
        "the listener inside the namespace's range: {doctor}"
    );
    Ok(())
}
