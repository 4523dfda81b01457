//! `portwatch doctor`: what this kernel lets portwatch hook, and whether the
//! port configuration invites ephemeral-port trouble.
//!
//! Collection (Linux, partly root-only) fills a [`Snapshot`]; [`analyze`]
//! turns a snapshot into findings. The analysis is a pure function, so it is
//! tested from injected data without root or a particular kernel.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};
use std::net::IpAddr;

use nu_ansi_term::{Color, Style};
use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::{ColorChoice, DoctorArgs};
use crate::source::{HookKind, HookTable};
use crate::sysctl::{self, PortSet, PortSpan};

/// The cost of syscall tracepoints, as measured on the development host
/// (shared KERNEL-NOTES: a bpftrace program on `syscalls:sys_enter_bind` alone).
pub const SYSCALL_TRACEPOINT_TAX: &str =
    "measured on the development host: a getppid() loop went from about 198 ns to about 244 ns per call";

/// TIME_WAIT share of a destination's ephemeral ports above which doctor warns.
pub const TW_WARNING: f64 = 0.5;
/// ... and above which it is critical.
pub const TW_CRITICAL: f64 = 0.9;
/// An ephemeral range smaller than this is flagged.
pub const NARROW_RANGE: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        }
    }

    fn style(self) -> Style {
        match self {
            Severity::Info => Color::Cyan.normal(),
            Severity::Warning => Color::Yellow.bold(),
            Severity::Critical => Color::Red.bold(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
    /// One line: a command or the change to make. None for pure information.
    pub fix: Option<String>,
}

impl Finding {
    fn new(severity: Severity, message: impl Into<String>, fix: Option<String>) -> Self {
        Finding {
            severity,
            message: message.into(),
            fix,
        }
    }
}

// ---------------------------------------------------------------------------
// What doctor collects.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Tracefs {
    /// Mounted before doctor ran.
    Mounted,
    /// Doctor mounted it (as `trace` does).
    MountedByPortwatch,
    NotMounted {
        reason: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lockdown {
    /// `none`, `integrity` or `confidentiality`; None if unknown.
    pub mode: Option<String>,
    /// Where the mode was read from.
    pub source: Option<String>,
}

/// What the kernel allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCaps {
    /// `uname -r`.
    pub kernel: String,
    /// Whether this process may load eBPF programs (root, or CAP_BPF + CAP_PERFMON).
    pub privileged: bool,
    /// The probed hook table, or why it could not be probed.
    pub hooks: Result<HookTable, String>,
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    pub tracefs: Tracefs,
    /// Whether BPF ring buffer maps can be created; Err if not checked or failed.
    pub ring_buffer: Result<bool, String>,
    pub lockdown: Lockdown,
    /// `/sys/bus/event_source/devices/kprobe` exists.
    pub kprobe_pmu: bool,
    /// Selected kernel config options (`y`, `m`, `n`), when the config is readable.
    pub config: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EphemeralRange {
    pub low: u16,
    pub high: u16,
}

impl EphemeralRange {
    pub fn size(&self) -> u32 {
        u32::from(self.high - self.low) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

/// A listening TCP socket or a bound, unconnected UDP socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listener {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub addr: IpAddr,
    pub port: u16,
    pub owners: Vec<Owner>,
}

/// TIME_WAIT sockets towards one destination whose local port is ephemeral.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimeWaitDest {
    pub daddr: IpAddr,
    pub dport: u16,
    pub count: u32,
}

/// The port configuration of this network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortConfig {
    pub ephemeral_range: Option<EphemeralRange>,
    pub reserved_ports: Option<PortSet>,
    pub listeners: Vec<Listener>,
    /// Busiest first.
    pub time_wait: Vec<TimeWaitDest>,
    /// Every TIME_WAIT socket, ephemeral local port or not.
    pub time_wait_total: u64,
    pub tcp_tw_reuse: Option<u8>,
    pub tcp_tw_reuse_delay_ms: Option<u64>,
    pub tcp_max_tw_buckets: Option<u64>,
    pub tcp_fin_timeout: Option<u64>,
    /// Why sockets could not be listed (sock_diag), if they could not.
    pub sockets_error: Option<String>,
    /// False when other users' processes could not be searched for owners.
    pub owners_complete: bool,
    /// Sysctls that could not be read or parsed.
    pub read_errors: Vec<String>,
}

impl PortConfig {
    /// Ephemeral ports a client can use towards one destination (per local address).
    pub fn capacity(&self) -> Option<u32> {
        let r = self.ephemeral_range?;
        let reserved = self
            .reserved_ports
            .as_ref()
            .map_or(0, |s| s.count_within(r.low, r.high));
        Some(r.size().saturating_sub(reserved))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub caps: KernelCaps,
    pub ports: PortConfig,
}

// ---------------------------------------------------------------------------
// Analysis: pure.
// ---------------------------------------------------------------------------

/// Every finding for a snapshot, most severe first.
pub fn analyze(s: &Snapshot) -> Vec<Finding> {
    let mut out = capability_findings(&s.caps);
    out.extend(port_findings(&s.ports));
    // Stable: within a severity, capabilities first, then ports, as generated.
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

pub fn capability_findings(c: &KernelCaps) -> Vec<Finding> {
    use Severity::*;
    let mut out = Vec::new();

    match &c.tracefs {
        Tracefs::Mounted => {}
        Tracefs::MountedByPortwatch => out.push(Finding::new(
            Info,
            "tracefs was not mounted; doctor mounted it at /sys/kernel/tracing, as `portwatch trace` does",
            None,
        )),
        Tracefs::NotMounted { reason } => out.push(Finding::new(
            if c.privileged { Critical } else { Warning },
            format!("tracefs is not mounted at /sys/kernel/tracing ({reason}); tracepoints cannot attach without it"),
            Some("sudo mount -t tracefs tracefs /sys/kernel/tracing".into()),
        )),
    }

    let hooks = match &c.hooks {
        Ok(h) => Some(h),
        Err(why) if !c.privileged => {
            out.push(Finding::new(
                Warning,
                format!("hooks not probed: {why}; the capability table below lists only what can be read without it, and sockets of other users' processes show no owner"),
                Some("sudo portwatch doctor".into()),
            ));
            None
        }
        Err(why) => {
            out.push(Finding::new(
                Critical,
                format!("probing hooks failed, so `portwatch trace` will fail too: {why}"),
                None,
            ));
            None
        }
    };

    if let Some(h) = hooks {
        for e in &h.events {
            if e.chosen.is_none() {
                let reasons = e
                    .attempts
                    .iter()
                    .map(|a| format!("{}: {}", a.how, a.reason.as_deref().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join("; ");
                let fix = (e.event == "state").then(|| {
                    "run on Linux 4.16 or later, which has the sock:inet_sock_set_state tracepoint"
                        .to_owned()
                });
                out.push(Finding::new(
                    Critical,
                    format!(
                        "no hook for {} loads here, so `portwatch trace` cannot run: {reasons}",
                        e.event
                    ),
                    fix,
                ));
            }
        }
        let via_syscalls: Vec<&str> = h
            .events
            .iter()
            .filter(|e| e.mechanism == Some(HookKind::SyscallTracepoints))
            .map(|e| e.event)
            .collect();
        if !via_syscalls.is_empty() {
            out.push(Finding::new(
                Warning,
                format!(
                    "{} would be traced with syscall tracepoints: while `portwatch trace` runs, every syscall of every process on the machine pays the tracing slow path ({SYSCALL_TRACEPOINT_TAX})",
                    via_syscalls.join(" and ")
                ),
                Some("trace on a kernel that allows kprobes (CONFIG_KPROBES=y) or fentry/fexit, or keep traces short with --duration".into()),
            ));
            let cgroup = h
                .extra
                .iter()
                .find(|a| a.mechanism == HookKind::CgroupSockAddr);
            if cgroup.is_some_and(|a| !a.loads) {
                out.push(Finding::new(
                    Info,
                    "cgroup sock_addr programs do not load here: they would hook bind() per call without taxing every syscall",
                    None,
                ));
            }
        }
        if let Some(tw) = h.event("timewait") {
            if tw.chosen.is_some() && tw.attempts.iter().all(|a| !a.loads) {
                out.push(Finding::new(
                    Info,
                    "tcp_time_wait cannot be hooked here (no fentry, no kprobe): TIME_WAIT is inferred from the state tracepoint and confirmed with a sock_diag lookup, which misses sockets that leave TIME_WAIT before the lookup",
                    None,
                ));
            }
        }
    }

    if !c.btf {
        out.push(Finding::new(
            Warning,
            "no kernel BTF (/sys/kernel/btf/vmlinux): fentry/fexit hooks cannot load",
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y".into()),
        ));
    }
    match &c.ring_buffer {
        Ok(true) => {}
        Ok(false) => out.push(Finding::new(
            Critical,
            "this kernel has no BPF ring buffer (Linux 5.8+), which `portwatch trace` needs",
            Some("run on Linux 5.8 or later".into()),
        )),
        Err(_) => {}
    }
    match c.lockdown.mode.as_deref() {
        Some("confidentiality") => out.push(Finding::new(
            Critical,
            "kernel lockdown is `confidentiality`: eBPF programs may not read kernel memory, so portwatch's programs are refused",
            Some("boot with lockdown=integrity or none (kernel command line), if policy allows".into()),
        )),
        Some(_) => {}
        None => out.push(Finding::new(
            Info,
            "lockdown mode unknown: /sys/kernel/security/lockdown is not readable (securityfs not mounted?) and the kernel config does not force a mode",
            Some("sudo mount -t securityfs securityfs /sys/kernel/security && cat /sys/kernel/security/lockdown".into()),
        )),
    }
    out
}

/// What `tcp_tw_reuse` means, for a value.
pub fn tw_reuse_meaning(v: u8) -> &'static str {
    match v {
        0 => "disabled: TIME_WAIT ports are never reused for new outgoing connections",
        1 => "enabled: new outgoing connections may reuse a TIME_WAIT port (needs TCP timestamps)",
        2 => "loopback only, the default: only outgoing connections to loopback addresses reuse TIME_WAIT ports",
        _ => "unknown value",
    }
}

fn tw_reuse_applies(reuse: Option<u8>, daddr: IpAddr) -> bool {
    match reuse {
        Some(1) => true,
        Some(2) => daddr.is_loopback() || is_v4_mapped_loopback(daddr),
        _ => false,
    }
}

fn is_v4_mapped_loopback(a: IpAddr) -> bool {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The exact commands that reserve `port`, merged with what is reserved.
pub fn reserve_fix(port: u16, reserved: Option<&PortSet>) -> String {
    let merged = reserved
        .cloned()
        .unwrap_or_default()
        .union(&PortSet::from_spans([PortSpan::single(port)]));
    format!(
        "portwatch reserve {port} --persist  (or: sysctl -w {}={merged}, and persist it in /etc/sysctl.d/)",
        sysctl::RESERVED_PORTS
    )
}

pub fn port_findings(p: &PortConfig) -> Vec<Finding> {
    use Severity::*;
    let mut out = Vec::new();

    for e in &p.read_errors {
        out.push(Finding::new(Warning, format!("cannot read {e}"), None));
    }
    if let Some(e) = &p.sockets_error {
        out.push(Finding::new(
            Warning,
            format!("listening sockets and TIME_WAIT were not checked: {e}"),
            None,
        ));
    }

    let reserved = p.reserved_ports.as_ref();
    if let Some(range) = p.ephemeral_range {
        // Listeners inside the range, not reserved: one finding per port.
        let mut at_risk: BTreeMap<u16, Vec<&Listener>> = BTreeMap::new();
        for l in &p.listeners {
            if range.contains(l.port) && !reserved.is_some_and(|r| r.contains(l.port)) {
                at_risk.entry(l.port).or_default().push(l);
            }
        }
        for (port, ls) in at_risk {
            let tcp = ls.iter().any(|l| l.protocol == "tcp");
            let mut protos: Vec<&str> = ls.iter().map(|l| l.protocol).collect();
            protos.dedup();
            let mut owners: Vec<String> = ls
                .iter()
                .flat_map(|l| l.owners.iter())
                .map(|o| format!("{} (pid {})", o.comm, o.pid))
                .collect();
            owners.sort();
            owners.dedup();
            let who = if owners.is_empty() {
                "owner unknown".to_owned()
            } else {
                owners.join(", ")
            };
            let message = if tcp {
                format!(
                    "port {port} ({}, {who}) is inside the ephemeral range {}-{} and not reserved: when the service restarts or the machine boots, an outgoing connection can take the port first and the service's bind() fails with EADDRINUSE",
                    protos.join("+"),
                    range.low,
                    range.high
                )
            } else {
                format!(
                    "UDP port {port} ({who}) is bound inside the ephemeral range {}-{} and not reserved: if it is a fixed service port, an outgoing connection can take it while the service is down (if the kernel picked it for a client socket, ignore this)",
                    range.low, range.high
                )
            };
            out.push(Finding::new(
                if tcp { Warning } else { Info },
                message,
                Some(reserve_fix(port, reserved)),
            ));
        }

        let size = range.size();
        let capacity = p.capacity().unwrap_or(size);
        if size < NARROW_RANGE {
            out.push(Finding::new(
                Warning,
                format!(
                    "the ephemeral range {}-{} has only {size} ports: at most {capacity} concurrent or TIME_WAIT connections per destination",
                    range.low, range.high
                ),
                Some(format!("sysctl -w {}=\"32768 60999\"", sysctl::PORT_RANGE)),
            ));
        }
        if capacity * 2 < size {
            out.push(Finding::new(
                Warning,
                format!(
                    "reserved ports take {} of the {size} ephemeral ports, leaving {capacity} per destination",
                    size - capacity
                ),
                Some(format!("review {}", sysctl::RESERVED_PORTS)),
            ));
        }

        // TIME_WAIT against what one destination can take.
        for tw in &p.time_wait {
            if capacity == 0 {
                break;
            }
            let share = f64::from(tw.count) / f64::from(capacity);
            if share <= TW_WARNING {
                continue;
            }
            let reuse = tw_reuse_applies(p.tcp_tw_reuse, tw.daddr);
            let severity = if share > TW_CRITICAL && !reuse {
                Critical
            } else {
                Warning
            };
            let dest = endpoint(tw.daddr, tw.dport);
            let mut message = format!(
                "{} TIME_WAIT sockets towards {dest} hold {:.0}% of the {capacity} ephemeral ports usable per destination; when none is left, connect() there fails with EADDRNOTAVAIL",
                tw.count,
                share * 100.0
            );
            let fix = if reuse {
                message.push_str(&format!(
                    " (tcp_tw_reuse={} lets new connections reuse them when both ends use TCP timestamps)",
                    p.tcp_tw_reuse.unwrap_or(0)
                ));
                "reuse connections (keep-alive, pooling) or widen net.ipv4.ip_local_port_range"
                    .to_owned()
            } else {
                format!(
                    "sysctl -w {}=1 (reuse TIME_WAIT ports for outgoing connections), and reuse connections (keep-alive, pooling)",
                    sysctl::TW_REUSE
                )
            };
            out.push(Finding::new(severity, message, Some(fix)));
        }
    }

    if let Some(max) = p.tcp_max_tw_buckets {
        if max > 0 && p.time_wait_total * 10 > max * 9 {
            out.push(Finding::new(
                Warning,
                format!(
                    "{} TIME_WAIT sockets against tcp_max_tw_buckets={max}: beyond it the kernel destroys TIME_WAIT sockets early (\"time wait bucket table overflow\")",
                    p.time_wait_total
                ),
                Some("reuse connections instead of raising the limit".into()),
            ));
        }
    }

    if let Some(v) = p.tcp_tw_reuse {
        let delay = p
            .tcp_tw_reuse_delay_ms
            .map(|d| format!("; a TIME_WAIT port becomes reusable {d} ms after the connection closed (tcp_tw_reuse_delay)"))
            .unwrap_or_default();
        out.push(Finding::new(
            Info,
            format!("tcp_tw_reuse={v}: {}{delay}", tw_reuse_meaning(v)),
            None,
        ));
    }

    let fin = p
        .tcp_fin_timeout
        .map(|s| format!(" (currently {s} s)"))
        .unwrap_or_default();
    out.push(Finding::new(
        Info,
        format!("myth: tcp_fin_timeout{fin} does not shorten TIME_WAIT on Linux; TIME_WAIT lasts a fixed 60 s (TCP_TIMEWAIT_LEN), tcp_fin_timeout bounds FIN_WAIT2 of orphaned sockets"),
        None,
    ));
    out.push(Finding::new(
        Info,
        "myth: reserving a port (ip_local_reserved_ports) does not stop a program from binding it explicitly; it only keeps the kernel from handing it out as an ephemeral port",
        None,
    ));
    if !p.owners_complete && p.listeners.iter().any(|l| l.owners.is_empty()) {
        out.push(Finding::new(
            Info,
            "some sockets show no owner: other users' processes cannot be searched without root",
            Some("sudo portwatch doctor".into()),
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// Output.
// ---------------------------------------------------------------------------

pub fn capabilities_json(c: &KernelCaps) -> Value {
    let (probed, reason, events, mechanisms, program_types, would_attach) = match &c.hooks {
        Ok(h) => {
            let events: serde_json::Map<String, Value> = h
                .events
                .iter()
                .map(|e| (e.event.to_owned(), json!(e)))
                .collect();
            let mechanisms: serde_json::Map<String, Value> = h
                .support()
                .into_iter()
                .map(|m| {
                    (
                        serde_json::to_value(m.mechanism)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        json!({"loads": m.loads, "reason": m.reason}),
                    )
                })
                .collect();
            (
                true,
                None,
                Value::Object(events),
                Value::Object(mechanisms),
                json!(h.extra),
                Value::String(crate::source::describe(&h.mechanisms())),
            )
        }
        Err(e) => (
            false,
            Some(e.clone()),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ),
    };
    let (ring_ok, ring_reason) = match &c.ring_buffer {
        Ok(b) => (Value::Bool(*b), Value::Null),
        Err(e) => (Value::Null, Value::String(e.clone())),
    };
    json!({
        "kernel": c.kernel,
        "privileged": c.privileged,
        "probed": probed,
        "not_probed_reason": reason,
        "trace_would_attach": would_attach,
        "events": events,
        "mechanisms": mechanisms,
        "program_types": program_types,
        "btf": c.btf,
        "tracefs": c.tracefs,
        "ring_buffer": {"supported": ring_ok, "reason": ring_reason},
        "lockdown": c.lockdown,
        "kprobe_pmu": c.kprobe_pmu,
        "kernel_config": c.config,
    })
}

pub fn port_config_json(p: &PortConfig) -> Value {
    let mut v = json!(p);
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "ephemeral_range_size".into(),
            json!(p.ephemeral_range.map(|r| r.size())),
        );
        obj.insert("capacity_per_destination".into(), json!(p.capacity()));
    }
    v
}

pub fn to_json(s: &Snapshot, findings: &[Finding]) -> Value {
    json!({
        "capabilities": capabilities_json(&s.caps),
        "port_config": port_config_json(&s.ports),
        "findings": findings,
    })
}

struct Painter {
    color: bool,
}

impl Painter {
    fn paint(&self, style: Style, s: &str) -> String {
        if self.color {
            style.paint(s).to_string()
        } else {
            s.to_owned()
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn write_text(
    w: &mut impl Write,
    s: &Snapshot,
    findings: &[Finding],
    color: bool,
) -> io::Result<()> {
    let p = Painter { color };
    let bold = Style::new().bold();
    let c = &s.caps;
    writeln!(
        w,
        "{} (kernel {}, {})",
        p.paint(bold, "portwatch doctor"),
        c.kernel,
        if c.privileged {
            "privileged"
        } else {
            "unprivileged: hooks not probed"
        }
    )?;

    writeln!(w)?;
    writeln!(
        w,
        "{}",
        p.paint(bold, "What `portwatch trace` would attach")
    )?;
    match &c.hooks {
        Ok(h) => {
            for e in &h.events {
                let chosen = e.chosen.as_deref().unwrap_or("nothing loads");
                writeln!(w, "  {:<10} {chosen}", e.event)?;
            }
            if let Some(netns) = &h.netns {
                writeln!(w, "  {:<10} {netns}", "netns")?;
            }
            writeln!(w)?;
            writeln!(w, "{}", p.paint(bold, "Mechanisms"))?;
            writeln!(w, "  {:<20} {:<6} REASON", "MECHANISM", "LOADS")?;
            for m in h.support() {
                let loads = yes_no(m.loads);
                let styled = p.paint(
                    if m.loads {
                        Color::Green.normal()
                    } else {
                        Color::Red.normal()
                    },
                    &format!("{loads:<6}"),
                );
                let reason = m.reason.unwrap_or_default();
                let line = format!("  {:<20} {styled} {reason}", m.mechanism.label());
                writeln!(w, "{}", line.trim_end())?;
            }
        }
        Err(e) => writeln!(w, "  not probed: {e}")?,
    }

    writeln!(w)?;
    writeln!(w, "{}", p.paint(bold, "Kernel"))?;
    writeln!(
        w,
        "  {:<20} {}",
        "BTF",
        if c.btf {
            "present (/sys/kernel/btf/vmlinux)"
        } else {
            "absent"
        }
    )?;
    let tracefs = match &c.tracefs {
        Tracefs::Mounted => "mounted".to_owned(),
        Tracefs::MountedByPortwatch => "mounted by doctor (was not mounted)".to_owned(),
        Tracefs::NotMounted { reason } => format!("not mounted ({reason})"),
    };
    writeln!(w, "  {:<20} {tracefs}", "tracefs")?;
    let ring = match &c.ring_buffer {
        Ok(true) => "supported".to_owned(),
        Ok(false) => "unsupported".to_owned(),
        Err(e) => format!("unknown ({e})"),
    };
    writeln!(w, "  {:<20} {ring}", "BPF ring buffer")?;
    let lockdown = match (&c.lockdown.mode, &c.lockdown.source) {
        (Some(m), Some(src)) => format!("{m} ({src})"),
        (Some(m), None) => m.clone(),
        _ => "unknown".to_owned(),
    };
    writeln!(w, "  {:<20} {lockdown}", "lockdown")?;
    writeln!(
        w,
        "  {:<20} {}",
        "kprobe PMU",
        if c.kprobe_pmu {
            "present"
        } else {
            "absent (/sys/bus/event_source/devices/kprobe)"
        }
    )?;
    if !c.config.is_empty() {
        let cfg = c
            .config
            .iter()
            .map(|(k, v)| format!("{}={v}", k.trim_start_matches("CONFIG_")))
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(w, "  {:<20} {cfg}", "config")?;
    }

    let pc = &s.ports;
    writeln!(w)?;
    writeln!(
        w,
        "{}",
        p.paint(bold, "Port configuration (this network namespace)")
    )?;
    match pc.ephemeral_range {
        Some(r) => writeln!(
            w,
            "  {:<20} {}-{} ({} ports, {} usable per destination)",
            "ephemeral range",
            r.low,
            r.high,
            r.size(),
            pc.capacity().unwrap_or(0)
        )?,
        None => writeln!(w, "  {:<20} unknown", "ephemeral range")?,
    }
    let reserved = match &pc.reserved_ports {
        Some(r) if r.is_empty() => "(none)".to_owned(),
        Some(r) => format!("{r} ({} ports)", r.count()),
        None => "unknown".to_owned(),
    };
    writeln!(w, "  {:<20} {reserved}", "reserved ports")?;
    let listening: Vec<String> = {
        let mut ports: Vec<String> = pc
            .listeners
            .iter()
            .map(|l| format!("{}/{}", l.port, l.protocol))
            .collect();
        ports.sort();
        ports.dedup();
        ports
    };
    writeln!(
        w,
        "  {:<20} {}",
        "listening",
        if listening.is_empty() {
            "(none)".to_owned()
        } else {
            listening.join(" ")
        }
    )?;
    let busiest = pc
        .time_wait
        .first()
        .map(|t| format!("; busiest {} with {}", endpoint(t.daddr, t.dport), t.count))
        .unwrap_or_default();
    writeln!(w, "  {:<20} {}{busiest}", "TIME_WAIT", pc.time_wait_total)?;
    let opt = |v: Option<u64>, unit: &str| {
        v.map(|v| format!("{v}{unit}"))
            .unwrap_or_else(|| "absent".into())
    };
    writeln!(
        w,
        "  {:<20} {}",
        "tcp_tw_reuse",
        pc.tcp_tw_reuse
            .map(|v| format!("{v} ({})", tw_reuse_meaning(v)))
            .unwrap_or_else(|| "absent".into())
    )?;
    writeln!(
        w,
        "  {:<20} {}",
        "tcp_tw_reuse_delay",
        opt(pc.tcp_tw_reuse_delay_ms, " ms")
    )?;
    writeln!(
        w,
        "  {:<20} {}",
        "tcp_max_tw_buckets",
        opt(pc.tcp_max_tw_buckets, "")
    )?;
    writeln!(
        w,
        "  {:<20} {}",
        "tcp_fin_timeout",
        opt(pc.tcp_fin_timeout, " s")
    )?;

    writeln!(w)?;
    writeln!(w, "{}", p.paint(bold, "Findings"))?;
    for f in findings {
        let label = p.paint(f.severity.style(), &format!("{:<8}", f.severity.label()));
        writeln!(w, "  {label} {}", f.message)?;
        if let Some(fix) = &f.fix {
            writeln!(w, "  {:<8} fix: {fix}", "")?;
        }
    }
    Ok(())
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let snapshot = collect();
    let findings = analyze(&snapshot);
    let stdout = io::stdout();
    let result = if args.json {
        let mut out = stdout.lock();
        serde_json::to_writer_pretty(&mut out, &to_json(&snapshot, &findings))
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        let color = match args.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        };
        let mut out = io::BufWriter::new(stdout.lock());
        write_text(&mut out, &snapshot, &findings, color).and_then(|()| out.flush())
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Collection.
// ---------------------------------------------------------------------------

/// Kernel config options worth reporting, when the config is readable.
const CONFIG_KEYS: &[&str] = &[
    "CONFIG_BPF_SYSCALL",
    "CONFIG_BPF_EVENTS",
    "CONFIG_KPROBES",
    "CONFIG_FTRACE_SYSCALLS",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
    "CONFIG_CGROUP_BPF",
    "CONFIG_SECURITY_LOCKDOWN_LSM",
    "CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY",
    "CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY",
];

/// The selected options of a kernel config text (`y`/`m`/value, `n` for
/// "is not set"); options the text does not mention are left out.
pub fn parse_kernel_config(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(key) = rest.strip_suffix(" is not set") {
                if CONFIG_KEYS.contains(&key) {
                    out.insert(key.to_owned(), "n".to_owned());
                }
            }
        } else if let Some((k, v)) = line.split_once('=') {
            if CONFIG_KEYS.contains(&k) {
                out.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
    }
    out
}

/// `none [integrity] confidentiality` -> `integrity`.
pub fn parse_lockdown(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map(str::to_owned)
}

/// Lockdown from the kernel config, when it forces a mode (a floor: the
/// kernel command line may raise it).
#[cfg(target_os = "linux")]
fn lockdown_from_config(cfg: &BTreeMap<String, String>) -> Option<String> {
    let on = |k: &str| cfg.get(k).is_some_and(|v| v == "y");
    if on("CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY") {
        Some("confidentiality".into())
    } else if on("CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY") {
        Some("integrity".into())
    } else {
        None
    }
}

#[cfg(target_os = "linux")]
fn kernel_config(release: &str) -> BTreeMap<String, String> {
    if let Ok(text) = std::fs::read_to_string(format!("/boot/config-{release}")) {
        return parse_kernel_config(&text);
    }
    // /proc/config.gz (CONFIG_IKCONFIG_PROC): decompress with gzip if present.
    match std::process::Command::new("gzip")
        .args(["-dc", "/proc/config.gz"])
        .stderr(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            parse_kernel_config(&String::from_utf8_lossy(&out.stdout))
        }
        _ => BTreeMap::new(),
    }
}

/// tracefs at /sys/kernel/tracing per /proc/mounts: readable without root,
/// unlike the mount point itself.
#[cfg(target_os = "linux")]
fn tracefs_in_mounts() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next(), f.next(), f.next());
            dir == Some(crate::source::linux::TRACEFS) && fstype == Some("tracefs")
        })
    })
}

#[cfg(target_os = "linux")]
fn collect_caps() -> KernelCaps {
    use crate::source::linux::probe;
    use std::path::Path;

    let kernel = sysctl::read("kernel.osrelease")
        .ok()
        .flatten()
        .unwrap_or_else(|| "unknown".into());
    let privileged = probe::capabilities().can_load_bpf();
    let tracefs = if probe::tracefs_mounted() || tracefs_in_mounts() {
        Tracefs::Mounted
    } else if !privileged {
        Tracefs::NotMounted {
            reason: "mounting it needs root".into(),
        }
    } else {
        match probe::ensure_tracefs() {
            Ok(()) => Tracefs::MountedByPortwatch,
            Err(e) => Tracefs::NotMounted {
                reason: e.to_string(),
            },
        }
    };
    let hooks = if privileged {
        probe::probe_hooks().map_err(|e| format!("{e:#}"))
    } else {
        Err(crate::source::linux::CollectorError::NotPrivileged.to_string())
    };
    let ring_buffer = if privileged {
        probe::ring_buffer_supported()
    } else {
        Err("checking needs root".into())
    };
    let config = kernel_config(&kernel);
    let lockdown = match std::fs::read_to_string("/sys/kernel/security/lockdown")
        .ok()
        .and_then(|t| parse_lockdown(&t))
    {
        Some(mode) => Lockdown {
            mode: Some(mode),
            source: Some("/sys/kernel/security/lockdown".into()),
        },
        None => match lockdown_from_config(&config) {
            Some(mode) => Lockdown {
                mode: Some(mode),
                source: Some("forced by the kernel config; the command line may raise it".into()),
            },
            None => Lockdown::default(),
        },
    };
    KernelCaps {
        kernel,
        privileged,
        hooks,
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        tracefs,
        ring_buffer,
        lockdown,
        kprobe_pmu: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
        config,
    }
}

/// The port configuration of this network namespace, as doctor checks it
/// (also what `portwatch explain` looks at).
#[cfg(target_os = "linux")]
pub fn collect_ports() -> PortConfig {
    use crate::sockdiag::{Proto, SockDiag};
    use std::collections::HashMap;

    const TCP_TIME_WAIT: u8 = 6;
    const TCP_CLOSE: u8 = 7;
    const TCP_LISTEN: u8 = 10;

    let mut p = PortConfig {
        owners_complete: unsafe { libc::geteuid() } == 0,
        ..Default::default()
    };
    match sysctl::read(sysctl::PORT_RANGE) {
        Ok(Some(s)) => match sysctl::parse_port_range(&s) {
            Some((low, high)) => p.ephemeral_range = Some(EphemeralRange { low, high }),
            None => p
                .read_errors
                .push(format!("{}: unexpected value `{s}`", sysctl::PORT_RANGE)),
        },
        Ok(None) => p
            .read_errors
            .push(format!("{}: absent", sysctl::PORT_RANGE)),
        Err(e) => p.read_errors.push(format!("{}: {e}", sysctl::PORT_RANGE)),
    }
    match sysctl::read(sysctl::RESERVED_PORTS) {
        Ok(Some(s)) => match PortSet::parse(&s) {
            Ok(set) => p.reserved_ports = Some(set),
            Err(e) => p
                .read_errors
                .push(format!("{}: {e}", sysctl::RESERVED_PORTS)),
        },
        Ok(None) => p
            .read_errors
            .push(format!("{}: absent", sysctl::RESERVED_PORTS)),
        Err(e) => p
            .read_errors
            .push(format!("{}: {e}", sysctl::RESERVED_PORTS)),
    }
    p.tcp_tw_reuse = sysctl::read_number(sysctl::TW_REUSE);
    p.tcp_tw_reuse_delay_ms = sysctl::read_number(sysctl::TW_REUSE_DELAY);
    p.tcp_max_tw_buckets = sysctl::read_number(sysctl::MAX_TW_BUCKETS);
    p.tcp_fin_timeout = sysctl::read_number(sysctl::FIN_TIMEOUT);

    let sockets = SockDiag::new().and_then(|mut d| {
        let tcp = d.tcp_sockets((1 << TCP_LISTEN) | (1 << TCP_TIME_WAIT))?;
        let udp = d.udp_sockets()?;
        Ok((tcp, udp))
    });
    let (tcp, udp) = match sockets {
        Ok(s) => s,
        Err(e) => {
            p.sockets_error = Some(e.to_string());
            return p;
        }
    };

    let mut tw: HashMap<(IpAddr, u16), u32> = HashMap::new();
    let mut bound = Vec::new();
    for e in tcp {
        if e.state == TCP_TIME_WAIT {
            p.time_wait_total += 1;
            if p.ephemeral_range.is_some_and(|r| r.contains(e.sport)) {
                *tw.entry((e.daddr, e.dport)).or_default() += 1;
            }
        } else if e.state == TCP_LISTEN {
            bound.push(e);
        }
    }
    bound.extend(
        udp.into_iter()
            .filter(|e| e.proto == Proto::Udp && e.state == TCP_CLOSE && e.sport != 0),
    );
    let inodes: Vec<u64> = bound.iter().map(|e| e.inode).collect();
    let owners = crate::procfd::owners_of(&inodes);
    p.listeners = bound
        .into_iter()
        .map(|e| Listener {
            protocol: match e.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            },
            addr: e.saddr,
            port: e.sport,
            owners: owners
                .get(&e.inode)
                .map(|v| {
                    v.iter()
                        .map(|o| Owner {
                            pid: o.pid,
                            comm: o.comm.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    p.listeners
        .sort_by(|a, b| (a.port, a.protocol, a.addr).cmp(&(b.port, b.protocol, b.addr)));
    let mut tw: Vec<TimeWaitDest> = tw
        .into_iter()
        .map(|((daddr, dport), count)| TimeWaitDest {
            daddr,
            dport,
            count,
        })
        .collect();
    tw.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then((a.daddr, a.dport).cmp(&(b.daddr, b.dport)))
    });
    p.time_wait = tw;
    p
}

#[cfg(target_os = "linux")]
fn collect() -> Snapshot {
    Snapshot {
        caps: collect_caps(),
        ports: collect_ports(),
    }
}

#[cfg(not(target_os = "linux"))]
fn collect() -> Snapshot {
    Snapshot {
        caps: KernelCaps {
            kernel: "unknown".into(),
            privileged: false,
            hooks: Err("doctor's probes need Linux".into()),
            btf: false,
            tracefs: Tracefs::NotMounted {
                reason: "not Linux".into(),
            },
            ring_buffer: Err("not Linux".into()),
            lockdown: Lockdown::default(),
            kprobe_pmu: false,
            config: BTreeMap::new(),
        },
        ports: PortConfig::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{EventHooks, HookAttempt};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn attempt(how: &str, mechanism: HookKind, loads: bool) -> HookAttempt {
        HookAttempt {
            how: how.into(),
            mechanism,
            loads,
            reason: (!loads).then(|| format!("{how} refused")),
        }
    }

    fn event(what: &'static str, attempts: Vec<HookAttempt>, fallback: Option<&str>) -> EventHooks {
        let first = attempts.iter().find(|a| a.loads);
        EventHooks {
            event: what,
            chosen: first.map(|a| a.how.clone()).or(fallback.map(str::to_owned)),
            mechanism: first
                .map(|a| a.mechanism)
                .or(fallback.map(|_| HookKind::Tracepoint)),
            attempts,
        }
    }

    /// The hook table of the development host: no kprobes, fexit refused.
    fn dev_host_hooks() -> HookTable {
        let call = |what: &'static str| {
            event(
                what,
                vec![
                    attempt("fexit f", HookKind::Fexit, false),
                    attempt("kprobe+kretprobe f", HookKind::Kprobe, false),
                    attempt("tracepoint syscalls:x", HookKind::SyscallTracepoints, true),
                ],
                None,
            )
        };
        HookTable {
            events: vec![
                event(
                    "state",
                    vec![attempt(
                        "tracepoint sock:inet_sock_set_state",
                        HookKind::Tracepoint,
                        true,
                    )],
                    None,
                ),
                event(
                    "timewait",
                    vec![
                        attempt("fentry tcp_time_wait", HookKind::Fentry, false),
                        attempt("kprobe tcp_time_wait", HookKind::Kprobe, false),
                    ],
                    Some("state tracepoint + sock_diag confirmation"),
                ),
                call("bind"),
                call("connect"),
            ],
            extra: vec![attempt("cgroup", HookKind::CgroupSockAddr, true)],
            netns: None,
        }
    }

    /// A production-like kernel: fexit everywhere.
    fn fexit_hooks() -> HookTable {
        let call = |what: &'static str| {
            event(
                what,
                vec![
                    attempt("fexit f", HookKind::Fexit, true),
                    attempt("kprobe+kretprobe f", HookKind::Kprobe, true),
                    attempt("tracepoint syscalls:x", HookKind::SyscallTracepoints, true),
                ],
                None,
            )
        };
        HookTable {
            events: vec![
                event(
                    "state",
                    vec![attempt(
                        "tracepoint sock:inet_sock_set_state",
                        HookKind::Tracepoint,
                        true,
                    )],
                    None,
                ),
                event(
                    "timewait",
                    vec![attempt("fentry tcp_time_wait", HookKind::Fentry, true)],
                    Some("state tracepoint + sock_diag confirmation"),
                ),
                call("bind"),
                call("connect"),
            ],
            extra: vec![],
            netns: None,
        }
    }

    fn caps(hooks: Result<HookTable, String>) -> KernelCaps {
        KernelCaps {
            kernel: "6.18.0".into(),
            privileged: hooks.is_ok(),
            hooks,
            btf: true,
            tracefs: Tracefs::Mounted,
            ring_buffer: Ok(true),
            lockdown: Lockdown {
                mode: Some("integrity".into()),
                source: Some("test".into()),
            },
            kprobe_pmu: false,
            config: BTreeMap::new(),
        }
    }

    fn listener(protocol: &'static str, port: u16) -> Listener {
        Listener {
            protocol,
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
            owners: vec![Owner {
                pid: 4242,
                comm: "sqlservr".into(),
            }],
        }
    }

    fn ports(low: u16, high: u16, reserved: &str) -> PortConfig {
        PortConfig {
            ephemeral_range: Some(EphemeralRange { low, high }),
            reserved_ports: Some(PortSet::parse(reserved).unwrap()),
            tcp_tw_reuse: Some(2),
            tcp_tw_reuse_delay_ms: Some(1000),
            tcp_max_tw_buckets: Some(262144),
            tcp_fin_timeout: Some(60),
            owners_complete: true,
            ..Default::default()
        }
    }

    fn about<'a>(fs: &'a [Finding], needle: &str) -> Vec<&'a Finding> {
        fs.iter().filter(|f| f.message.contains(needle)).collect()
    }

    #[test]
    fn flags_a_listener_inside_the_range_with_the_exact_fix() {
        let mut p = ports(40000, 40100, "40010,40020-40030");
        p.listeners = vec![listener("tcp", 40050), listener("tcp", 1433)];
        let fs = port_findings(&p);
        let hit = about(&fs, "port 40050");
        assert_eq!(hit.len(), 1, "{fs:#?}");
        assert_eq!(hit[0].severity, Severity::Warning);
        assert!(
            hit[0].message.contains("sqlservr (pid 4242)"),
            "{}",
            hit[0].message
        );
        assert!(hit[0].message.contains("40000-40100"));
        let fix = hit[0].fix.as_deref().unwrap();
        assert!(fix.starts_with("portwatch reserve 40050"), "{fix}");
        // The sysctl alternative is merged with what is reserved already.
        assert!(
            fix.contains("sysctl -w net.ipv4.ip_local_reserved_ports=40010,40020-40030,40050"),
            "{fix}"
        );
        // 1433 is outside the range: not flagged.
        assert!(about(&fs, "port 1433").is_empty(), "{fs:#?}");
    }

    #[test]
    fn a_reserved_listener_is_not_flagged() {
        let mut p = ports(40000, 40100, "40040-40060");
        p.listeners = vec![listener("tcp", 40050)];
        assert!(about(&port_findings(&p), "40050").is_empty());
        // The range edges count as inside.
        let mut p = ports(40000, 40100, "");
        p.listeners = vec![listener("tcp", 40000), listener("tcp", 40100)];
        let fs = port_findings(&p);
        assert_eq!(about(&fs, "port 40000 ").len(), 1, "{fs:#?}");
        assert_eq!(about(&fs, "port 40100 ").len(), 1, "{fs:#?}");
    }

    #[test]
    fn one_finding_per_port_and_udp_is_only_information() {
        let mut p = ports(32768, 60999, "");
        let mut v6 = listener("tcp", 50000);
        v6.addr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        p.listeners = vec![listener("tcp", 50000), v6, listener("udp", 45000)];
        let fs = port_findings(&p);
        assert_eq!(about(&fs, "port 50000").len(), 1, "{fs:#?}");
        let udp = about(&fs, "UDP port 45000");
        assert_eq!(udp.len(), 1, "{fs:#?}");
        assert_eq!(udp[0].severity, Severity::Info);
        assert!(udp[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("portwatch reserve 45000"));
    }

    fn tw(p: &mut PortConfig, daddr: IpAddr, count: u32) {
        p.time_wait.push(TimeWaitDest {
            daddr,
            dport: 8080,
            count,
        });
        p.time_wait_total += u64::from(count);
    }

    #[test]
    fn time_wait_thresholds_against_the_range_capacity() {
        let remote = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
        let sev = |count: u32, reuse: u8, daddr: IpAddr| {
            // 101 ports, one reserved inside: capacity 100.
            let mut p = ports(40000, 40100, "40050,1433");
            p.tcp_tw_reuse = Some(reuse);
            tw(&mut p, daddr, count);
            let fs = port_findings(&p);
            let hit = about(&fs, "TIME_WAIT sockets towards");
            assert!(hit.len() <= 1);
            hit.first()
                .map(|f| (f.severity, f.message.clone(), f.fix.clone()))
        };
        assert_eq!(sev(50, 0, remote), None);
        let (s, msg, fix) = sev(51, 0, remote).unwrap();
        assert_eq!(s, Severity::Warning);
        assert!(
            msg.contains("10.0.0.7:8080") && msg.contains("51%") && msg.contains("of the 100"),
            "{msg}"
        );
        assert!(fix.unwrap().contains("net.ipv4.tcp_tw_reuse=1"));
        assert_eq!(sev(90, 0, remote).unwrap().0, Severity::Warning);
        assert_eq!(sev(91, 0, remote).unwrap().0, Severity::Critical);
        // tcp_tw_reuse=2 helps loopback only; =1 helps everyone: then at most a warning.
        assert_eq!(sev(95, 2, remote).unwrap().0, Severity::Critical);
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (s, msg, fix) = sev(95, 2, lo).unwrap();
        assert_eq!(s, Severity::Warning);
        assert!(msg.contains("tcp_tw_reuse=2"), "{msg}");
        assert!(!fix.unwrap().contains("tcp_tw_reuse=1"));
        assert_eq!(sev(95, 1, remote).unwrap().0, Severity::Warning);
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert_eq!(sev(95, 2, mapped).unwrap().0, Severity::Warning);
    }

    #[test]
    fn warns_about_a_narrow_or_mostly_reserved_range_and_tw_bucket_limit() {
        let fs = port_findings(&ports(40000, 40100, ""));
        assert_eq!(about(&fs, "has only 101 ports").len(), 1, "{fs:#?}");
        assert!(port_findings(&ports(32768, 60999, ""))
            .iter()
            .all(|f| !f.message.contains("has only")));
        let fs = port_findings(&ports(32768, 60999, "32768-50000"));
        assert_eq!(about(&fs, "reserved ports take 17233").len(), 1, "{fs:#?}");

        let mut p = ports(32768, 60999, "");
        p.tcp_max_tw_buckets = Some(1000);
        p.time_wait_total = 950;
        assert_eq!(
            about(&port_findings(&p), "tcp_max_tw_buckets=1000").len(),
            1
        );
        p.time_wait_total = 900;
        assert!(about(&port_findings(&p), "tcp_max_tw_buckets").is_empty());
    }

    #[test]
    fn explains_tw_reuse_and_corrects_the_myths() {
        let fs = port_findings(&ports(32768, 60999, ""));
        let reuse = about(&fs, "tcp_tw_reuse=2");
        assert_eq!(reuse.len(), 1);
        assert!(reuse[0].message.contains("loopback only") && reuse[0].message.contains("1000 ms"));
        let fin = about(&fs, "tcp_fin_timeout");
        assert_eq!(fin.len(), 1);
        assert_eq!(fin[0].severity, Severity::Info);
        assert!(fin[0].message.contains("fixed 60 s"));
        let res = about(&fs, "does not stop a program from binding it explicitly");
        assert_eq!(res.len(), 1);
        assert_eq!(res[0].severity, Severity::Info);
        // Before 6.13 there is no tcp_tw_reuse_delay: fine, just not mentioned.
        let mut p = ports(32768, 60999, "");
        p.tcp_tw_reuse_delay_ms = None;
        p.tcp_tw_reuse = Some(0);
        let fs = port_findings(&p);
        let reuse = about(&fs, "tcp_tw_reuse=0");
        assert!(
            reuse[0].message.contains("disabled")
                && !reuse[0].message.contains("tcp_tw_reuse_delay")
        );
        assert!(fs.iter().all(|f| f.severity == Severity::Info), "{fs:#?}");
    }

    #[test]
    fn syscall_tracepoints_warn_with_the_measured_tax() {
        let fs = capability_findings(&caps(Ok(dev_host_hooks())));
        let w = about(&fs, "syscall tracepoints");
        assert_eq!(w.len(), 1, "{fs:#?}");
        assert_eq!(w[0].severity, Severity::Warning);
        assert!(
            w[0].message.starts_with("bind and connect"),
            "{}",
            w[0].message
        );
        assert!(w[0].message.contains("measured on the development host"));
        assert!(w[0].message.contains("198 ns") && w[0].message.contains("244 ns"));
        assert!(w[0].fix.is_some());
        // The cgroup hooks load here: only a kernel where they do not is told so.
        assert_eq!(about(&fs, "cgroup sock_addr").len(), 0);
        assert_eq!(about(&fs, "tcp_time_wait cannot be hooked").len(), 1);
        assert!(
            fs.iter().all(|f| f.severity != Severity::Critical),
            "{fs:#?}"
        );

        // With fexit nothing taxes every syscall, and nothing is said about it.
        let fs = capability_findings(&caps(Ok(fexit_hooks())));
        assert!(about(&fs, "syscall").is_empty(), "{fs:#?}");
        assert!(about(&fs, "tcp_time_wait").is_empty(), "{fs:#?}");
    }

    #[test]
    fn a_missing_hook_or_refused_probe_is_critical() {
        let mut h = dev_host_hooks();
        h.events[0] = event(
            "state",
            vec![attempt(
                "tracepoint sock:inet_sock_set_state",
                HookKind::Tracepoint,
                false,
            )],
            None,
        );
        let fs = capability_findings(&caps(Ok(h)));
        let c = about(&fs, "no hook for state");
        assert_eq!(c.len(), 1, "{fs:#?}");
        assert_eq!(c[0].severity, Severity::Critical);
        assert!(c[0].message.contains("refused"));

        let mut k = caps(Err("loading the eBPF object failed: boom".into()));
        k.privileged = true;
        let fs = capability_findings(&k);
        assert_eq!(fs[0].severity, Severity::Critical, "{fs:#?}");

        let mut k = caps(Ok(fexit_hooks()));
        k.ring_buffer = Ok(false);
        k.lockdown.mode = Some("confidentiality".into());
        let fs = capability_findings(&k);
        assert_eq!(
            fs.iter()
                .filter(|f| f.severity == Severity::Critical)
                .count(),
            2,
            "{fs:#?}"
        );
    }

    #[test]
    fn unprivileged_says_what_is_missing_and_how_to_get_it() {
        let mut k = caps(Err("portwatch needs root".into()));
        k.tracefs = Tracefs::NotMounted {
            reason: "mounting it needs root".into(),
        };
        k.ring_buffer = Err("checking needs root".into());
        let fs = capability_findings(&k);
        let w = about(&fs, "hooks not probed");
        assert_eq!(w.len(), 1, "{fs:#?}");
        assert_eq!(w[0].fix.as_deref(), Some("sudo portwatch doctor"));
        assert!(
            fs.iter().all(|f| f.severity != Severity::Critical),
            "{fs:#?}"
        );

        let mut p = ports(32768, 60999, "");
        p.owners_complete = false;
        p.listeners = vec![Listener {
            owners: vec![],
            ..listener("tcp", 80)
        }];
        assert_eq!(about(&port_findings(&p), "show no owner").len(), 1);
    }

    #[test]
    fn lockdown_unknown_is_reported_with_a_way_to_check() {
        let mut k = caps(Ok(fexit_hooks()));
        k.lockdown = Lockdown::default();
        let fs = capability_findings(&k);
        let l = about(&fs, "lockdown mode unknown");
        assert_eq!(l.len(), 1);
        assert!(l[0].fix.as_deref().unwrap().contains("securityfs"));
    }

    #[test]
    fn analysis_puts_the_worst_first() {
        let mut k = caps(Ok(dev_host_hooks()));
        k.ring_buffer = Ok(false);
        let mut p = ports(40000, 40100, "");
        p.listeners = vec![listener("tcp", 40050)];
        let fs = analyze(&Snapshot { caps: k, ports: p });
        let sev: Vec<Severity> = fs.iter().map(|f| f.severity).collect();
        let mut sorted = sev.clone();
        sorted.sort_by_key(|s| std::cmp::Reverse(*s));
        assert_eq!(sev, sorted);
        assert_eq!(sev[0], Severity::Critical);
        assert_eq!(*sev.last().unwrap(), Severity::Info);
    }

    fn snapshot() -> Snapshot {
        let mut p = ports(40000, 40100, "40010");
        p.listeners = vec![listener("tcp", 40050)];
        tw(&mut p, IpAddr::V4(Ipv4Addr::LOCALHOST), 3);
        Snapshot {
            caps: caps(Ok(dev_host_hooks())),
            ports: p,
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let s = snapshot();
        let fs = analyze(&s);
        let v = to_json(&s, &fs);
        let c = &v["capabilities"];
        assert_eq!(c["events"]["bind"]["mechanism"], "syscall_tracepoints");
        assert_eq!(c["events"]["state"]["mechanism"], "tracepoint");
        assert_eq!(c["events"]["bind"]["attempts"].as_array().unwrap().len(), 3);
        assert_eq!(c["mechanisms"]["kprobe"]["loads"], false);
        assert_eq!(
            c["mechanisms"]["kprobe"]["reason"],
            "kprobe tcp_time_wait refused"
        );
        assert_eq!(c["mechanisms"]["syscall_tracepoints"]["loads"], true);
        assert_eq!(c["mechanisms"]["cgroup_sock_addr"]["loads"], true);
        assert_eq!(c["probed"], true);
        assert_eq!(c["tracefs"]["state"], "mounted");
        assert!(c["trace_would_attach"]
            .as_str()
            .unwrap()
            .starts_with("state=tracepoint sock:inet_sock_set_state, timewait=state tracepoint + sock_diag confirmation, bind="));
        let p = &v["port_config"];
        assert_eq!(p["ephemeral_range"]["low"], 40000);
        assert_eq!(p["ephemeral_range_size"], 101);
        assert_eq!(p["capacity_per_destination"], 100);
        assert_eq!(p["reserved_ports"], "40010");
        assert_eq!(p["listeners"][0]["port"], 40050);
        assert_eq!(p["time_wait"][0]["count"], 3);
        let f = v["findings"].as_array().unwrap();
        assert_eq!(f.len(), fs.len());
        for x in f {
            assert!(["info", "warning", "critical"].contains(&x["severity"].as_str().unwrap()));
            assert!(x["message"].is_string());
            assert!(x["fix"].is_string() || x["fix"].is_null());
        }

        let mut un = snapshot();
        un.caps = caps(Err("needs root".into()));
        let v = to_json(&un, &analyze(&un));
        assert_eq!(v["capabilities"]["probed"], false);
        assert_eq!(v["capabilities"]["not_probed_reason"], "needs root");
        assert!(v["capabilities"]["events"].is_null());
    }

    #[test]
    fn text_report_has_the_tables_and_colours_only_on_request() {
        let s = snapshot();
        let fs = analyze(&s);
        let mut plain = Vec::new();
        write_text(&mut plain, &s, &fs, false).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert!(!plain.contains('\x1b'));
        for needle in [
            "What `portwatch trace` would attach",
            "  bind       tracepoint syscalls:x",
            "  kprobe               no     kprobe tcp_time_wait refused",
            "  syscall tracepoints  yes\n",
            "ephemeral range      40000-40100 (101 ports, 100 usable per destination)",
            "reserved ports       40010 (1 ports)",
            "listening            40050/tcp",
            "TIME_WAIT            3; busiest 127.0.0.1:8080 with 3",
            "WARNING  port 40050",
            "fix: portwatch reserve 40050",
        ] {
            assert!(plain.contains(needle), "missing {needle:?} in:\n{plain}");
        }
        let mut coloured = Vec::new();
        write_text(&mut coloured, &s, &fs, true).unwrap();
        let coloured = String::from_utf8(coloured).unwrap();
        assert!(coloured.contains(&Severity::Warning.style().paint("WARNING ").to_string()));
    }

    #[test]
    fn reads_kernel_config_and_lockdown() {
        let cfg = parse_kernel_config(
            "# comment\nCONFIG_BPF_SYSCALL=y\n# CONFIG_KPROBES is not set\nCONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY=y\nCONFIG_OTHER=y\n",
        );
        assert_eq!(cfg.get("CONFIG_BPF_SYSCALL").map(String::as_str), Some("y"));
        assert_eq!(cfg.get("CONFIG_KPROBES").map(String::as_str), Some("n"));
        assert!(!cfg.contains_key("CONFIG_OTHER"));
        assert_eq!(lockdown_from_config(&cfg).as_deref(), Some("integrity"));
        assert_eq!(lockdown_from_config(&BTreeMap::new()), None);
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality").as_deref(),
            Some("none")
        );
        assert_eq!(parse_lockdown(""), None);
    }
}
