//! portwatch: a kernel-level tracer of the socket lifecycle.
//!
//! A collector per platform ([`source`]) produces [`model`] events; the rest
//! ([`attribution`], [`filter`], [`aggregate`], [`output`], [`pipeline`]) is
//! platform-free and tested from recorded events.

pub mod aggregate;
pub mod attribution;
pub mod cli;
pub mod cmd;
pub mod errno;
pub mod escape;
pub mod explain;
pub mod filter;
pub mod journal;
pub mod jsonl;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod source;
pub mod sysctl;
pub mod term;
pub mod timefmt;
pub mod view;
/// Windows: IP Helper tables, netsh parsing, registry, AutoLogger. Its pure
/// parts build and are tested everywhere; the system calls only on Windows.
pub mod windows;
pub mod workload;

/// Whether an error comes from writing to a closed pipe (`portwatch ... |
/// head`): the reader stopped reading, which is no failure of portwatch's.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `1 event`, `2 events`: a count with its noun.
pub fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(target_os = "linux")]
pub mod privilege;
#[cfg(target_os = "linux")]
pub mod procfd;
#[cfg(target_os = "linux")]
pub mod sockdiag;
#[cfg(target_os = "linux")]
pub mod system;
#[cfg(all(test, target_os = "linux"))]
mod testutil;
