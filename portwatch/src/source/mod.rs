//! Event sources: one collector per platform, all producing [`crate::model`]
//! events, plus a replay of recorded JSON Lines. Everything downstream is
//! shared and platform-free.

#[cfg(target_os = "linux")]
pub mod linux;
pub mod replay;
/// ETW: payload decoders (pure, built and tested everywhere) and, on
/// Windows, the live session.
pub mod windows;

/// Which mechanism serves one kind of event, for the `attached` line and doctor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mechanism {
    /// `state`, `bind`, `connect`, `timewait`.
    pub what: &'static str,
    /// e.g. `tracepoint sock:inet_sock_set_state`, `fexit inet_bind+inet6_bind`.
    pub how: String,
}

/// A family of kernel hooks, as doctor reports them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// A stable tracepoint such as `sock:inet_sock_set_state`.
    Tracepoint,
    /// `syscalls:sys_enter_*`/`sys_exit_*`: every syscall pays while attached.
    SyscallTracepoints,
    Kprobe,
    Fentry,
    Fexit,
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` (bind4/connect4 ...); not used by the collector yet.
    CgroupSockAddr,
    /// `BPF_PROG_TYPE_CGROUP_SOCK` (post_bind4 ...); not used by the collector yet.
    CgroupSock,
}

impl HookKind {
    pub fn label(self) -> &'static str {
        match self {
            HookKind::Tracepoint => "tracepoint",
            HookKind::SyscallTracepoints => "syscall tracepoints",
            HookKind::Kprobe => "kprobe",
            HookKind::Fentry => "fentry",
            HookKind::Fexit => "fexit",
            HookKind::CgroupSockAddr => "cgroup sock_addr",
            HookKind::CgroupSock => "cgroup sock",
        }
    }
}

/// One variant tried for one kind of event (or one program type probed).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookAttempt {
    /// As in the `attached` line, e.g. `fexit inet_bind+inet6_bind`.
    pub how: String,
    pub mechanism: HookKind,
    pub loads: bool,
    /// Why it did not load; None when it did.
    pub reason: Option<String>,
}

/// Per kind of event: what the collector would attach and every variant tried,
/// in the collector's order of preference.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventHooks {
    /// `state`, `timewait`, `bind`, `connect`.
    pub event: &'static str,
    /// What `trace` would attach; None if nothing loads (trace then fails).
    pub chosen: Option<String>,
    pub mechanism: Option<HookKind>,
    pub attempts: Vec<HookAttempt>,
}

/// Whether a mechanism loads here, over every attempt that used it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MechanismSupport {
    pub mechanism: HookKind,
    pub loads: bool,
    /// The first failure, when no attempt with this mechanism loaded.
    pub reason: Option<String>,
}

/// What the running kernel accepts, as probed by loading portwatch's own
/// programs the way `trace` would.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookTable {
    pub events: Vec<EventHooks>,
    /// Program types probed for information only (cgroup hooks).
    pub extra: Vec<HookAttempt>,
    /// Where each event's network namespace comes from (the kernel, through
    /// BTF offsets, or /proc and why).
    pub netns: Option<String>,
}

/// The kinds of event a hook table names (doctor's recorded facts are read
/// back with these).
pub const EVENT_KINDS: &[&str] = &["state", "timewait", "bind", "connect"];

/// [`EventHooks`] as recorded (doctor's facts), before its kind of event is
/// matched to one portwatch knows.
#[derive(serde::Deserialize)]
struct RecordedEventHooks {
    event: String,
    chosen: Option<String>,
    mechanism: Option<HookKind>,
    attempts: Vec<HookAttempt>,
}

impl<'de> serde::Deserialize<'de> for EventHooks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RecordedEventHooks::deserialize(d)?;
        EventHooks::try_from(r).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<RecordedEventHooks> for EventHooks {
    type Error = String;

    fn try_from(r: RecordedEventHooks) -> Result<Self, String> {
        let event = EVENT_KINDS
            .iter()
            .find(|k| **k == r.event)
            .copied()
            .ok_or_else(|| {
                format!(
                    "unknown kind of event `{}`; expected one of {}",
                    r.event,
                    EVENT_KINDS.join(", ")
                )
            })?;
        Ok(EventHooks {
            event,
            chosen: r.chosen,
            mechanism: r.mechanism,
            attempts: r.attempts,
        })
    }
}

impl HookTable {
    pub fn event(&self, what: &str) -> Option<&EventHooks> {
        self.events.iter().find(|e| e.event == what)
    }

    /// What `trace` would print in its `attached` line.
    pub fn mechanisms(&self) -> Vec<Mechanism> {
        self.events
            .iter()
            .filter_map(|e| {
                e.chosen.as_ref().map(|how| Mechanism {
                    what: e.event,
                    how: how.clone(),
                })
            })
            .chain(self.netns.as_ref().map(|how| Mechanism {
                what: "netns",
                how: how.clone(),
            }))
            .collect()
    }

    /// Per mechanism: loads if any attempt with it loaded, else the first reason.
    pub fn support(&self) -> Vec<MechanismSupport> {
        let mut out: Vec<MechanismSupport> = Vec::new();
        let attempts = self
            .events
            .iter()
            .flat_map(|e| e.attempts.iter())
            .chain(self.extra.iter());
        for a in attempts {
            match out.iter_mut().find(|m| m.mechanism == a.mechanism) {
                Some(m) => {
                    if a.loads && !m.loads {
                        m.loads = true;
                        m.reason = None;
                    }
                }
                None => out.push(MechanismSupport {
                    mechanism: a.mechanism,
                    loads: a.loads,
                    reason: a.reason.clone(),
                }),
            }
        }
        out.sort_by_key(|m| m.mechanism);
        out
    }
}

/// Whether connect() outcomes come from the state tracepoint (no hook on
/// connect itself loaded): attribution then infers them.
pub fn connects_inferred(mechanisms: &[Mechanism]) -> bool {
    mechanisms
        .iter()
        .any(|m| m.what == "connect" && m.how.starts_with("state tracepoint"))
}

/// `state=tracepoint sock:inet_sock_set_state, bind=...`
pub fn describe(mechanisms: &[Mechanism]) -> String {
    mechanisms
        .iter()
        .map(|m| format!("{}={}", m.what, m.how))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(how: &str, mechanism: HookKind, loads: bool) -> HookAttempt {
        HookAttempt {
            how: how.into(),
            mechanism,
            loads,
            reason: (!loads).then(|| format!("{how}: no")),
        }
    }

    #[test]
    fn support_and_mechanisms_summarise_the_attempts() {
        let table = HookTable {
            events: vec![
                EventHooks {
                    event: "timewait",
                    chosen: Some("state tracepoint + sock_diag confirmation".into()),
                    mechanism: Some(HookKind::Tracepoint),
                    attempts: vec![attempt("kprobe tcp_time_wait", HookKind::Kprobe, false)],
                },
                EventHooks {
                    event: "bind",
                    chosen: Some("kprobe+kretprobe inet_bind".into()),
                    mechanism: Some(HookKind::Kprobe),
                    attempts: vec![
                        attempt("fexit inet_bind", HookKind::Fexit, false),
                        attempt("kprobe+kretprobe inet_bind", HookKind::Kprobe, true),
                    ],
                },
                EventHooks {
                    event: "connect",
                    chosen: None,
                    mechanism: None,
                    attempts: vec![attempt("fexit c", HookKind::Fexit, false)],
                },
            ],
            extra: vec![attempt("cgroup", HookKind::CgroupSockAddr, false)],
            netns: None,
        };
        let s = table.support();
        let get = |k| s.iter().find(|m| m.mechanism == k).unwrap();
        // One success among the kprobe attempts is enough, and clears the reason.
        assert!(get(HookKind::Kprobe).loads);
        assert_eq!(get(HookKind::Kprobe).reason, None);
        assert!(!get(HookKind::Fexit).loads);
        assert_eq!(
            get(HookKind::Fexit).reason.as_deref(),
            Some("fexit inet_bind: no")
        );
        assert!(!get(HookKind::CgroupSockAddr).loads);
        assert_eq!(s.len(), 3);
        // Nothing chosen for connect: left out of the attached line.
        assert_eq!(
            describe(&table.mechanisms()),
            "timewait=state tracepoint + sock_diag confirmation, bind=kprobe+kretprobe inet_bind"
        );
        assert_eq!(
            table.event("bind").unwrap().mechanism,
            Some(HookKind::Kprobe)
        );
        assert!(table.event("state").is_none());
    }
}
