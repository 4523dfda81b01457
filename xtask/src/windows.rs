//! `cargo xtask windows`: cross-build portwatch for x86_64-pc-windows-gnu,
//! lint it with clippy -D warnings, and run the binary under wine
//! (wine_tests.rs). Set-up is automatic and idempotent: the rustup target,
//! Debian's mingw linker and wine are installed only when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{self, Ctx};

pub const TARGET: &str = "x86_64-pc-windows-gnu";
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// The rustup target and the mingw linker (needed to build at all).
pub fn setup_cross() -> Result<()> {
    let installed = util::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("cannot ask rustup which targets are installed")?;
    if !installed.lines().any(|l| l.trim() == TARGET) {
        util::run(
            Command::new("rustup").args(["target", "add", TARGET]),
            "rustup could not add the Windows target",
        )?;
    }
    if util::which(MINGW_GCC).is_none() {
        apt_install(&["gcc-mingw-w64-x86-64"])?;
    }
    Ok(())
}

/// wine, for running the cross-built binary; Err says why it cannot be had.
pub fn setup_wine() -> Result<PathBuf> {
    if let Some(w) = util::which("wine") {
        return Ok(w);
    }
    apt_install(&["wine", "wine64"])?;
    util::which("wine").context("wine was installed but is not on PATH")
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !util::is_root() {
        bail!(
            "{} missing; install with: sudo apt-get install {}",
            packages.join(", "),
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        c
    };
    util::run(&mut apt(&["update"]), "apt-get update failed")?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(packages);
    util::run(&mut install, "apt-get install failed")
}

/// Clippy for the Windows target, then the debug binary. Returns its path.
pub fn build(ctx: &Ctx) -> Result<PathBuf> {
    setup_cross()?;
    util::run(
        &mut ctx.cargo([
            "clippy",
            "--package",
            "portwatch",
            "--target",
            TARGET,
            "--",
            "-D",
            "warnings",
        ]),
        "fix the clippy findings for the Windows target above",
    )?;
    util::run(
        &mut ctx.cargo(["build", "--package", "portwatch", "--target", TARGET]),
        "fix the Windows build errors above",
    )?;
    let exe = util::target_dir(&ctx.root)
        .join(TARGET)
        .join("debug")
        .join("portwatch.exe");
    if !exe.is_file() {
        bail!(
            "the Windows build succeeded but {} is missing",
            exe.display()
        );
    }
    Ok(exe)
}

/// The test directory: the exe, the test-only ProcessPrng shim beside it,
/// and a wine prefix of its own. Never part of a release.
pub fn stage(root: &Path, exe: &Path) -> Result<PathBuf> {
    let dir = util::target_dir(root).join("wine-test");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let shim_src = root.join("xtask/wine/processprng_shim.c");
    let shim = dir.join("bcryptprimitives.dll");
    let stale = match (std::fs::metadata(&shim), std::fs::metadata(&shim_src)) {
        (Ok(dll), Ok(src)) => dll.modified()? < src.modified()?,
        _ => true,
    };
    if stale {
        util::run(
            Command::new(MINGW_GCC)
                .args(["-shared", "-O2", "-o"])
                .arg(&shim)
                .arg(&shim_src)
                .arg("-ladvapi32"),
            "building the test-only ProcessPrng shim failed",
        )?;
    }
    std::fs::copy(exe, dir.join("portwatch.exe"))
        .with_context(|| format!("cannot copy {} into {}", exe.display(), dir.display()))?;
    Ok(dir)
}

/// `cargo xtask windows`: build, lint, and the wine tests.
pub fn windows(ctx: &Ctx) -> Result<()> {
    let started = std::time::Instant::now();
    let exe = build(ctx)?;
    eprintln!(
        "xtask: Windows build and clippy took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let wine = match setup_wine() {
        Ok(w) => w,
        Err(e) => {
            println!("SKIPPED: wine tests: wine is not available ({e:#})");
            return Ok(());
        }
    };
    let dir = stage(&ctx.root, &exe)?;
    let result = crate::wine_tests::run(&wine, &dir);
    eprintln!(
        "xtask: wine tests took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    result
}
