//! Harness for portwatch's kernel tests.
//!
//! Each test runs `portwatch trace --json` and a workload together inside a
//! fresh network namespace (`unshare -n`), so it has its own loopback, port
//! range and socket table, and `ss` there sees exactly the test's sockets.
//! The tests load real eBPF programs and need root; run them one at a time
//! (`cargo xtask test` does).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The portwatch binary under test: `$PORTWATCH_BIN`, else the workspace's
/// debug build (`cargo xtask test` builds it first).
pub fn portwatch_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PORTWATCH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("portwatch");
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build -p portwatch` (cargo xtask test does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Why a test cannot run here, if it cannot; the test prints it and passes
/// as skipped.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "kernel tests need root (they load eBPF programs and create network namespaces)".into(),
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists()
        && !Path::new("/sys/kernel/tracing/events/sock/inet_sock_set_state").exists()
        && !Path::new("/sys/kernel/debug/tracing/events/sock/inet_sock_set_state").exists()
    {
        // tracefs may be unmounted; portwatch mounts it. BTF absent as well
        // suggests a kernel too old for the state tracepoint.
        return Some("kernel lacks BTF and the sock:inet_sock_set_state tracepoint".into());
    }
    None
}

#[macro_export]
macro_rules! skip_unless_kernel {
    () => {
        if let Some(why) = $crate::skip_reason() {
            return $crate::skipped(&why);
        }
    };
}

/// Where every kernel test is expected to run (CI, the VM guests),
/// `PORTWATCH_NO_SKIP=1` makes a test that would skip fail instead: a skip
/// there means something is missing, not that the test passed.
pub const NO_SKIP_ENV: &str = "PORTWATCH_NO_SKIP";

/// Prints `SKIPPED: why` and passes, or fails where no skip is expected.
pub fn skipped(why: &str) -> Result<()> {
    if std::env::var_os(NO_SKIP_ENV).is_some_and(|v| v == "1") {
        bail!("this test would skip ({why}), but {NO_SKIP_ENV}=1 says it must run here");
    }
    eprintln!("SKIPPED: {why}");
    Ok(())
}

/// What a traced run produced.
#[derive(Debug)]
pub struct Run {
    pub events: Vec<Value>,
    pub stderr: String,
    pub exit_code: i32,
    /// What the workload printed (pids, errors).
    pub workload: String,
    /// `ss -tanH state time-wait` inside the namespace, right after the workload.
    pub ss_timewait: String,
}

impl Run {
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["event"] == kind)
    }

    pub fn summary(&self) -> Option<&Value> {
        self.events.iter().find(|e| e["event"] == "summary")
    }

    /// portwatch exited 0 and printed its summary.
    pub fn check_clean_exit(&self) -> Result<()> {
        anyhow::ensure!(
            self.exit_code == 0,
            "portwatch exited {}: {}",
            self.exit_code,
            self.stderr
        );
        anyhow::ensure!(self.summary().is_some(), "no summary: {}", self.stderr);
        Ok(())
    }

    /// The first `KEY=VALUE` token the workload printed (several may share
    /// a line).
    pub fn var(&self, key: &str) -> Option<u64> {
        self.vars(key).first().copied()
    }

    /// Every value of `KEY=VALUE` tokens the workload printed, in order
    /// (several may share a line).
    pub fn vars(&self, key: &str) -> Vec<u64> {
        self.workload
            .split_whitespace()
            .filter_map(|tok| tok.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .collect()
    }

    /// Appends this run's lost events by reason (ring buffer, recursion,
    /// inferred) to `$PORTWATCH_LOSS_LOG`, when set: the VM matrix reports
    /// what each kernel lost.
    pub fn log_losses(&self) {
        let (Some(path), Some(s)) = (std::env::var_os("PORTWATCH_LOSS_LOG"), self.summary()) else {
            return;
        };
        let by = &s["lost_by_reason"];
        let n = |k: &str| by[k].as_u64().unwrap_or(0);
        // portwatch's own overflow is a loss no kernel causes: with inferred.
        let line = format!(
            "{} {} {}\n",
            n("ring_buffer"),
            n("recursion"),
            n("inferred") + n("overflow")
        );
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }

    pub fn ss_timewait_count(&self) -> usize {
        self.ss_timewait
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }
}

/// A traced run in a fresh network namespace: `setup` (shell) runs first,
/// then portwatch starts with `trace_args` (where `$D` stands for the run's
/// scratch directory, also `$D` in the workload's environment) and, once it
/// has said `portwatch: attached`, the Python `workload` runs; then portwatch gets
/// SIGINT and prints its summary.
///
/// A run whose summary reports lost events cannot give exact answers, so it
/// is tried again, up to three times in all. Losses happen without ring
/// overflow too: the kernel skips a tracepoint program that would run while
/// it already runs on that CPU (a softirq on an interrupt's exit), and
/// portwatch reports those skips as lost; under qemu's emulation that is not
/// rare. [`traced_run_once`] is for tests that expect losses.
pub fn traced_run(setup: &str, trace_args: &[&str], workload_py: &str) -> Result<Run> {
    let mut tries = 1;
    loop {
        let run = traced_run_once(setup, trace_args, workload_py)?;
        run.log_losses();
        let lost = run.summary().and_then(|s| s["lost"].as_u64()).unwrap_or(0);
        if lost == 0 || tries == 3 {
            return Ok(run);
        }
        eprintln!("RETRY: the run reported {lost} lost events; running it again");
        tries += 1;
    }
}

/// Per-namespace TCP settings every test namespace starts with, so that a
/// TIME_WAIT socket lives its 60 s and `ss` counts what the workload made:
/// no reuse by a later connect (`tcp_tw_reuse` 2, the default, recycles a
/// loopback TIME_WAIT once a second has passed since its last segment, which
/// a slow emulated guest reaches between two connects: 2 of 7 gone in a
/// 6.12 guest), and no RST killing one (RFC 1337's protection, off by
/// default: a stray ACK drew a RST from a listener about 1 run in 100).
pub const STEADY_TIMEWAIT: &str = "echo 0 >/proc/sys/net/ipv4/tcp_tw_reuse
echo 1 >/proc/sys/net/ipv4/tcp_rfc1337";

/// One traced run, as [`traced_run`] describes, without retries.
pub fn traced_run_once(setup: &str, trace_args: &[&str], workload_py: &str) -> Result<Run> {
    let bin = portwatch_bin()?;
    let dir = tempfile::tempdir().context("temp dir")?;
    let d = dir.path();
    std::fs::write(d.join("workload.py"), workload_py)?;
    // `$D` in an argument is the run's scratch directory.
    let args = trace_args
        .iter()
        .map(|a| format!("'{}'", a.replace("$D", &d.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        r#"
set -u
ip link set lo up
{STEADY_TIMEWAIT}
{setup}
"$PW" trace --json {args} >"$D/trace.jsonl" 2>"$D/trace.err" &
pw=$!
for _ in $(seq 1 400); do
  grep -q '^portwatch: attached' "$D/trace.err" && break
  kill -0 $pw 2>/dev/null || break
  sleep 0.025
done
if ! grep -q '^portwatch: attached' "$D/trace.err"; then
  echo "portwatch did not attach:" >&2; cat "$D/trace.err" >&2; kill $pw 2>/dev/null; exit 97
fi
timeout 300 python3 "$D/workload.py" >"$D/workload.out" 2>&1 || {{ echo "workload failed:" >&2; cat "$D/workload.out" >&2; kill $pw; exit 98; }}
ss -tanH state time-wait >"$D/ss_tw.txt"
sleep 0.3
kill -INT $pw
wait $pw
echo $? >"$D/trace.rc"
"#
    );
    let out = Command::new("unshare")
        .args(["--net", "--", "bash", "-c", &script])
        .env("PW", &bin)
        .env("D", d)
        .output()
        .context("running unshare (util-linux)")?;
    if !out.status.success() {
        bail!(
            "namespace script failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap_or_default();
    let mut events = Vec::new();
    for (i, line) in read("trace.jsonl").lines().enumerate() {
        events.push(
            serde_json::from_str(line)
                .with_context(|| format!("trace.jsonl line {}: {line}", i + 1))?,
        );
    }
    Ok(Run {
        events,
        stderr: read("trace.err"),
        exit_code: read("trace.rc").trim().parse().unwrap_or(-1),
        workload: read("workload.out"),
        ss_timewait: read("ss_tw.txt"),
    })
}

/// Runs portwatch with `args` (no namespace) and returns (exit code, stderr).
pub fn run_portwatch(args: &[&str], as_nobody: bool) -> Result<(i32, String)> {
    let bin = portwatch_bin()?;
    let out = if as_nobody {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .output()
            .context("running setpriv (util-linux)")?
    } else {
        Command::new(&bin).args(args).output()?
    };
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// What a script run in a fresh network namespace left behind.
#[derive(Debug)]
pub struct NetnsRun {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    /// `$D`, the script's scratch directory, kept until the run is dropped.
    pub dir: tempfile::TempDir,
}

impl NetnsRun {
    /// A file the script wrote into `$D` (empty if it did not).
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// A JSON document the script wrote into `$D`.
    pub fn json(&self, name: &str) -> Result<Value> {
        let text = self.file(name);
        serde_json::from_str(&text).with_context(|| format!("{name} is not JSON: {text}"))
    }
}

/// Runs a bash `script` in a fresh network namespace (`unshare -n`) with
/// loopback up, so that per-namespace sysctls such as
/// `ip_local_port_range` and `ip_local_reserved_ports` start at their
/// defaults and the host's are never touched. `$PW` is the portwatch binary,
/// `$D` a scratch directory. Fails if the script does.
pub fn in_netns(script: &str) -> Result<NetnsRun> {
    in_netns_with(script, &[])
}

/// [`in_netns`] with `files` (name, content) written into `$D` first.
pub fn in_netns_with(script: &str, files: &[(&str, &str)]) -> Result<NetnsRun> {
    let bin = portwatch_bin()?;
    let dir = tempfile::tempdir().context("temp dir")?;
    // Readable by the unprivileged user some scripts switch to.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content)?;
    }
    let full = format!("set -eu\nip link set lo up\n{STEADY_TIMEWAIT}\n{script}\n");
    let out = Command::new("unshare")
        .args(["--net", "--", "bash", "-c", &full])
        .env("PW", &bin)
        .env("D", dir.path())
        .output()
        .context("running unshare (util-linux)")?;
    let run = NetnsRun {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit_code: out.status.code().unwrap_or(-1),
        dir,
    };
    if !out.status.success() {
        bail!(
            "namespace script failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            run.stdout,
            run.stderr
        );
    }
    Ok(run)
}

/// [`in_netns_with`], returning only what the script printed.
pub fn netns_script(script: &str, files: &[(&str, &str)]) -> Result<String> {
    in_netns_with(script, files).map(|r| r.stdout)
}

/// Makes sure `tool` is on PATH, installing Debian's `package` with
/// apt-get when it is not (nothing happens when it is there, as in CI,
/// whose `.ci/run` installs it first). Says why when it cannot: a test
/// then skips, or fails where it must run.
pub fn ensure_tool(tool: &str, package: &str) -> std::result::Result<(), String> {
    let found = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found() {
        return Ok(());
    }
    let install = |update: bool| {
        if update {
            let _ = Command::new("apt-get").arg("update").output();
        }
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null())
            .output()
    };
    for update in [false, true] {
        if install(update).is_ok_and(|o| o.status.success()) && found() {
            return Ok(());
        }
    }
    Err(format!(
        "{tool} is missing and `apt-get install {package}` did not provide it"
    ))
}

/// [`ensure_tool`] for a kernel test: returns the skip (or the failure,
/// where no skip is allowed) when the tool cannot be had.
#[macro_export]
macro_rules! need_tool {
    ($tool:expr, $package:expr) => {
        if let Err(why) = $crate::ensure_tool($tool, $package) {
            return $crate::skipped(&why);
        }
    };
}
