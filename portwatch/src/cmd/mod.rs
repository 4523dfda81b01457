//! One module per subcommand.

pub mod completions;
pub mod doctor;
pub mod explain;
pub mod history;
#[cfg(target_os = "linux")]
pub mod install_service;
#[cfg(target_os = "linux")]
pub mod record;
pub mod reserve;
pub mod trace;
#[cfg(target_os = "linux")]
pub mod who;

/// `--comm NAME` as a filter: cut to what the kernel keeps of a command
/// name, saying so on stderr when it had to be cut.
pub fn comm_filter(arg: Option<&str>) -> Option<String> {
    arg.map(|c| {
        let (comm, warning) = crate::filter::comm_as_kernel_keeps_it(c);
        if let Some(w) = warning {
            eprintln!("portwatch: warning: {w}");
        }
        comm
    })
}

/// What ends a long-running command: SIGINT, SIGTERM or its --duration.
/// Install it before printing `portwatch: attached`, since callers may
/// signal as soon as they read that line. The signal streams live for the
/// whole run: a `ctrl_c()` future made afresh in each loop turn misses a
/// SIGINT that lands while an event is being handled.
#[cfg(target_os = "linux")]
pub struct Stop {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    duration: Option<std::time::Duration>,
    /// Set on the first wait, i.e. once the command is running.
    deadline: Option<tokio::time::Instant>,
}

#[cfg(target_os = "linux")]
impl Stop {
    pub fn install(duration: Option<std::time::Duration>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop {
            sigint: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            duration,
            deadline: None,
        })
    }

    /// Resolves when it is time to stop; cancel-safe, for `select!` loops.
    pub async fn wait(&mut self) {
        if self.deadline.is_none() {
            // A duration past what the clock can hold means: no deadline.
            self.deadline = self
                .duration
                .and_then(|d| tokio::time::Instant::now().checked_add(d));
        }
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.sigint.recv() => {}
            _ = self.sigterm.recv() => {}
            _ = deadline => {}
        }
    }
}
