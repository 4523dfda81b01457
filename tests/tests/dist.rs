//! What dist/ ships for fleets, validated by the tools that will read it:
//! the Prometheus alerting rules by `promtool check rules` and their unit
//! tests by `promtool test rules`; the DaemonSet and Service by
//! kubernetes-validate (PyPI) against the Kubernetes schemas, strictly.
//! No root needed once the tools are installed (`.ci/run` installs them;
//! these tests install what is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// kubernetes-validate's version, which carries the newest schemas it knows.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("dist"))
        .unwrap_or_default()
}

/// Runs `cmd` in `dir`; its output, or why it failed.
fn run(dir: &Path, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "{cmd:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    if let Err(why) = integration_tests::ensure_tool("promtool", "prometheus") {
        return integration_tests::skipped(&why);
    }
    let dir = dist().join("prometheus");
    let checked = run(
        &dir,
        Command::new("promtool").args(["check", "rules", "portwatch-rules.yml"]),
    )?;
    ensure!(checked.contains("SUCCESS: 4 rules found"), "{checked}");
    run(
        &dir,
        Command::new("promtool").args(["test", "rules", "portwatch-rules.test.yml"]),
    )?;
    Ok(())
}

#[test]
fn the_daemonset_and_service_match_the_kubernetes_schemas() -> Result<()> {
    let have = || {
        Command::new("kubernetes-validate")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", KUBERNETES_VALIDATE])
            .status();
    }
    if !have() {
        return integration_tests::skipped(&format!(
            "kubernetes-validate is missing and `pip install {KUBERNETES_VALIDATE}` did not provide it"
        ));
    }
    let dir = dist().join("kubernetes");
    // The newest schemas, and an older release still in wide use.
    for version in ["1.37.0", "1.28.0"] {
        let out = run(
            &dir,
            Command::new("kubernetes-validate").args(["--strict", "-k", version, "portwatch.yaml"]),
        )?;
        for kind in ["namespace", "serviceaccount", "daemonset", "service"] {
            ensure!(
                out.contains(&format!("passed for resource {kind}/portwatch")),
                "{kind} not validated against {version}:\n{out}"
            );
        }
    }
    Ok(())
}
