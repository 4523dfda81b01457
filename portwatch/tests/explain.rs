//! `portwatch explain` as a user runs it: words or a pipe in, the exit
//! status that tells recognised from not, and the JSON shape. --no-checks
//! keeps it from depending on this machine; no root needed.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn explain(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .arg("explain")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portwatch");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_recognised_message_exits_0_and_an_unknown_one_1() {
    let (code, out, err) = explain(
        &[
            "--no-checks",
            "java.net.BindException:",
            "Address",
            "already",
            "in",
            "use:",
            "connect",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Java (Windows): java.net.BindException: Address already in use: connect"),
        "{out}"
    );
    assert!(out.contains("Fixes, most likely first\n  1. "), "{out}");
    let (code, out, _) = explain(
        &[
            "--no-checks",
            "curl: (7) Failed to connect to 10.0.0.5 port 8080: Connection refused",
        ],
        None,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("understood: port 8080, address 10.0.0.5, errno ECONNREFUSED (111)"),
        "{out}"
    );
}

#[test]
fn a_log_excerpt_can_be_piped_in() {
    let log = "Traceback (most recent call last):\n  File \"server.py\", line 4, in <module>\n    s.bind((\"0.0.0.0\", 8000))\nOSError: [Errno 98] Address already in use\n";
    for args in [&["--no-checks"][..], &["--no-checks", "-"]] {
        let (code, out, err) = explain(args, Some(log));
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            out.starts_with("Python: OSError: [Errno 98] Address already in use"),
            "{out}"
        );
        assert!(out.contains("about: address 0.0.0.0, port 8000"), "{out}");
    }
    let (code, _, err) = explain(&["--no-checks"], Some("   \n"));
    assert_eq!(code, 1);
    assert!(err.contains("nothing to explain"), "{err}");
}

#[test]
fn json_carries_the_explanation_as_data() {
    let (code, out, err) = explain(
        &[
            "--json",
            "--no-checks",
            "nginx: [emerg] bind() to 0.0.0.0:80 failed (98: Address already in use)",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["recognised"], true);
    assert_eq!(v["id"], "nginx-bind-failed");
    assert_eq!(v["side"], "bind");
    assert_eq!(v["condition"], "port_held");
    assert_eq!(v["errno"]["name"], "EADDRINUSE");
    assert_eq!(v["errno"]["number"], 98);
    assert_eq!(
        (v["address"].as_str(), v["port"].as_u64()),
        (Some("0.0.0.0"), Some(80))
    );
    for key in ["cause", "about_message"] {
        assert!(v[key].is_string(), "{key}: {v}");
    }
    for key in ["checks", "fixes", "myths", "findings"] {
        assert!(v[key].is_array(), "{key}: {v}");
    }
    assert!(v["fixes"][0].as_str().is_some_and(|f| !f.is_empty()));
}
