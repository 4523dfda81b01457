//! Event sources: one collector per platform, all producing [`crate::model`]
//! events, plus a replay of recorded JSON Lines. Everything downstream is
//! shared and platform-free.

#[cfg(target_os = "linux")]
pub mod linux;
pub mod replay;

/// Which mechanism serves one kind of event, for the `attached` line and doctor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mechanism {
    /// `state`, `bind`, `connect`, `timewait`.
    pub what: &'static str,
    /// e.g. `tracepoint sock:inet_sock_set_state`, `fexit inet_bind+inet6_bind`.
    pub how: String,
}

/// `state=tracepoint sock:inet_sock_set_state, bind=...`
pub fn describe(mechanisms: &[Mechanism]) -> String {
    mechanisms
        .iter()
        .map(|m| format!("{}={}", m.what, m.how))
        .collect::<Vec<_>>()
        .join(", ")
}
