//! `portwatch record` + `portwatch history`: a recorded session in which a
//! process takes a port and exits, and history names it afterwards.

use anyhow::{ensure, Context, Result};
use integration_tests::{netns_script, skip_unless_kernel};
use serde_json::Value;

/// Starts the recorder on "$D/journal" in the namespace and waits until it
/// says it is attached.
const START_RECORDER: &str = r#"
"$PW" record --journal "$D/journal" 2>"$D/record.err" &
rec=$!
for _ in $(seq 1 400); do grep -q '^portwatch: attached' "$D/record.err" && break; kill -0 $rec 2>/dev/null || break; sleep 0.025; done
grep -q '^portwatch: attached' "$D/record.err" || { cat "$D/record.err" >&2; exit 97; }
"#;

fn json_lines(s: &str) -> Result<Vec<Value>> {
    s.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| l.to_owned()))
        .collect()
}

#[test]
fn history_names_the_process_that_listened_first_after_it_exited() -> Result<()> {
    skip_unless_kernel!();
    let script = format!(
        r#"{START_RECORDER}
python3 -c 'import os, socket; s = socket.socket(); s.bind(("0.0.0.0", 1433)); s.listen(); print("FIRST=%d" % os.getpid())'
python3 -c 'import os, socket; s = socket.socket(); s.bind(("0.0.0.0", 1433)); s.listen(); print("SECOND=%d" % os.getpid())'
sleep 0.3
kill -TERM $rec; wait $rec
echo "RECORD_RC=$?"
stat -c 'MODE %a %n' "$D/journal" "$D"/journal/seg-*
"$PW" history --journal "$D/journal" --port 1433 --boot 0 --first --json
"$PW" history --journal "$D/journal" --port 1433 --boot 0 --first
"#
    );
    let out = netns_script(&script, &[])?;
    let var = |k: &str| -> Result<u64> {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("{k} in:\n{out}"))
    };
    ensure!(var("RECORD_RC")? == 0, "{out}");
    let first = var("FIRST")?;
    ensure!(var("SECOND")? != first);
    let answer = json_lines(&out)?;
    ensure!(answer.len() == 1, "{out}");
    let a = &answer[0];
    ensure!(a["pid"] == first, "first taker must be {first}: {a}");
    ensure!(
        a["how"] == "listen" && a["sport"] == 1433 && a["comm"] == "python3",
        "{a}"
    );
    ensure!(a["boot_id"].as_str().is_some_and(|b| b.len() == 36), "{a}");
    ensure!(a["mono_ns"].as_u64().is_some(), "{a}");
    ensure!(
        out.contains("port 1433 was first taken at")
            && out.contains(&format!("by pid {first} (python3")),
        "{out}"
    );
    for line in out.lines().filter(|l| l.starts_with("MODE")) {
        let mode = line.split_whitespace().nth(1).context("mode")?;
        ensure!(
            mode == "700" || mode == "600",
            "journal must be private: {line}"
        );
    }
    Ok(())
}

#[test]
fn history_says_when_a_port_was_taken_as_an_ephemeral_port() -> Result<()> {
    skip_unless_kernel!();
    // The SQL Server story: the only ephemeral port is 1433, so a client's
    // outgoing connection takes it before the server starts.
    let script = format!(
        r#"sysctl -qw net.ipv4.ip_local_port_range="1433 1433"
{START_RECORDER}
python3 -c '
import os, socket
srv = socket.socket(); srv.bind(("127.0.0.1", 23082)); srv.listen()
c = socket.create_connection(("127.0.0.1", 23082))
print("CLIENT=%d" % os.getpid())
print("LOCAL=%d" % c.getsockname()[1])
'
sleep 0.3
kill -TERM $rec; wait $rec
"$PW" history --journal "$D/journal" --port 1433 --first --json
"#
    );
    let out = netns_script(&script, &[])?;
    ensure!(out.contains("LOCAL=1433"), "{out}");
    let client: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("CLIENT="))
        .and_then(|v| v.trim().parse().ok())
        .context("client")?;
    let answer = json_lines(&out)?;
    ensure!(answer.len() == 1, "{out}");
    let a = &answer[0];
    ensure!(a["how"] == "ephemeral" && a["pid"] == client, "{a}");
    ensure!(a["daddr"] == "127.0.0.1" && a["dport"] == 23082, "{a}");
    Ok(())
}

#[test]
fn history_survives_a_recorder_killed_mid_write() -> Result<()> {
    skip_unless_kernel!();
    let script = format!(
        r#"{START_RECORDER}
python3 -c '
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 23082)); srv.listen(1024)
for _ in range(3000):
    c = socket.create_connection(("127.0.0.1", 23082)); s, _ = srv.accept(); c.close(); s.close()
' &
load=$!
# Kill it once it has written records (a slow guest may take a while).
for _ in $(seq 1 200); do
  [ "$(cat "$D"/journal/seg-* 2>/dev/null | wc -c)" -gt 4096 ] && break
  sleep 0.05
done
sleep 0.2
kill -KILL $rec
wait $load
"$PW" history --journal "$D/journal" --json > "$D/h.json" 2> "$D/h.err"
echo "HISTORY_RC=$?"
echo "RECORDS=$(wc -l < "$D/h.json")"
cat "$D/h.err"
"#
    );
    let out = netns_script(&script, &[])?;
    ensure!(out.contains("HISTORY_RC=0"), "{out}");
    let records: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("RECORDS="))
        .and_then(|v| v.trim().parse().ok())
        .context("records")?;
    ensure!(
        records > 10,
        "records written before the kill survive: {out}"
    );
    // At most the record being written is damaged, at the end of the last segment.
    let damaged = out
        .lines()
        .filter(|l| l.contains("skipped damaged data"))
        .count();
    ensure!(damaged <= 1, "{out}");
    Ok(())
}

/// The wall clock is stepped forward an hour while the recorder runs (a
/// test hook steps only portwatch's reading of it, as NTP would the
/// machine's): an event before the step keeps its time, an event after it
/// has the stepped clock's time.
#[test]
fn a_clock_step_during_recording_moves_only_what_comes_after_it() -> Result<()> {
    skip_unless_kernel!();
    let script = format!(
        r#"export PORTWATCH_TEST_CLOCK_STEP="$D/step:3600"
{START_RECORDER}
python3 -c 'import socket, time; s = socket.socket(); s.bind(("0.0.0.0", 24101)); s.listen(); print("BEFORE=%d" % time.time_ns())' > "$D/before"
sleep 0.5
touch "$D/step"
# The recorder samples the clock every second.
sleep 2
python3 -c 'import socket, time; s = socket.socket(); s.bind(("0.0.0.0", 24102)); s.listen(); print("AFTER=%d" % time.time_ns())' > "$D/after"
sleep 0.3
kill -TERM $rec; wait $rec
for p in 24101 24102; do "$PW" history --journal "$D/journal" --port $p --first --json > "$D/h$p"; done
python3 - <<'PY'
import json, os
from datetime import datetime
d = os.environ["D"]
def recorded(port):
    t = json.load(open("%s/h%d" % (d, port)))["time"]
    whole, frac = t.rstrip("Z").split(".")
    secs = datetime.fromisoformat(whole + "+00:00").timestamp()
    return secs + int(frac) / 10 ** len(frac)
real = {{}}
for name in ("before", "after"):
    k, v = open("%s/%s" % (d, name)).read().strip().split("=")
    real[k] = int(v) / 1e9
print("DELTA_BEFORE_MS=%d" % round(1000 * (recorded(24101) - real["BEFORE"]) + 10_000_000))
print("DELTA_AFTER_MS=%d" % round(1000 * (recorded(24102) - real["AFTER"]) + 10_000_000))
PY
"#
    );
    let out = netns_script(&script, &[])?;
    // Offset by 10,000 s so that the printed numbers are never negative.
    let var = |k: &str| -> Result<i64> {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map(|v| v - 10_000_000)
            .with_context(|| format!("{k} in:\n{out}"))
    };
    let (before, after) = (var("DELTA_BEFORE_MS")?, var("DELTA_AFTER_MS")?);
    ensure!(
        before.abs() < 2_000,
        "the event before the step moved by {before} ms:\n{out}"
    );
    ensure!(
        (after - 3_600_000).abs() < 2_000,
        "the event after the step should read the stepped clock (+3600 s), it is {after} ms off real time:\n{out}"
    );
    Ok(())
}

/// A port already held when the recorder starts is "first seen since the
/// recorder started", with its owner from the start-up snapshot; the time
/// the recorder was stopped is named as a gap; the recorder's own records
/// never show up as events.
#[test]
fn a_port_held_before_the_recorder_started_is_first_seen_then() -> Result<()> {
    skip_unless_kernel!();
    let script = format!(
        r#"python3 -c 'import os, socket, time; s = socket.socket(); s.bind(("0.0.0.0", 1434)); s.listen(); print("HELD=%d" % os.getpid(), flush=True); time.sleep(60)' &
held=$!
for _ in $(seq 1 100); do ss -ltnH 'sport = :1434' | grep -q . && break; sleep 0.05; done
{START_RECORDER}
sleep 0.3
kill -TERM $rec; wait $rec
echo "RECORD_RC=$?"
{START_RECORDER}
python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 1435)); s.listen()'
sleep 0.3
kill -TERM $rec; wait $rec
kill $held
"$PW" history --journal "$D/journal" --port 1434 --boot 0 --first
"$PW" history --journal "$D/journal" --port 1435 --boot 0 --first
"$PW" history --journal "$D/journal" --port 1434 --boot 0 --first --json
echo LISTING
"$PW" history --journal "$D/journal" --boot 0 --json
"#
    );
    let out = netns_script(&script, &[])?;
    let held = out
        .lines()
        .find_map(|l| l.strip_prefix("HELD="))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .with_context(|| format!("HELD in:\n{out}"))?;
    ensure!(out.contains("RECORD_RC=0"), "{out}");
    ensure!(
        out.contains("port 1434 was first seen since the recorder started at")
            && out.contains(&format!("already held then by pid {held} (python3")),
        "{out}"
    );
    ensure!(!out.contains("port 1434 was first taken"), "{out}");
    // 1435 was taken while the second recorder ran: first taken, and the
    // time between the two recorders is a gap before it.
    ensure!(out.contains("port 1435 was first taken at"), "{out}");
    ensure!(out.contains("gap: the recorder was stopped from"), "{out}");
    ensure!(
        out.contains("s after boot: what happened earlier in boot"),
        "{out}"
    );
    let (answer, listing) = out.split_once("LISTING").context("listing")?;
    let a = json_lines(answer)?;
    ensure!(
        a.len() == 1 && a[0]["already_held_at_start"] == true,
        "{answer}"
    );
    ensure!(a[0]["pid"] == held && a[0]["how"] == "listen", "{answer}");
    let gaps = a[0]["gaps"].as_array().context("gaps")?;
    ensure!(gaps.iter().any(|g| g["gap"] == "not_recording"), "{answer}");
    // The listing is events only: no snapshot entry, no start or stop.
    for e in json_lines(listing)? {
        ensure!(e.get("mark").is_none() && e["sport"] != 1434, "{e}");
    }
    Ok(())
}
