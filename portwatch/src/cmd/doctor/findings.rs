//! Judging the facts: a pure function from [`Facts`] to findings, each with
//! a severity and, where there is one, the fix. Tested from recorded facts
//! (see the tests module), so it needs neither root nor a particular kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::facts::{EphemeralRange, Facts, KernelCaps, LinuxKernel, Listener, PortConfig, Tracefs};
use crate::model::Protocol;
use crate::source::HookKind;
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
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
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

/// Every finding for the facts, most severe first.
pub fn analyze(facts: &Facts) -> Vec<Finding> {
    let mut out = capability_findings(&facts.caps);
    out.extend(port_findings(&facts.ports));
    // Stable: within a severity, capabilities first, then ports, as generated.
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// Findings about the kernel: what it lets portwatch hook, and on Linux
/// the features the eBPF programs need.
pub fn capability_findings(c: &KernelCaps) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(l) = &c.linux {
        out.extend(tracefs_finding(&l.tracefs, c.privileged));
    }
    out.extend(hook_findings(c));
    if let Some(l) = &c.linux {
        out.extend(linux_findings(l));
    }
    out
}

fn tracefs_finding(tracefs: &Tracefs, privileged: bool) -> Option<Finding> {
    use Severity::*;
    match tracefs {
        Tracefs::Mounted => None,
        Tracefs::MountedByPortwatch => Some(Finding::new(
            Info,
            "tracefs was not mounted; doctor mounted it at /sys/kernel/tracing, as `portwatch trace` does",
            None,
        )),
        Tracefs::NotMounted { reason } => Some(Finding::new(
            if privileged { Critical } else { Warning },
            format!("tracefs is not mounted at /sys/kernel/tracing ({reason}); tracepoints cannot attach without it"),
            Some("sudo mount -t tracefs tracefs /sys/kernel/tracing".into()),
        )),
    }
}

fn hook_findings(c: &KernelCaps) -> Vec<Finding> {
    use Severity::*;
    let mut out = Vec::new();
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
    out
}

fn linux_findings(l: &LinuxKernel) -> Vec<Finding> {
    use Severity::*;
    let mut out = Vec::new();
    if !l.btf {
        out.push(Finding::new(
            Warning,
            "no kernel BTF (/sys/kernel/btf/vmlinux): fentry/fexit hooks cannot load",
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y".into()),
        ));
    }
    match &l.ring_buffer {
        Ok(true) => {}
        Ok(false) => out.push(Finding::new(
            Critical,
            "this kernel has no BPF ring buffer (Linux 5.8+), which `portwatch trace` needs",
            Some("run on Linux 5.8 or later".into()),
        )),
        Err(_) => {}
    }
    match l.lockdown.mode.as_deref() {
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

use crate::model::endpoint;

/// The exact commands that reserve `port`, merged with what is reserved.
pub fn reserve_fix(port: u16, reserved: Option<&PortSet>) -> String {
    reserve_fix_for(&[port], &[], reserved)
}

/// The exact commands that reserve `ports`: `portwatch reserve`, which
/// merges with what is reserved, or the sysctl with the whole merged value:
/// what is reserved, `ports`, and `also` (the other ports doctor asks to
/// reserve), so that following one fix never drops a port another keeps.
pub fn reserve_fix_for(ports: &[u16], also: &[u16], reserved: Option<&PortSet>) -> String {
    let merged = reserved
        .cloned()
        .unwrap_or_default()
        .union(&PortSet::from_spans(
            ports.iter().chain(also).map(|p| PortSpan::single(*p)),
        ));
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "portwatch reserve {} --persist  (or: sysctl -w {}={merged}, and persist it in /etc/sysctl.d/)",
        ports.join(" "),
        sysctl::RESERVED_PORTS
    )
}

/// `40050 (tcp, nginx (pid 12))` for each port, joined as a list.
fn ports_and_owners(at_risk: &[(u16, Vec<&Listener>)]) -> String {
    let each: Vec<String> = at_risk
        .iter()
        .map(|(port, ls)| {
            let mut protos: Vec<&str> = ls.iter().map(|l| l.protocol.name()).collect();
            protos.sort();
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
            format!("{port} ({}, {who})", protos.join("+"))
        })
        .collect();
    match each.as_slice() {
        [rest @ .., last] if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => each.join(""),
    }
}

/// Listeners inside the ephemeral range that are not reserved: one finding
/// for the TCP ports and one for the UDP-only ones, with one fix each that
/// keeps every port either asks for.
fn unreserved_listeners(p: &PortConfig, range: EphemeralRange) -> Vec<Finding> {
    let reserved = p.reserved_ports.as_ref();
    let mut at_risk: BTreeMap<u16, Vec<&Listener>> = BTreeMap::new();
    for l in &p.listeners {
        if range.contains(l.port) && !reserved.is_some_and(|r| r.contains(l.port)) {
            at_risk.entry(l.port).or_default().push(l);
        }
    }
    let (tcp, udp): (Vec<_>, Vec<_>) = at_risk
        .into_iter()
        .partition(|(_, ls)| ls.iter().any(|l| l.protocol == Protocol::Tcp));
    let tcp_ports: Vec<u16> = tcp.iter().map(|(p, _)| *p).collect();
    let udp_ports: Vec<u16> = udp.iter().map(|(p, _)| *p).collect();
    let mut out = Vec::new();
    if !tcp.is_empty() {
        let (these, are) = if tcp.len() == 1 {
            ("port", "is")
        } else {
            ("ports", "are")
        };
        out.push(Finding::new(
            Severity::Warning,
            format!(
                "{these} {} {are} inside the ephemeral range {}-{} and not reserved: when the service restarts or the machine boots, an outgoing connection can take the port first and the service's bind() fails with EADDRINUSE",
                ports_and_owners(&tcp),
                range.low,
                range.high
            ),
            Some(reserve_fix_for(&tcp_ports, &udp_ports, reserved)),
        ));
    }
    if !udp.is_empty() {
        let (these, are) = if udp.len() == 1 {
            ("UDP port", "is")
        } else {
            ("UDP ports", "are")
        };
        out.push(Finding::new(
            Severity::Info,
            format!(
                "{these} {} {are} bound inside the ephemeral range {}-{} and not reserved: if it is a fixed service port, an outgoing connection can take it while the service is down (if the kernel picked it for a client socket, ignore this)",
                ports_and_owners(&udp).replace(" (udp, ", " ("),
                range.low,
                range.high
            ),
            Some(reserve_fix_for(&udp_ports, &tcp_ports, reserved)),
        ));
    }
    out
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

    if let Some(range) = p.ephemeral_range {
        out.extend(unreserved_listeners(p, range));

        let size = range.size();
        let capacity = p.capacity().unwrap_or(size);
        if size < NARROW_RANGE {
            out.push(Finding::new(
                Warning,
                format!(
                    "the ephemeral range {}-{} has only {}: at most {} per destination",
                    range.low,
                    range.high,
                    crate::plural(size, "port", "ports"),
                    crate::plural(
                        capacity,
                        "concurrent or TIME_WAIT connection",
                        "concurrent or TIME_WAIT connections"
                    )
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
