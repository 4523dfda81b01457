//! `portwatch install-service`: installs and enables the boot-time recorder.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::cli::InstallServiceArgs;

/// The unit in the repository (dist/), with ExecStart filled in at install.
pub const UNIT_TEMPLATE: &str = include_str!("../../../dist/portwatch-record.service");
pub const UNIT_NAME: &str = "portwatch-record.service";
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// The unit text for this binary and journal folder.
pub fn render_unit(exe: &Path, journal: &Path) -> String {
    UNIT_TEMPLATE
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!(
                    "ExecStart={} record --journal {}",
                    exe.display(),
                    journal.display()
                )
            } else if l.starts_with("RequiresMountsFor=") {
                format!("RequiresMountsFor={}", journal.display())
            } else if l.starts_with("ReadWritePaths=") {
                // ProtectSystem=strict: the journal is the one place written.
                format!("ReadWritePaths={}", journal.display())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .context("cannot run systemctl: is this a systemd machine?")?;
    if !status.success() {
        bail!("`systemctl {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn run(args: InstallServiceArgs) -> anyhow::Result<()> {
    let exe = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this portwatch binary's path")?,
    };
    // The unit's sandbox (PrivateTmp=, ProtectHome=) hides these: systemd
    // could not even start the binary (status 203/EXEC).
    let hidden = ["/tmp", "/var/tmp", "/home", "/root", "/run/user"]
        .iter()
        .find(|p| exe.starts_with(p));
    if let Some(p) = hidden {
        let what = format!(
            "{} is under {p}, which the unit's sandbox hides from the service (PrivateTmp=, ProtectHome=); copy portwatch to /usr/local/bin and install from there, or pass --binary",
            exe.display()
        );
        if !args.dry_run {
            bail!("{what}");
        }
        eprintln!("portwatch: warning: {what}");
    } else if exe.components().any(|c| c.as_os_str() == "target") {
        eprintln!(
            "portwatch: warning: the unit will run {} — a build folder; copy portwatch to /usr/local/bin and install from there, or pass --binary",
            exe.display()
        );
    }
    let unit = render_unit(&exe, &args.journal);
    let path = PathBuf::from(&args.unit_dir).join(UNIT_NAME);
    let mut enable = vec!["enable"];
    if args.now {
        enable.push("--now");
    }
    enable.push(UNIT_NAME);
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        writeln!(out, "would write {}:", path.display())?;
        write!(out, "{unit}")?;
        writeln!(out, "would run: systemctl daemon-reload")?;
        writeln!(out, "would run: systemctl {}", enable.join(" "))?;
        return Ok(());
    }
    if !crate::source::linux::capabilities().is_root() {
        bail!("installing a systemd unit needs root: run `sudo portwatch install-service` (or add --dry-run to see what it would do)");
    }
    std::fs::write(&path, &unit).with_context(|| format!("cannot write {}", path.display()))?;
    systemctl(&["daemon-reload"])?;
    systemctl(&enable)?;
    writeln!(
        out,
        "installed {} and enabled it: the recorder starts at the next boot{}; query it with `portwatch history --journal {}`",
        path.display(),
        if args.now { " and is running now" } else { " (add --now to start it at once)" },
        args.journal.display()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_starts_before_the_network_and_runs_this_binary() {
        let unit = render_unit(Path::new("/opt/pw/portwatch"), Path::new("/srv/pwj"));
        assert!(unit.contains("\nExecStart=/opt/pw/portwatch record --journal /srv/pwj\n"));
        assert!(unit.contains("\nRequiresMountsFor=/srv/pwj\n"));
        assert!(unit.contains("\nReadWritePaths=/srv/pwj\n"));
        assert!(unit.contains("\nDefaultDependencies=no\n"));
        assert!(unit.contains("Before=network-pre.target"));
        assert!(unit.contains("\nType=notify\n"));
        assert_eq!(unit.matches("ExecStart=").count(), 1);
    }

    /// systemd could not start a binary the sandbox hides (203/EXEC, as a
    /// boot test from a CI clone under /tmp showed): refused, saying why.
    #[test]
    fn a_binary_the_sandbox_hides_is_refused() {
        for hidden in [
            "/tmp/ci/target/debug/portwatch",
            "/home/alice/bin/portwatch",
        ] {
            let dir = tempfile::tempdir().expect("tmp");
            let args = InstallServiceArgs {
                dry_run: false,
                now: false,
                journal: PathBuf::from("/var/lib/portwatch"),
                binary: Some(PathBuf::from(hidden)),
                unit_dir: dir.path().to_string_lossy().into_owned(),
            };
            let err = run(args).expect_err(hidden).to_string();
            assert!(
                err.contains("PrivateTmp=") && err.contains("/usr/local/bin"),
                "{err}"
            );
            assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none());
        }
    }
}
