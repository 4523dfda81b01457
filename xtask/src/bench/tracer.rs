//! A tracer running while a workload does, and what it reported.

use std::{
    fs,
    io::{BufRead as _, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{Env, Mode};
use crate::util;

/// What a tracer reported at its end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub events: Option<u64>,
    pub lost: Option<u64>,
    /// portwatch only: (ring buffer, recursion, inferred).
    pub lost_by_reason: Option<(u64, u64, u64)>,
    /// portwatch only: records that crossed the ring buffer.
    pub ring_events: Option<u64>,
}

/// A tracer running while a workload does.
pub struct Tracer {
    child: Child,
    mode: Mode,
    out: PathBuf,
    err: PathBuf,
}

impl Tracer {
    pub fn start(env: &Env, mode: Mode, tag: &str) -> Result<Option<Tracer>> {
        let out = env.dir.join(format!("{tag}.out"));
        let err = env.dir.join(format!("{tag}.err"));
        let mut cmd = match mode {
            Mode::None => return Ok(None),
            Mode::Trace => {
                let mut c = env.netns.cmd(&env.portwatch);
                c.args(["trace", "--json"]);
                c
            }
            Mode::Aggregate => {
                let mut c = env.netns.cmd(&env.portwatch);
                c.args(["trace", "--summary-only", "--json"]);
                c
            }
            Mode::Serve => {
                // In the host's namespace, so that the scrape can reach it;
                // it watches every namespace, the benchmark's too.
                let mut c = Command::new(&env.portwatch);
                c.args(["serve", "--listen", SERVE_ADDR, "--interval", "1"]);
                c
            }
            Mode::Bpftrace => {
                let mut c = Command::new(env.bpftrace.as_ref().context("bpftrace")?);
                c.arg(env.dir.join("events.bt"));
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&err)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", util::show(&cmd)))?;
        let mut t = Tracer {
            child,
            mode,
            out,
            err,
        };
        // Wait until every probe is attached.
        let (file, marker) = match mode {
            Mode::Bpftrace => (&t.out, "Attaching"),
            _ => (&t.err, "portwatch: attached"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if fs::read_to_string(file).is_ok_and(|s| s.contains(marker)) {
                return Ok(Some(t));
            }
            if let Some(status) = t.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before attaching: {}",
                    mode.name(),
                    fs::read_to_string(&t.err).unwrap_or_default().trim()
                );
            }
            if Instant::now() > deadline {
                t.kill();
                bail!("{} did not attach within 60 s", mode.name());
            }
            sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime in seconds.
    pub fn cpu_s(&self) -> Option<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(ticks as f64 / hz)
    }

    pub fn hwm_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait for the summary, and read what the tracer reported.
    pub fn stop(mut self) -> Result<Report> {
        // The exporter says it in its metrics, scraped before it stops.
        let scraped = (self.mode == Mode::Serve).then(|| scrape(SERVE_ADDR));
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not stop within 120 s of SIGTERM", self.mode.name());
            }
            sleep(Duration::from_millis(20));
        }
        let err = fs::read_to_string(&self.err).unwrap_or_default();
        match self.mode {
            // Both portwatch modes end with the JSON summary (`--json`,
            // with `--summary-only` the only line).
            Mode::Trace | Mode::Aggregate => {
                let line = last_line(&self.out)?;
                summary(&line)
                    .with_context(|| format!("no JSON summary from portwatch: {}", err.trim()))
            }
            Mode::Bpftrace => {
                // One line per event, each starting with its timestamp.
                let out = fs::File::open(&self.out)?;
                let mut events = 0u64;
                let mut lost = 0u64;
                for line in std::io::BufReader::new(out).lines() {
                    let line = line.unwrap_or_default();
                    if line.as_bytes().first().is_some_and(u8::is_ascii_digit) {
                        events += 1;
                    }
                    lost += bpftrace_lost(&line);
                }
                lost += err.lines().map(bpftrace_lost).sum::<u64>();
                Ok(Report {
                    events: Some(events),
                    lost: Some(lost),
                    ..Report::default()
                })
            }
            Mode::Serve => {
                let text = scraped.context("no scrape")??;
                exposition(&text).with_context(|| {
                    format!("no portwatch_events_total in the scrape: {}", err.trim())
                })
            }
            Mode::None => Ok(Report::default()),
        }
    }
}

/// Where the benchmark's `portwatch serve` listens.
const SERVE_ADDR: &str = "127.0.0.1:19469";

/// GET /metrics, the body.
fn scrape(addr: &str) -> Result<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr)
        .with_context(|| format!("cannot reach portwatch serve on {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").context("no HTTP reply")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "scraping portwatch serve: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_owned())
}

/// Events and losses by reason from the exporter's counters.
fn exposition(text: &str) -> Option<Report> {
    let value = |prefix: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let reason = |r: &str| value(&format!("portwatch_lost_events_total{{reason=\"{r}\"}}"));
    let by = (
        reason("ring_buffer")?,
        reason("recursion")?,
        reason("inferred")? + reason("overflow").unwrap_or(0),
    );
    Some(Report {
        events: value("portwatch_events_total "),
        lost: Some(by.0 + by.1 + by.2),
        lost_by_reason: Some(by),
        ring_events: None,
    })
}

/// bpftrace reports perf-buffer overflow as "Lost N events".
fn bpftrace_lost(line: &str) -> u64 {
    line.split("Lost ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The last line of a file that may be gigabytes of events: read from
/// the end.
fn last_line(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut tail = 64 * 1024u64;
    loop {
        let from = len.saturating_sub(tail);
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.by_ref().read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let mut lines = text.trim_end().rsplit('\n');
        let last = lines.next().unwrap_or_default();
        // A whole line: another line before it, or the start of the file.
        if lines.next().is_some() || from == 0 {
            return Ok(last.to_owned());
        }
        tail *= 4;
    }
}

/// portwatch's JSON summary: events, losses by reason, ring records.
pub fn summary(line: &str) -> Option<Report> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["event"] != "summary" {
        return None;
    }
    let by = &v["lost_by_reason"];
    Some(Report {
        events: v["events"].as_u64(),
        lost: v["lost"].as_u64(),
        lost_by_reason: Some((
            by["ring_buffer"].as_u64()?,
            by["recursion"].as_u64()?,
            // Userspace's own losses: chains found broken, and pending
            // closes given up when its table was full (absent before).
            by["inferred"].as_u64()? + by["overflow"].as_u64().unwrap_or(0),
        )),
        ring_events: v["ring_events"].as_u64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_and_losses_from_the_exporter() {
        let text = "# TYPE portwatch_events counter\nportwatch_events_total 1200\n\
            portwatch_lost_events_total{reason=\"ring_buffer\"} 3\n\
            portwatch_lost_events_total{reason=\"recursion\"} 2\n\
            portwatch_lost_events_total{reason=\"inferred\"} 0\n\
            portwatch_lost_events_total{reason=\"overflow\"} 1\n";
        let r = exposition(text).expect("report");
        assert_eq!(r.events, Some(1200));
        assert_eq!(r.lost, Some(6));
        assert_eq!(r.lost_by_reason, Some((3, 2, 1)));
    }

    #[test]
    fn reads_the_summary_both_modes_end_with() {
        let line = r#"{"event":"summary","schema_version":1,"events":1800000,"lost":12,"ring_events":1799990,"lost_by_reason":{"ring_buffer":10,"recursion":0,"inferred":2},"processes":[]}"#;
        assert_eq!(
            summary(line),
            Some(Report {
                events: Some(1_800_000),
                lost: Some(12),
                lost_by_reason: Some((10, 0, 2)),
                ring_events: Some(1_799_990),
            })
        );
        assert_eq!(summary(r#"{"event":"state"}"#), None);
        assert_eq!(summary("summary: 3 events"), None);
    }

    #[test]
    fn the_last_line_is_found_from_the_end() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("out");
        let mut text = "x".repeat(200_000);
        text.push_str("\n{\"event\":\"summary\"}\n");
        fs::write(&path, &text).expect("write");
        assert_eq!(last_line(&path).expect("line"), "{\"event\":\"summary\"}");
        // One long line, no newline before it.
        fs::write(&path, "y".repeat(300_000)).expect("write");
        assert_eq!(last_line(&path).expect("line").len(), 300_000);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bpftrace_losses_are_summed() {
        assert_eq!(bpftrace_lost("Lost 371169 events"), 371_169);
        assert_eq!(bpftrace_lost("123 state 4 curl"), 0);
    }
}
