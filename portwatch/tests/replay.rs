//! Attribution's answers, filters, aggregation and both output formats,
//! checked from a recorded trace (tests/fixtures/session.jsonl: a real
//! `portwatch trace --json --port 1433` of a bind conflict, four TIME_WAIT
//! entries and an exhausted 8-port range). No root needed.

use std::process::Command;

use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/session.jsonl");

fn replay(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .args(["trace", "--replay", FIXTURE])
        .args(args)
        .output()
        .expect("run portwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn fixture_events() -> Vec<String> {
    std::fs::read_to_string(FIXTURE)
        .expect("fixture")
        .lines()
        .filter(|l| !l.contains("\"event\":\"summary\""))
        .map(str::to_owned)
        .collect()
}

/// Replays go through attribution again: every value the recording holds
/// comes back unchanged, and attribution may add what it derives from the
/// chain of events (the `side` of each socket).
#[test]
fn json_replay_reproduces_every_recorded_value() {
    let (code, out, err) = replay(&["--json"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let (summary, events) = lines.split_last().expect("output");
    let recorded = fixture_events();
    assert_eq!(events.len(), recorded.len());
    for (got, want) in events.iter().zip(&recorded) {
        let got: serde_json::Map<String, Value> = serde_json::from_str(got).expect("json");
        let want: serde_json::Map<String, Value> = serde_json::from_str(want).expect("json");
        for (k, v) in &want {
            assert_eq!(got.get(k), Some(v), "{k} in {want:?}");
        }
        // Keys newer than the recording: null, but for the side, derived again.
        for (k, v) in got.iter().filter(|(k, _)| !want.contains_key(*k)) {
            assert!(k == "side" || v.is_null(), "{k}: {v}");
        }
    }
    // Replaying the replay changes nothing at all.
    let dir = tempfile::tempdir().expect("tmp");
    let again = dir.path().join("again.jsonl");
    std::fs::write(&again, &out).expect("write");
    let out2 = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .args(["trace", "--replay"])
        .arg(&again)
        .arg("--json")
        .output()
        .expect("run");
    let out2 = String::from_utf8_lossy(&out2.stdout).into_owned();
    let lines2: Vec<&str> = out2.lines().collect();
    assert_eq!(&lines2[..lines2.len() - 1], events);
    assert!(summary.contains("\"event\":\"summary\""));
}

#[test]
fn every_event_follows_the_schema() {
    let (_, out, _) = replay(&["--json"]);
    let kinds = [
        "state", "bind", "connect", "listen", "timewait", "lost", "summary",
    ];
    let states = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    for ev in json_lines(&out) {
        let kind = ev["event"].as_str().expect("event name");
        assert!(kinds.contains(&kind), "{ev}");
        let time = ev["time"].as_str().expect("time");
        assert_eq!(time.len(), "2026-11-23T22:08:36.538565956Z".len(), "{time}");
        assert!(time.ends_with('Z'));
        if kind == "summary" {
            continue;
        }
        for key in [
            "pid",
            "tid",
            "comm",
            "uid",
            "family",
            "protocol",
            "saddr",
            "sport",
            "daddr",
            "dport",
            "old_state",
            "new_state",
            "ret",
            "errno",
        ] {
            assert!(ev.get(key).is_some(), "{key} missing in {ev}");
        }
        assert!(ev["family"].is_null() || ev["family"] == "ipv4" || ev["family"] == "ipv6");
        for key in ["old_state", "new_state"] {
            assert!(
                ev[key].is_null() || states.contains(&ev[key].as_str().unwrap_or("")),
                "{ev}"
            );
        }
        match ev["ret"].as_i64() {
            Some(r) if r < 0 => assert!(ev["errno"].as_str().is_some_and(|e| e.starts_with('E'))),
            _ => assert!(ev["errno"].is_null(), "{ev}"),
        }
    }
}

#[test]
fn summary_charges_each_problem_to_its_process() {
    let (_, out, _) = replay(&["--json"]);
    let all = json_lines(&out);
    let summary = all.last().expect("summary");
    let procs = summary["processes"].as_array().expect("processes");
    let client = procs
        .iter()
        .find(|p| p["timewait"] == 4)
        .expect("client with 4 TIME_WAIT");
    assert_eq!(client["connect_failures"][0]["errno"], "EADDRNOTAVAIL");
    assert_eq!(client["connect_failures"][0]["dport"], 1433);
    assert_eq!(client["connect_failures"][0]["count"], 1);
    assert_eq!(client["timewait_destinations"][0]["dport"], 1433);
    let binder = procs
        .iter()
        .find(|p| p["bind_failures"].as_array().is_some_and(|b| !b.is_empty()))
        .expect("failed binder");
    assert_eq!(binder["bind_failures"][0]["errno"], "EADDRINUSE");
    assert_eq!(binder["bind_failures"][0]["port"], 1433);
    assert_ne!(binder["pid"], client["pid"]);
    let dest = &summary["timewait_destinations"][0];
    assert_eq!(dest["timewait_entered_60s"], 4);
    // A replay has no live socket table: the pools say they cannot be counted.
    let pool = &summary["pools"][0];
    assert_eq!(pool["dport"], 1433);
    assert!(pool["error"].is_string(), "{pool}");
}

#[test]
fn errors_flag_prints_only_failures_but_summary_counts_all() {
    let (code, out, _) = replay(&["--json", "--errors"]);
    assert_eq!(code, 0);
    let all = json_lines(&out);
    let (summary, events) = all.split_last().expect("output");
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(events
        .iter()
        .any(|e| e["errno"] == "EADDRINUSE" && e["holder"]["state"] == "LISTEN"));
    assert!(events
        .iter()
        .any(|e| e["errno"] == "EADDRNOTAVAIL" && e["dport"] == 1433));
    assert!(summary["events"].as_u64().unwrap_or(0) > 2);
}

#[test]
fn port_pid_and_comm_filters_select_events() {
    let (_, out, _) = replay(&["--json", "--port", "9"]);
    assert_eq!(json_lines(&out).len(), 1, "only the summary");
    let (_, out, _) = replay(&["--json", "--comm", "nginx"]);
    assert_eq!(json_lines(&out).len(), 1);
    let (_, all, _) = replay(&["--json"]);
    let pid = json_lines(&all)
        .iter()
        .find(|e| e["event"] == "timewait")
        .map(|e| e["pid"].as_u64().expect("pid"))
        .expect("a timewait");
    let (_, out, _) = replay(&["--json", "--pid", &pid.to_string()]);
    let evs = json_lines(&out);
    assert!(evs.len() > 4);
    assert!(evs
        .iter()
        .all(|e| e["event"] == "summary" || e["pid"] == pid));
}

#[test]
fn text_output_is_aligned_and_names_the_holder() {
    let (code, out, _) = replay(&["--color", "never"]);
    assert_eq!(code, 0);
    assert!(!out.contains('\x1b'), "no colour when asked");
    let mut lines = out.lines();
    let header = lines.next().expect("header");
    assert!(header.starts_with("TIME") && header.contains("LOCAL -> REMOTE"));
    let event_col = header.find("EVENT").expect("EVENT column");
    let conflict = out
        .lines()
        .find(|l| l.contains("EADDRINUSE"))
        .expect("bind conflict line");
    assert_eq!(&conflict[event_col..event_col + 4], "bind");
    assert!(conflict.contains("held by python3["), "{conflict}");
    assert!(conflict.contains("tcp LISTEN 127.0.0.1:1433"), "{conflict}");
    assert!(out.contains("FIN_WAIT2 -> TIME_WAIT"));
    assert!(out.contains("summary: "));
    assert!(
        out.contains("connect 127.0.0.1:1433 EADDRNOTAVAIL x1"),
        "{out}"
    );
    assert!(out.contains("bind :1433 EADDRINUSE x1"));
    assert!(
        out.contains("TIME_WAIT entered towards 127.0.0.1:1433: 4 in the last 60s"),
        "{out}"
    );
    let (_, coloured, _) = replay(&["--color", "always"]);
    assert!(coloured.contains("\x1b["), "colour when asked");
}

#[test]
fn summary_only_prints_just_the_summary() {
    let (_, out, _) = replay(&["--json", "--summary-only"]);
    let all = json_lines(&out);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["event"], "summary");
}

#[test]
fn a_bad_recording_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"event\":\"bind\"}\nnot json\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .args(["trace", "--replay"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1") && err.contains("portwatch trace --json"),
        "{err}"
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .args(["trace", "--replay", "/nonexistent/file"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot open the recording"));
}

#[test]
fn the_summary_keeps_the_recorded_runs_wall_time() {
    // Two events milliseconds apart, in a run the recording says lasted
    // 5 s until the first of them.
    let events = fixture_events();
    let first: Value = serde_json::from_str(&events[0]).expect("event");
    let end = first["time"].as_str().expect("time");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run.jsonl");
    let summary = serde_json::json!({
        "event": "summary", "time": end, "duration_s": 5.0, "events": 2, "lost": 0,
    });
    std::fs::write(&path, format!("{}\n{}\n{summary}\n", events[0], events[1])).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .args(["trace", "--json", "--summary-only", "--replay"])
        .arg(&path)
        .output()
        .expect("run portwatch");
    let out = String::from_utf8_lossy(&out.stdout);
    let summary = json_lines(&out).pop().expect("summary");
    let d = summary["duration_s"].as_f64().expect("duration_s");
    assert!((5.0..5.5).contains(&d), "{summary}");
    assert_eq!(summary["watched"]["ports"], serde_json::json!([]));
}

#[test]
fn a_comm_longer_than_the_kernel_keeps_is_cut_with_a_warning() {
    // 'python3' padded past 15 bytes: cut back, it matches the recording.
    let (code, out, err) = replay(&["--json", "--comm", "python3456789012345"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("--comm python3456789012345 is longer than the 15 bytes"),
        "{err}"
    );
    assert!(err.contains("matching `python345678901`"), "{err}");
    let (_, out_short, _) = replay(&["--json", "--comm", "python3"]);
    assert_ne!(out_short.lines().count(), 1, "python3's events are there");
    assert_eq!(out.lines().count(), 1, "only the summary: {out}");
}
