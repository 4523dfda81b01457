//! The boot-time unit: `install-service --dry-run` output, checked by
//! `systemd-analyze verify`.

use std::process::Command;

fn dry_run(extra: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .args(["install-service", "--dry-run"])
        .args(extra)
        .output()
        .expect("run portwatch");
    assert!(out.status.success());
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The unit text between "would write ...:" and the first "would run".
fn unit_of(out: &str) -> String {
    out.lines()
        .skip(1)
        .take_while(|l| !l.starts_with("would run"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn dry_run_prints_the_unit_and_the_commands_and_changes_nothing() {
    let (out, err) = dry_run(&["--journal", "/srv/journal"]);
    assert!(out.starts_with("would write /etc/systemd/system/portwatch-record.service:\n"));
    assert!(out.contains(&format!(
        "ExecStart={} record --journal /srv/journal\n",
        env!("CARGO_BIN_EXE_portwatch")
    )));
    assert!(out.contains("would run: systemctl daemon-reload\n"));
    assert!(out.contains("would run: systemctl enable portwatch-record.service\n"));
    // A checkout under /tmp or /home (a CI clone) gets the stronger warning:
    // the unit's sandbox would hide the binary.
    assert!(
        err.contains("build folder") || err.contains("sandbox hides"),
        "warns about a binary in target/: {err}"
    );
    let (now, _) = dry_run(&["--now", "--binary", "/usr/local/bin/portwatch"]);
    assert!(now.contains("systemctl enable --now portwatch-record.service"));
    assert!(
        now.contains("ExecStart=/usr/local/bin/portwatch record --journal /var/lib/portwatch\n")
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (out, _) = dry_run(&["--journal", dir.path().to_str().expect("utf8")]);
    let unit = dir.path().join("portwatch-record.service");
    std::fs::write(&unit, unit_of(&out)).expect("write unit");
    // The man pages its Documentation= names are installed by the package
    // (whose test verifies the installed unit with them); not here.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{said}");
    assert!(
        !said.contains("portwatch-record.service"),
        "warnings about the unit: {said}"
    );

    // The check can fail: a unit pointing at a missing binary does not verify.
    let (bad, _) = dry_run(&["--binary", "/nonexistent/portwatch"]);
    std::fs::write(&unit, unit_of(&bad)).expect("write unit");
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    assert!(!verify.status.success());
}

#[test]
fn the_unit_points_at_real_documentation() {
    let (out, _) = dry_run(&[]);
    let doc = out
        .lines()
        .find_map(|l| l.strip_prefix("Documentation="))
        .expect("a Documentation= line");
    assert!(!doc.contains("example.invalid"), "{doc}");
    // Man pages that `portwatch manpages` writes (the package installs them).
    let dir = tempfile::tempdir().expect("tmp");
    let pages = Command::new(env!("CARGO_BIN_EXE_portwatch"))
        .args(["manpages", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run portwatch");
    assert!(pages.status.success());
    for page in doc.split_whitespace() {
        let name = page
            .strip_prefix("man:")
            .and_then(|p| p.strip_suffix("(1)"))
            .unwrap_or_else(|| panic!("{page} is not a man page of section 1"));
        assert!(
            dir.path().join(format!("{name}.1")).exists(),
            "{page} is not one of portwatch's man pages"
        );
    }
}
