//! The boot-time unit's sandbox, as `install-service` renders it: exposure at
//! most 4.0 by `systemd-analyze security --offline=true`, a bounded start
//! timeout and a file-descriptor limit. That the recorder still works under
//! every directive is checked at a real boot (`cargo xtask vm-test --hooks
//! boot`).

use std::process::Command;

fn rendered_unit(dir: &std::path::Path) -> std::path::PathBuf {
    use portwatch::cmd::install_service::render_unit;
    let unit = render_unit(
        std::path::Path::new("/usr/local/bin/portwatch"),
        std::path::Path::new("/var/lib/portwatch"),
    );
    let path = dir.join("portwatch-record.service");
    std::fs::write(&path, unit).expect("write unit");
    path
}

/// `→ Overall exposure level for portwatch-record.service: 3.2 OK`
fn exposure(said: &str) -> Option<f64> {
    said.lines()
        .find_map(|l| l.split("exposure level for").nth(1))?
        .split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_unit_is_sandboxed_to_an_exposure_of_at_most_4() {
    let version = Command::new("systemd-analyze").arg("--version").output();
    let Ok(version) = version else {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    // --offline arrived in systemd 250.
    let v: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if v < 250 {
        eprintln!("SKIPPED: systemd-analyze {v} has no --offline");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let unit = rendered_unit(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&out.stdout);
    let level = exposure(&said).unwrap_or_else(|| panic!("no exposure figure in: {said}"));
    assert!(level <= 4.0, "exposure {level} is over 4.0:\n{said}");

    let text = std::fs::read_to_string(&unit).expect("unit");
    for needed in [
        "\nTimeoutStartSec=",
        "\nLimitNOFILE=",
        "\nNoNewPrivileges=yes\n",
        "\nProtectSystem=strict\n",
        "\nReadWritePaths=/var/lib/portwatch\n",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed:?}");
    }
}

#[test]
fn reads_the_exposure_figure() {
    assert_eq!(
        exposure("\n→ Overall exposure level for portwatch-record.service: 3.2 OK 🙂\n"),
        Some(3.2)
    );
    assert_eq!(exposure("nothing"), None);
}
