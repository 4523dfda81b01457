//! One module per subcommand.

pub mod completions;
pub mod doctor;
pub mod explain;
pub mod first;
pub mod history;
#[cfg(target_os = "linux")]
pub mod install_service;
#[cfg(target_os = "linux")]
pub mod live;
#[cfg(target_os = "linux")]
pub mod record;
#[cfg(target_os = "linux")]
pub mod reserve;
#[cfg(target_os = "linux")]
pub mod serve;
#[cfg(target_os = "linux")]
pub mod top;
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

/// How long the start-up snapshot (a sock_diag dump of every namespace and
/// a scan of every process's fds) may take before the run goes on without
/// it; the ring keeps being drained meanwhile.
#[cfg(target_os = "linux")]
pub const SNAPSHOT_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `f` (a sock_diag dump, a /proc scan) on a blocking thread, so that
/// the event thread keeps draining the ring meanwhile; Err(why) when it
/// fails or takes longer than `budget` (it then finishes unheeded).
#[cfg(target_os = "linux")]
pub async fn off_thread<T: Send + 'static>(
    budget: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(budget, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("it failed: {e}")),
        Err(_) => Err(format!("it took longer than {} s", budget.as_secs())),
    }
}

/// The sockets that exist now, with their owners, taken off the event
/// thread; Err(why) (also said on stderr) when it cannot be had in time.
#[cfg(target_os = "linux")]
pub async fn snapshot(
    netns: &crate::system::Netns,
    budget: std::time::Duration,
) -> Result<crate::system::snapshot::StartSnapshot, String> {
    let ns = netns.clone();
    let snap = off_thread(budget, move || crate::system::snapshot::take(&ns)).await;
    if let Err(why) = &snap {
        eprintln!(
            "portwatch: warning: listing the sockets that predate the run: {why}; going on without it (their owners stay unknown)"
        );
    }
    snap
}

/// Tells the kernel side and attribution about the listeners and
/// connections that predate the run (one snapshot of every namespace), so
/// that a server started long before portwatch is named from its first
/// event. Says how many were found, on stderr, when asked to be verbose.
#[cfg(target_os = "linux")]
pub fn seed<S: crate::attribution::SocketProbe, P: crate::attribution::ProcessLookup>(
    collector: &mut crate::source::linux::LinuxCollector,
    attributor: &mut crate::attribution::Attributor<S, P>,
    snap: &crate::system::snapshot::StartSnapshot,
) {
    use crate::attribution::Known;
    if let Err(e) = collector.seed_listeners(&snap.listeners) {
        log::warn!("cannot tell the kernel about existing listeners: {e}");
    }
    for l in &snap.listeners {
        let owner = l.owner.as_ref().map(|o| {
            Known::seeded(
                o.pid,
                o.comm.clone(),
                o.uid,
                Some(crate::model::Side::Server),
            )
        });
        // The listening socket itself, for its own later transitions.
        if let Some(o) = &owner {
            let unspecified = match l.addr {
                std::net::IpAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                std::net::IpAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            attributor.seed_connection(Some(l.netns), (l.addr, l.port, unspecified, 0), o.clone());
        }
        attributor.seed_listener(Some(l.netns), l.port, l.addr, owner);
    }
    for c in &snap.connections {
        if let Some(o) = &c.owner {
            attributor.seed_connection(
                Some(c.netns),
                c.tuple,
                Known::seeded(o.pid, o.comm.clone(), o.uid, Some(c.side)),
            );
        }
    }
    for (ino, why) in &snap.unreadable {
        log::warn!("network namespace {ino}: its existing sockets could not be read ({why})");
    }
    log::info!(
        "{} namespaces: {} listeners and connections that predate the run seeded",
        snap.namespaces,
        snap.listeners.len()
    );
}
