//! Developer tasks for portwatch: `cargo xtask <setup|build|run|test|clippy|package|bench|fuzz|vm-test>`.
//!
//! Every task except `setup` runs `setup` first, then puts the cached
//! bpf-linker (`target/tools/bpf-linker/bin`) at the front of PATH for the
//! cargo processes it starts; aya-build finds the linker through PATH.

mod bench;
mod fuzz;
mod package;
mod setup;
mod tasks;
mod util;
mod vm;
mod windows;
mod wine_tests;

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
    /// Build portwatch's release profile and run it as root (via `sudo -E`
    /// when not root).
    Run {
        /// Build and run the debug profile instead (slower; a tracer's job
        /// is to keep up).
        #[arg(long)]
        debug: bool,
        /// Arguments for portwatch (put them after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Full suite: fmt check, clippy, unit tests, the Windows cross-build
    /// with its wine tests, the kernel (integration) tests one at a time as
    /// root, then the Debian package installed with dpkg -i, run, and
    /// removed with dpkg -r.
    Test {
        /// Extra arguments for the integration test run, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Format check and clippy only.
    Clippy,
    /// Cross-build portwatch.exe (x86_64-pc-windows-gnu), clippy -D
    /// warnings for that target, and run it under wine. Installs the rustup
    /// target, mingw and wine when missing. Also part of `test`.
    Windows,
    /// Build the Debian package (target/debian/portwatch_*.deb): the
    /// release binary, the recorder's unit (not enabled), shell completions
    /// and man pages. Installs cargo-deb into target/tools the first time.
    Package {
        /// Then install it with dpkg -i, run it and remove it with dpkg -r
        /// (the last step of `cargo xtask test`; root).
        #[arg(long)]
        test: bool,
    },
    /// Overhead benchmark (prints figures; a few minutes; needs root): churn
    /// throughput under no tracer, portwatch trace, aggregate-only and
    /// bpftrace, the syscall tax, pipeline capacity and in-kernel cost.
    Bench(bench::BenchArgs),
    /// Run each cargo-fuzz target (portwatch/fuzz) for a while and report
    /// the inputs run and the crashes per target; exits 1 if one crashed.
    /// Needs the nightly toolchain; installs cargo-fuzz when missing.
    Fuzz(fuzz::FuzzArgs),
    /// Kernel tests inside qemu guests booting stock Debian kernels (5.10,
    /// 6.1 and 6.12 by default), once as portwatch chooses hooks and once
    /// with fexit/fentry disabled so the kprobe variants run; then the last
    /// kernel boots systemd as PID 1 with the hardened recorder unit (the
    /// boot test; `--hooks boot` runs only that). Needs root, qemu, and apt
    /// access to Debian's archive; kernels are cached in target/vm.
    VmTest {
        /// Kernel to boot: a series (`6.1`, `6.12`) or an exact Debian
        /// release (`6.1.0-56`, `6.12.117+deb12`). Repeatable.
        #[arg(long = "kernel", value_name = "VERSION")]
        kernels: Vec<String>,
        /// Hook modes to run each kernel with. Repeatable; default: both.
        #[arg(long = "hooks", value_enum)]
        hooks: Vec<vm::Hooks>,
        /// Seconds after which a guest is considered hung and killed.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Run the tests this many times in each guest, stopping at the
        /// first failure (to chase flaky ones).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Run every kernel test in each guest, not only the ones that
        /// depend on the kernel (vm::MATRIX_TESTS); about 13 min a guest.
        #[arg(long)]
        all_tests: bool,
        /// Extra arguments for the kernel test binary, e.g. a name filter
        /// (which replaces the default selection).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
        Task::Run { debug, args } => tasks::run(&ctx, !debug, &args),
        Task::Test { args } => tasks::test(&ctx, &args).map(|()| ExitCode::SUCCESS),
        Task::Clippy => tasks::lint(&ctx).map(|()| ExitCode::SUCCESS),
        Task::Windows => windows::windows(&ctx).map(|()| ExitCode::SUCCESS),
        Task::Package { test: false } => package::package(&ctx).map(|_| ExitCode::SUCCESS),
        Task::Package { test: true } => package::test(&ctx).map(|()| ExitCode::SUCCESS),
        Task::Bench(args) => bench::bench(&ctx, args).map(|()| ExitCode::SUCCESS),
        Task::Fuzz(args) => fuzz::fuzz(&ctx, &args).map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Task::VmTest {
            kernels,
            hooks,
            timeout,
            repeat,
            all_tests,
            args,
        } => {
            let opts = vm::Options {
                kernels: if kernels.is_empty() {
                    vm::DEFAULT_KERNELS.iter().map(|k| k.to_string()).collect()
                } else {
                    kernels
                },
                boot_last: hooks.is_empty(),
                hooks: if hooks.is_empty() {
                    vec![vm::Hooks::Auto, vm::Hooks::Kprobe]
                } else {
                    hooks
                },
                timeout: std::time::Duration::from_secs(timeout),
                repeat,
                test_args: args,
                all_tests,
            };
            let passed = vm::vm_test(&ctx, &opts)?;
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
