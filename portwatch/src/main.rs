use std::process::ExitCode;

use clap::Parser;
use portwatch::cli::{Cli, Command};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    // One thread: the ring reader and the pipeline hand batches to each
    // other without waking a second thread (and freeing across threads) for
    // every batch; on a busy machine that thread's CPU is the workload's loss.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portwatch: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => portwatch::cmd::trace::run(args).await,
            #[cfg(not(windows))]
            Command::Who(args) => portwatch::cmd::who::run(args),
            #[cfg(not(windows))]
            Command::Record(args) => portwatch::cmd::record::run(args).await,
            #[cfg(not(windows))]
            Command::History(args) => portwatch::cmd::history::run(args),
            #[cfg(not(windows))]
            Command::InstallService(args) => portwatch::cmd::install_service::run(args),
            #[cfg(not(windows))]
            Command::Doctor(args) => portwatch::cmd::doctor::run(args),
            #[cfg(not(windows))]
            Command::Reserve(args) => portwatch::cmd::reserve::run(args),
            #[cfg(windows)]
            other => portwatch::windows::cmd::run(other),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
