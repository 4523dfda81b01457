//! The cross-built portwatch.exe under wine: what can be checked without
//! Windows. wine serves the IP Helper tables from the Linux host's sockets,
//! prints nothing for `netsh int ipv4 ...`, and has no working ETW consumer,
//! so these check that `who` sees a listener this test opened, that
//! `doctor` and `reserve --dry-run` work from what wine provides and say
//! what they could not read, and that `trace` fails with a clear message.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(180);

struct Wine<'a> {
    wine: &'a Path,
    dir: &'a Path,
}

impl Wine<'_> {
    fn run(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = if crate::util::which("nice").is_some() {
            let mut c = Command::new("nice");
            c.args(["-n", "19"]).arg(self.wine);
            c
        } else {
            Command::new(self.wine)
        };
        cmd.arg(self.dir.join("portwatch.exe"))
            .args(args)
            .current_dir(self.dir)
            .env("WINEPREFIX", self.dir.join("prefix"))
            .env("WINEDEBUG", "-all")
            // The test-only shim beside the exe, not wine's own DLL.
            .env("WINEDLLOVERRIDES", "bcryptprimitives=n")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.wine.display()))?;
        let start = Instant::now();
        while child.try_wait()?.is_none() {
            if start.elapsed() > TIMEOUT {
                let _ = child.kill();
                bail!(
                    "portwatch.exe {} did not finish within {TIMEOUT:?}",
                    args.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child.wait_with_output()?)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok_json(out: &Output, what: &str) -> Result<Value> {
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, text(&out.stderr));
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{what} printed no JSON: {}", text(&out.stdout)))
}

fn help(w: &Wine) -> Result<()> {
    let out = w.run(&["--help"])?;
    let stdout = text(&out.stdout);
    if !out.status.success() || !stdout.contains("Usage: portwatch.exe") {
        bail!("--help: {} {stdout} {}", out.status, text(&out.stderr));
    }
    Ok(())
}

fn who(w: &Wine, listener: &TcpListener) -> Result<()> {
    let port = listener.local_addr()?.port();
    let v = ok_json(&w.run(&["who", &port.to_string(), "--json"])?, "who --json")?;
    let sockets = v["sockets"].as_array().context("no sockets array")?;
    let found = sockets.iter().any(|s| {
        s["state"] == "LISTEN"
            && s["sport"] == port
            && s["saddr"] == "127.0.0.1"
            && s["protocol"] == "tcp"
            && s["family"] == "ipv4"
    });
    if v["port"] != port || !found {
        bail!("who {port} --json does not list the test's listener: {v}");
    }
    // A port nobody holds lists nothing.
    let free = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let v = ok_json(&w.run(&["who", &free.to_string(), "--json"])?, "who --json")?;
    if v["sockets"].as_array().is_none_or(|s| !s.is_empty()) {
        bail!("who {free} (a closed port) lists sockets: {v}");
    }
    Ok(())
}

fn doctor(w: &Wine, listener: &TcpListener) -> Result<()> {
    let port = listener.local_addr()?.port();
    let v = ok_json(&w.run(&["doctor", "--json"])?, "doctor --json")?;
    if v["capabilities"]["collector"] != "etw" || !v["findings"].is_array() {
        bail!("doctor --json lacks the Windows capabilities or findings: {v}");
    }
    let listeners = v["port_config"]["listeners"]
        .as_array()
        .context("no listeners")?;
    if !listeners.iter().any(|l| l["port"] == port) {
        bail!("doctor does not list the test's listener on {port}: {v}");
    }
    // What wine's netsh does not print is said, with the command to run.
    let said = |what: &str| {
        v["port_config"][format!("{what}_error")].is_string() || !v["port_config"][what].is_null()
    };
    if !said("dynamic_range") || !said("excluded_ranges") {
        bail!("doctor neither reads nor reports the port ranges: {v}");
    }
    for key in ["max_user_port", "tcp_timed_wait_delay"] {
        if v["port_config"][key].is_null() {
            bail!("doctor did not report {key} from the registry: {v}");
        }
    }
    Ok(())
}

fn reserve(w: &Wine) -> Result<()> {
    let out = w.run(&["reserve", "1433", "--dry-run"])?;
    let stdout = text(&out.stdout);
    let cmd = "netsh int ipv4 add excludedportrange protocol=tcp startport=1433 numberofports=1 store=persistent";
    if !out.status.success()
        || !stdout.contains("dry run: nothing is changed")
        || !stdout.contains(cmd)
    {
        bail!(
            "reserve --dry-run: {} {stdout} {}",
            out.status,
            text(&out.stderr)
        );
    }
    Ok(())
}

fn trace(w: &Wine) -> Result<()> {
    let out = w.run(&["trace", "--duration", "1"])?;
    let stderr = text(&out.stderr);
    let clear = stderr.contains("ETW is unavailable") || stderr.contains("needs an administrator");
    if out.status.success() || !clear || stderr.contains("portwatch: attached") {
        bail!(
            "trace under wine should fail before attaching, saying why: {} stdout={} stderr={stderr}",
            out.status,
            text(&out.stdout)
        );
    }
    Ok(())
}

fn install_service(w: &Wine) -> Result<()> {
    let out = w.run(&["install-service", "--dry-run"])?;
    let stdout = text(&out.stdout);
    let key = r"reg add HKLM\SYSTEM\CurrentControlSet\Control\WMI\Autologger\portwatch-boot";
    if !out.status.success() || !stdout.contains(key) || !stdout.contains(r"portwatch.etl") {
        bail!(
            "install-service --dry-run: {} {stdout} {}",
            out.status,
            text(&out.stderr)
        );
    }
    Ok(())
}

pub fn run(wine: &Path, dir: &Path) -> Result<()> {
    let w = Wine { wine, dir };
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot open the test listener")?;
    let checks: [(&str, &dyn Fn() -> Result<()>); 6] = [
        ("--help", &|| help(&w)),
        ("who PORT --json sees a loopback listener", &|| {
            who(&w, &listener)
        }),
        ("doctor --json", &|| doctor(&w, &listener)),
        ("reserve --dry-run", &|| reserve(&w)),
        ("trace fails clearly without ETW", &|| trace(&w)),
        ("install-service --dry-run", &|| install_service(&w)),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in checks {
        match check() {
            Ok(()) => {
                passed += 1;
                println!("wine: ok {name}");
            }
            Err(e) => {
                failed += 1;
                println!("wine: FAILED {name}: {e:#}");
            }
        }
    }
    println!("wine: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} wine tests failed; see above");
    }
    Ok(())
}
