use std::process::ExitCode;

use portwatch::cli::{Cli, Command};

fn main() -> ExitCode {
    // A child of portwatch's own, run to parse the kernel's BTF outside the
    // tracer's memory (see source::linux::offsets::kernel_isolated).
    #[cfg(target_os = "linux")]
    if std::env::args().nth(1).as_deref() == Some(portwatch::source::linux::offsets::CHILD_ARG) {
        portwatch::source::linux::offsets::print_for_parent();
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    let cli = Cli::parse_checked();
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
        let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
        match cli.command {
            Command::Trace(args) => done(portwatch::cmd::trace::run(args).await),
            #[cfg(not(windows))]
            Command::Who(args) => done(portwatch::cmd::who::run(args)),
            #[cfg(not(windows))]
            Command::Record(args) => done(portwatch::cmd::record::run(args).await),
            #[cfg(not(windows))]
            Command::History(args) => done(portwatch::cmd::history::run(args)),
            #[cfg(not(windows))]
            Command::InstallService(args) => done(portwatch::cmd::install_service::run(args)),
            #[cfg(not(windows))]
            Command::Doctor(args) => done(portwatch::cmd::doctor::run(args)),
            #[cfg(not(windows))]
            Command::Reserve(args) => done(portwatch::cmd::reserve::run(args)),
            Command::Completions(args) => done(portwatch::cmd::completions::completions(args)),
            Command::Manpages(args) => done(portwatch::cmd::completions::manpages(args)),
            #[cfg(target_os = "linux")]
            Command::Top(args) => done(portwatch::cmd::top::run(args).await),
            #[cfg(target_os = "linux")]
            Command::Serve(args) => done(portwatch::cmd::serve::run(args).await),
            // 1 when the message was not recognised: scripts can tell.
            Command::Explain(args) => portwatch::cmd::explain::run(args).map(|known| {
                if known {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }),
            #[cfg(windows)]
            other => done(portwatch::windows::cmd::run(other)),
        }
    });
    match result {
        Ok(code) => code,
        // `portwatch who 80 | head -2`: the reader has what it wanted.
        Err(e) if portwatch::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
