//! Developer tasks for portwatch: `cargo xtask <setup|build|run|test|clippy|bench>`.
//!
//! Every task except `setup` runs `setup` first, then puts the cached
//! bpf-linker (`target/tools/bpf-linker/bin`) at the front of PATH for the
//! cargo processes it starts; aya-build finds the linker through PATH.

mod bench;
mod setup;
mod tasks;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "portwatch developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs (nightly rust-src, a bpf-linker
    /// matching nightly's LLVM) and mount tracefs. Idempotent.
    Setup,
    /// Build the workspace (`cargo build --workspace`).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build portwatch and run it as root (via `sudo -E` when not root).
    Run {
        /// Build and run the release binary.
        #[arg(long)]
        release: bool,
        /// Arguments for portwatch (put them after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Full suite: fmt check, clippy, unit tests, then kernel (integration)
    /// tests one at a time as root.
    Test {
        /// Extra arguments for the integration test run, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Format check and clippy only.
    Clippy,
    /// Overhead benchmark (prints figures; a few minutes; needs root): churn
    /// throughput under no tracer, portwatch trace, aggregate-only and
    /// bpftrace, the syscall tax, pipeline capacity and in-kernel cost.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> anyhow::Result<ExitCode> {
    let root = util::workspace_root()?;
    if let Task::Setup = task {
        setup::setup(&root)?;
        return Ok(ExitCode::SUCCESS);
    }
    let tools = setup::setup(&root)?;
    let ctx = util::Ctx::new(root, &tools)?;
    match task {
        Task::Setup => Ok(ExitCode::SUCCESS),
        Task::Build { release } => tasks::build(&ctx, release).map(|()| ExitCode::SUCCESS),
        Task::Run { release, args } => tasks::run(&ctx, release, &args),
        Task::Test { args } => tasks::test(&ctx, &args).map(|()| ExitCode::SUCCESS),
        Task::Clippy => tasks::lint(&ctx).map(|()| ExitCode::SUCCESS),
        Task::Bench(args) => bench::bench(&ctx, args).map(|()| ExitCode::SUCCESS),
    }
}
