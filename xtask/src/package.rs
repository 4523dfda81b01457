//! `cargo xtask package`: the Debian package an administrator installs, and
//! `cargo xtask test`'s last step, which installs it with `dpkg -i`, runs it
//! and removes it with `dpkg -r`.
//!
//! The package is built by cargo-deb from `[package.metadata.deb]` in
//! portwatch/Cargo.toml: the release binary in /usr/bin, the recorder's unit
//! (not enabled), shell completions and man pages that the binary itself
//! generates from its CLI definition. cargo-deb is installed into
//! `target/tools/cargo-deb` the first time, like bpf-linker.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, Ctx};

/// The cargo-deb release we install and drive.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Where the generated completions and man pages go: under the release
/// folder, which cargo-deb resolves as `target/release/...` whatever the
/// target directory is.
const GENERATED: &str = "portwatch-package";

/// Completion scripts: shell and file name.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "portwatch.bash"),
    ("zsh", "_portwatch"),
    ("fish", "portwatch.fish"),
];

/// Builds the .deb and returns its path.
pub fn package(ctx: &Ctx) -> Result<PathBuf> {
    let cargo_deb = cargo_deb(ctx)?;
    shlibdeps();
    util::run(
        &mut ctx.cargo(["build", "--release", "--package", "portwatch"]),
        "fix the build errors above",
    )?;
    let release = util::target_dir(&ctx.root).join("release");
    let bin = release.join("portwatch");
    generate(&bin, &release.join(GENERATED))?;

    let out_dir = util::target_dir(&ctx.root).join("debian");
    // Only this build's package in the folder, so it is unambiguous.
    if out_dir.is_dir() {
        for e in fs::read_dir(&out_dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                fs::remove_file(e.path())?;
            }
        }
    }
    let mut deb = ctx.cargo(["deb", "--package", "portwatch", "--no-build", "--output"]);
    deb.arg(&out_dir).env(
        "PATH",
        util::path_with(cargo_deb.parent().unwrap_or(&ctx.root))?,
    );
    util::run(
        &mut deb,
        "cargo-deb could not build the package; see its message above",
    )?;
    let deb = fs::read_dir(&out_dir)
        .with_context(|| format!("cannot list {}", out_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("cargo-deb wrote no .deb into {}", out_dir.display()))?;
    eprintln!("xtask package: {}", deb.display());
    Ok(deb)
}

/// `target/tools/cargo-deb/bin/cargo-deb` at [`CARGO_DEB_VERSION`],
/// installed with `cargo install --locked` when missing or another version.
fn cargo_deb(ctx: &Ctx) -> Result<PathBuf> {
    let root = util::target_dir(&ctx.root).join("tools").join("cargo-deb");
    let bin = root.join("bin").join("cargo-deb");
    let have = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if have.as_deref() == Some(&format!("cargo-deb {CARGO_DEB_VERSION}")) {
        eprintln!("package: cargo-deb {CARGO_DEB_VERSION} present");
        return Ok(bin);
    }
    eprintln!(
        "package: installing cargo-deb {CARGO_DEB_VERSION} into {} (a few minutes, once)",
        root.display()
    );
    let mut install = ctx.cargo(["install", "cargo-deb", "--locked", "--version"]);
    install.arg(CARGO_DEB_VERSION).arg("--root").arg(&root);
    util::run(
        &mut install,
        "could not install cargo-deb; check access to crates.io and run that command by hand",
    )?;
    Ok(bin)
}

/// cargo-deb works out the package's library dependencies with
/// dpkg-shlibdeps (dpkg-dev); without it the package would declare none.
/// Installs it when it is missing and apt can.
fn shlibdeps() {
    if util::which("dpkg-shlibdeps").is_some() {
        return;
    }
    if !util::is_root() || util::which("apt-get").is_none() {
        eprintln!("package: warning: dpkg-shlibdeps is missing (package dpkg-dev), so the package will declare no dependencies");
        return;
    }
    eprintln!("package: installing dpkg-dev for dpkg-shlibdeps");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "dpkg-dev"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("package: warning: could not install dpkg-dev; the package will declare no dependencies");
    }
}

/// Completions and man pages, from the binary's own CLI definition.
fn generate(bin: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let completions = dir.join("completions");
    fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let script = util::output(Command::new(bin).args(["completions", shell]))?;
        fs::write(completions.join(file), script)?;
    }
    // Debian policy wants man pages gzipped; cargo-deb compresses only the
    // ones it did not find under target/release.
    let man = dir.join("man");
    util::output(Command::new(bin).arg("manpages").arg("--dir").arg(&man))?;
    for e in fs::read_dir(&man)?.flatten() {
        let page = e.path();
        if page.extension().is_some_and(|x| x == "1") {
            let mut gz = page.clone().into_os_string();
            gz.push(".gz");
            gzip(&page, Path::new(&gz))?;
            fs::remove_file(&page)?;
        }
    }
    Ok(())
}

/// `from` gzipped into `to`, with no name or time in the header, so that
/// the same page gives the same bytes.
fn gzip(from: &Path, to: &Path) -> Result<()> {
    use std::io::Write as _;
    let text = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    let file = fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::best());
    enc.write_all(&text)?;
    enc.finish()?;
    Ok(())
}

/// What an installed package must hold.
const INSTALLED: &[&str] = &[
    "/usr/bin/portwatch",
    "/lib/systemd/system/portwatch-record.service",
    "/usr/share/bash-completion/completions/portwatch",
    "/usr/share/zsh/vendor-completions/_portwatch",
    "/usr/share/fish/vendor_completions.d/portwatch.fish",
    "/usr/share/man/man1/portwatch.1.gz",
    "/usr/share/man/man1/portwatch-record.1.gz",
    "/usr/share/man/man1/portwatch-trace.1.gz",
];

/// Builds the package, installs it with `dpkg -i`, runs the installed
/// binary as an administrator would, and removes it with `dpkg -r`, which
/// must leave nothing behind. Root only; refuses to touch a portwatch
/// package that was installed before.
pub fn test(ctx: &Ctx) -> Result<()> {
    for tool in ["dpkg", "dpkg-query"] {
        if util::which(tool).is_none() {
            bail!("the package test needs {tool} (a Debian or Ubuntu machine)");
        }
    }
    if installed() {
        bail!(
            "a portwatch package is installed here already, and the package test installs and \
             removes its own: remove it first (`dpkg -r portwatch`) or run the test on another machine"
        );
    }
    let deb = package(ctx)?;
    util::run(
        Command::new("dpkg").arg("-i").arg(&deb),
        "dpkg could not install the package; see its message above",
    )?;
    let checked = smoke_test();
    // Remove it whatever the smoke test said, then report.
    let removed = util::run(
        Command::new("dpkg").args(["-r", "portwatch"]),
        "dpkg could not remove the package; remove it by hand with `dpkg -r portwatch`",
    );
    checked?;
    removed?;
    if installed() || INSTALLED.iter().any(|f| Path::new(f).exists()) {
        bail!("`dpkg -r portwatch` left the package or some of its files behind");
    }
    eprintln!("xtask test: the package installed, ran and was removed cleanly");
    Ok(())
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "portwatch"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// The installed package as an administrator meets it.
fn smoke_test() -> Result<()> {
    let missing: Vec<&str> = INSTALLED
        .iter()
        .copied()
        .filter(|f| !Path::new(f).exists())
        .collect();
    if !missing.is_empty() {
        bail!("the installed package lacks {}", missing.join(", "));
    }
    // Installed, not enabled: nothing links the unit into a target.
    for dir in [
        "/etc/systemd/system/sysinit.target.wants",
        "/etc/systemd/system/multi-user.target.wants",
    ] {
        if Path::new(dir).join("portwatch-record.service").exists() {
            bail!("the package enabled portwatch-record.service; it must only install it");
        }
    }
    let bin = "/usr/bin/portwatch";
    let version = util::output(Command::new(bin).arg("--version"))?;
    let want = format!("portwatch {}", env!("CARGO_PKG_VERSION"));
    if version.trim() != want {
        bail!(
            "`portwatch --version` printed `{}`, expected `{want}`",
            version.trim()
        );
    }
    let doctor = util::output(Command::new(bin).arg("doctor"))?;
    if !doctor.contains("What `portwatch trace` would attach") || !doctor.contains("Findings") {
        bail!("`portwatch doctor` printed no report:\n{doctor}");
    }
    let who = util::output(Command::new(bin).args(["who", "22"]))?;
    if who.trim().is_empty() {
        bail!("`portwatch who 22` printed nothing");
    }
    // The completion script is the installed binary's own.
    let script = util::output(Command::new(bin).args(["completions", "bash"]))?;
    let shipped = fs::read_to_string("/usr/share/bash-completion/completions/portwatch")?;
    if script != shipped {
        bail!("the installed bash completions differ from what the installed binary generates");
    }
    // The unit verifies, its Documentation= pages included, when systemd's
    // tools and man are there to check it.
    if util::which("systemd-analyze").is_some() && util::which("man").is_some() {
        util::run(
            Command::new("systemd-analyze")
                .args(["verify", "/lib/systemd/system/portwatch-record.service"]),
            "the installed unit does not verify",
        )?;
    }
    eprintln!("package: --version, doctor, who 22, files and unit checked");
    Ok(())
}
