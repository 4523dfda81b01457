//! apt for the VM matrix: the host's, or a private configuration for a
//! Debian suite the host does not list (bullseye's 5.10).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};

use crate::util;

/// apt-get/apt-cache, with one `apt-get update` allowed per xtask run when a
/// lookup or download fails (stale or missing package lists).
#[derive(Default)]
pub struct Apt {
    updated: std::cell::Cell<bool>,
    /// apt's own configuration, or a private one for another suite.
    private: Option<Private>,
}

/// A Debian suite the host's apt does not list, with its own sources,
/// package lists and cache under target/vm, so that the host's apt
/// configuration is never touched.
struct Private {
    suite: &'static str,
    dir: PathBuf,
}

/// Which kernel series come from which Debian suite: Debian 11 carries 5.10.
const SUITES: &[(&str, &str)] = &[("5.10", "bullseye")];

impl Apt {
    /// The apt that carries kernel `spec`: the host's for bookworm's 6.1
    /// and 6.12, a private one for older suites.
    pub fn for_kernel(vm_dir: &Path, spec: &str) -> Result<Apt> {
        let Some((_, suite)) = SUITES
            .iter()
            .find(|(series, _)| spec == *series || spec.starts_with(&format!("{series}.")))
        else {
            return Ok(Apt::default());
        };
        let dir = vm_dir.join(format!("apt-{suite}"));
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        fs::write(
            dir.join("sources.list"),
            format!(
                "deb [signed-by={keyring}] http://deb.debian.org/debian {suite} main\n\
                 deb [signed-by={keyring}] http://deb.debian.org/debian-security {suite}-security main\n"
            ),
        )?;
        Ok(Apt {
            updated: std::cell::Cell::new(false),
            private: Some(Private { suite, dir }),
        })
    }

    /// `apt-get`/`apt-cache` pointed at this apt's configuration.
    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        if let Some(p) = &self.private {
            let d = p.dir.display();
            cmd.args([
                "-o",
                &format!("Dir::Etc::SourceList={d}/sources.list"),
                "-o",
                &format!("Dir::Etc::SourceParts={d}/none"),
                "-o",
                &format!("Dir::State::Lists={d}/lists"),
                "-o",
                &format!("Dir::Cache={d}/cache"),
            ]);
        }
        cmd
    }

    /// Whether this apt has package lists yet (a private one starts without).
    fn has_lists(&self) -> bool {
        match &self.private {
            None => true,
            Some(p) => fs::read_dir(p.dir.join("lists"))
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
                })
                .unwrap_or(false),
        }
    }

    fn update_once(&self) -> bool {
        if self.updated.replace(true) {
            return false;
        }
        match &self.private {
            Some(p) => eprintln!(
                "vm-test: fetching {}'s package lists into {}",
                p.suite,
                p.dir.display()
            ),
            None => eprintln!("vm-test: refreshing package lists (apt-get update)"),
        }
        let ok = util::output(
            self.command("apt-get")
                .args(["update", "-q"])
                .stdin(Stdio::null()),
        )
        .map_err(|e| eprintln!("vm-test: apt-get update failed: {e:#}"))
        .is_ok();
        ok
    }

    /// The `Depends:` field of a package's candidate version, or None when
    /// apt does not know it. `refresh`: try `apt-get update` when it does not
    /// (for packages that must exist).
    pub fn depends(&self, pkg: &str, refresh: bool) -> Option<String> {
        if !self.has_lists() {
            self.update_once();
        }
        for _ in 0..2 {
            let out =
                util::output(
                    self.command("apt-cache")
                        .args(["show", "--no-all-versions", pkg]),
                );
            if let Ok(text) = out {
                if let Some(deps) = text.lines().find_map(|l| l.strip_prefix("Depends:")) {
                    return Some(deps.trim().to_string());
                }
                if !text.trim().is_empty() {
                    return Some(String::new());
                }
            }
            if !refresh || !self.update_once() {
                break;
            }
        }
        None
    }

    /// `apt-get download pkg` into `dir`; retries once after refreshing the
    /// package lists. Returns the .deb.
    pub fn download(&self, pkg: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut last_err = None;
        for attempt in 0..2 {
            if attempt > 0 {
                eprintln!("vm-test: downloading {pkg} failed; retrying once");
                self.update_once();
                thread::sleep(Duration::from_secs(2));
            }
            eprintln!("vm-test: downloading {pkg}");
            let result = util::output(
                self.command("apt-get")
                    .args(["download", "-q", pkg])
                    .current_dir(dir)
                    .stdin(Stdio::null()),
            );
            match result {
                Ok(_) => {
                    let prefix = format!("{pkg}_");
                    for entry in fs::read_dir(dir)? {
                        let path = entry?.path();
                        let name = path.file_name().unwrap_or_default().to_string_lossy();
                        if name.starts_with(&prefix) && name.ends_with(".deb") {
                            return Ok(path);
                        }
                    }
                    last_err = Some(anyhow!("apt-get download left no {prefix}*.deb"));
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("unknown error"))).with_context(|| {
            format!(
                "cannot download {pkg} (tried twice); check that Debian's archive is reachable \
                 and that `apt-cache policy {pkg}` shows a candidate"
            )
        })
    }
}
