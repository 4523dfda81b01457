//! Small helpers: workspace root, child processes, root detection.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::setup::Tools;

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("xtask manifest dir {} has no parent", manifest.display()))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the root),
/// else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
}

/// The cargo that started us (keeps `cargo +toolchain xtask` working), else
/// the one on PATH.
pub fn cargo_program() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// What every task after `setup` shares: the workspace root and a PATH with
/// the cached bpf-linker first.
pub struct Ctx {
    pub root: PathBuf,
    path: OsString,
}

impl Ctx {
    pub fn new(root: PathBuf, tools: &Tools) -> Result<Self> {
        let path = path_with(&tools.bin_dir)?;
        Ok(Self { root, path })
    }

    /// `cargo ARGS` in the workspace root with the tools PATH.
    pub fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(cargo_program());
        cmd.args(args)
            .current_dir(&self.root)
            .env("PATH", &self.path);
        cmd
    }
}

impl Ctx {
    /// `program ARGS` in `dir` with the tools PATH (for cargo through
    /// rustup, e.g. `rustup run nightly cargo fuzz`).
    pub fn tool<I, S>(&self, program: &str, dir: &Path, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(dir).env("PATH", &self.path);
        cmd
    }
}

/// PATH with `dir` in front.
pub fn path_with(dir: &Path) -> Result<OsString> {
    let old = env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(dir.to_path_buf()).chain(env::split_paths(&old));
    env::join_paths(dirs).with_context(|| format!("cannot put {} on PATH", dir.display()))
}

/// Runs `cmd`, echoing it first; fails unless it exits 0. `hint` says what to
/// do when it fails.
pub fn run(cmd: &mut Command, hint: &str) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status}); {hint}", show(cmd));
    }
    Ok(())
}

/// Runs `cmd`, echoing it first, and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("$ {}", show(cmd));
    cmd.status()
        .with_context(|| format!("cannot start `{}`; is it installed and on PATH?", show(cmd)))
}

/// Runs `cmd` quietly and returns its stdout; fails unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`; is it installed and on PATH?", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", show(cmd)))
}

/// A shell-like rendering of `cmd` for messages.
pub fn show(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let program = match program.file_name() {
        // Show `cargo`, not ~/.rustup/toolchains/.../bin/cargo.
        Some(name) if name == "cargo" => name.to_string_lossy(),
        _ => program.to_string_lossy(),
    };
    std::iter::once(program.into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first executable `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|p| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}
