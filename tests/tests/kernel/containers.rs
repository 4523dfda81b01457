//! Container attribution from real cgroups: a workload moved into a cgroup
//! named as docker's systemd driver names a container's.

use anyhow::{ensure, Context, Result};
use integration_tests::{skip_unless_kernel, traced_run};
use serde_json::Value;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Moves itself into `/pwtest-PID.slice/docker-ID.scope` (mounting the
/// cgroup v2 hierarchy where nothing has), listens, connects once, asks
/// `who`, and leaves the cgroup again.
const WORKLOAD: &str = r#"
import json, os, socket, subprocess, time
D = os.environ["D"]
cg2 = next((l.split()[4] for l in open("/proc/self/mountinfo") if " - cgroup2 " in l), None)
mounted = cg2 is None
if mounted:
    cg2 = D + "/cg2"; os.makedirs(cg2)
    subprocess.run(["mount", "-t", "cgroup2", "none", cg2], check=True)
base = "%s/pwtest-%d.slice" % (cg2, os.getpid())
scope = "%s/docker-%s.scope" % (base, "ID")
os.makedirs(scope)
try:
    open(scope + "/cgroup.procs", "w").write(str(os.getpid()))
    print("PID=%d" % os.getpid(), flush=True)
    srv = socket.socket(); srv.bind(("127.0.0.1", 24310)); srv.listen(8)
    c = socket.create_connection(("127.0.0.1", 24310)); s, _ = srv.accept()
    who = subprocess.run([os.environ["PW"], "who", "24310", "--json"], capture_output=True, text=True)
    print("WHO " + json.dumps(json.loads(who.stdout)), flush=True)
    c.close(); s.close()
    time.sleep(0.5)
finally:
    open(cg2 + "/cgroup.procs", "w").write(str(os.getpid()))
    os.rmdir(scope); os.rmdir(base)
    if mounted:
        subprocess.run(["umount", cg2])
"#;

#[test]
fn trace_and_who_name_the_container_from_its_cgroup() -> Result<()> {
    skip_unless_kernel!();
    let py = WORKLOAD.replace("\"ID\"", &format!("\"{ID}\""));
    let run = traced_run("", &["--port", "24310"], &py)?;
    ensure!(
        run.exit_code == 0,
        "portwatch exited {}: {}",
        run.exit_code,
        run.stderr
    );
    let pid = run.var("PID").context("workload pid")?;
    let listen = run
        .of_kind("listen")
        .find(|e| e["pid"] == pid)
        .with_context(|| format!("no listen of {pid}: {:#?}", run.events))?;
    let short = format!("container {}", &ID[..12]);
    for (key, want) in [
        ("container_runtime", Value::from("docker")),
        ("container_id", Value::from(ID)),
        ("unit", Value::from(short.as_str())),
        ("pod_uid", Value::Null),
    ] {
        ensure!(listen[key] == want, "{key} in {listen}");
    }
    let who: Value = run
        .workload
        .lines()
        .find_map(|l| l.strip_prefix("WHO "))
        .context("who's answer")
        .and_then(|j| serde_json::from_str(j).context("who --json"))?;
    let listener = who["sockets"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["state"] == "LISTEN"))
        .with_context(|| format!("no listener in {who}"))?;
    ensure!(
        listener["container_runtime"] == "docker"
            && listener["container_id"] == ID
            && listener["unit"] == short.as_str()
            && listener["pod_uid"].is_null(),
        "who: {listener}"
    );
    Ok(())
}
