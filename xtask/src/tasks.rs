//! `build`, `run`, `test` and `clippy`; `setup` has already run.

use std::{
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Result};

use crate::util::{self, Ctx};

pub fn build(ctx: &Ctx, release: bool) -> Result<()> {
    let mut cmd = ctx.cargo(["build", "--workspace"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd, "fix the build errors above")
}

/// Builds portwatch and runs it as root, returning its exit status.
pub fn run(ctx: &Ctx, release: bool, args: &[String]) -> Result<ExitCode> {
    let mut cmd = ctx.cargo(["build", "--package", "portwatch"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd, "fix the build errors above")?;

    let target_dir = util::target_dir(&ctx.root);
    let bin: PathBuf = target_dir
        .join(if release { "release" } else { "debug" })
        .join("portwatch");
    if !bin.is_file() {
        bail!("build succeeded but {} is missing", bin.display());
    }

    let mut cmd = if util::is_root() {
        Command::new(&bin)
    } else if util::which("sudo").is_some() {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(&bin);
        cmd
    } else {
        bail!(
            "portwatch loads eBPF programs and needs root, and sudo is not installed; \
             run `cargo xtask run` as root"
        );
    };
    cmd.args(args);

    // Ctrl-C reaches portwatch directly (same process group); outlive it so
    // its exit status is the one we report.
    sigint::survive();
    let status = util::status(&mut cmd)?;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}

/// fmt check + clippy.
pub fn lint(ctx: &Ctx) -> Result<()> {
    util::run(
        &mut ctx.cargo(["fmt", "--all", "--", "--check"]),
        "formatting differs; run `cargo fmt --all`",
    )?;
    util::run(
        &mut ctx.cargo([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "fix the clippy findings above",
    )
}

/// The full suite, stopping at the first failing step.
pub fn test(ctx: &Ctx, integration_args: &[String]) -> Result<()> {
    step(1, "format check and clippy");
    lint(ctx)?;

    step(2, "unit tests");
    util::run(
        &mut ctx.cargo(["test", "--workspace", "--exclude", "integration-tests"]),
        "unit tests failed; see the output above",
    )?;

    step(3, "Windows: cross-build, clippy for the target, wine tests");
    crate::windows::windows(ctx)?;

    step(4, "kernel tests (one at a time)");
    if !util::is_root() {
        bail!(
            "kernel tests load eBPF programs and need root; \
             run `cargo xtask test` as root (CI does)"
        );
    }
    // The kernel tests drive the portwatch binary.
    util::run(
        &mut ctx.cargo(["build", "--package", "portwatch"]),
        "fix the build errors above",
    )?;
    let mut cmd = ctx.cargo([
        "test",
        "--package",
        "integration-tests",
        "--",
        "--test-threads=1",
    ]);
    cmd.args(integration_args);
    // In CI every kernel test must run: one that would skip fails instead.
    if std::env::var_os("CI").is_some() {
        cmd.env("PORTWATCH_NO_SKIP", "1");
    }
    util::run(&mut cmd, "kernel tests failed; see the output above")?;

    step(5, "the Debian package: dpkg -i, run it, dpkg -r");
    let started = std::time::Instant::now();
    crate::package::test(ctx)?;
    eprintln!(
        "xtask test: the package step took {}s",
        started.elapsed().as_secs()
    );

    eprintln!("xtask test: all steps passed");
    Ok(())
}

fn step(n: u32, what: &str) {
    eprintln!("xtask test: [{n}/5] {what}");
}

mod sigint {
    use std::ffi::c_int;

    const SIGINT: c_int = 2;

    unsafe extern "C" {
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    }

    extern "C" fn ignore(_: c_int) {}

    /// Keeps SIGINT from killing us. A handler (unlike SIG_IGN) is reset on
    /// exec, so children still get the default behaviour.
    pub fn survive() {
        // SAFETY: `ignore` is async-signal-safe (it does nothing).
        unsafe {
            signal(SIGINT, ignore);
        }
    }
}
