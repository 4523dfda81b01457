//! Doctor's report: text for a terminal, JSON for scripts.

use std::io::{self, Write};

use nu_ansi_term::{Color, Style};
use serde_json::{json, Value};

use super::facts::{Facts, KernelCaps, LinuxKernel, PortConfig, Tracefs};
use super::findings::{tw_reuse_meaning, Finding, Severity};
use crate::escape::visible;

pub fn severity_style(s: Severity) -> Style {
    match s {
        Severity::Info => Color::Cyan.normal(),
        Severity::Warning => Color::Yellow.bold(),
        Severity::Critical => Color::Red.bold(),
    }
}

use crate::model::endpoint;

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
    let l = c.linux.as_ref();
    let (ring_ok, ring_reason) = match l.map(|l| &l.ring_buffer) {
        Some(Ok(b)) => (Value::Bool(*b), Value::Null),
        Some(Err(e)) => (Value::Null, Value::String(e.clone())),
        None => (Value::Null, Value::Null),
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
        "btf": l.map(|l| l.btf),
        "tracefs": l.map(|l| &l.tracefs),
        "ring_buffer": {"supported": ring_ok, "reason": ring_reason},
        "lockdown": l.map(|l| &l.lockdown),
        "kprobe_pmu": l.map(|l| l.kprobe_pmu),
        "kernel_config": l.map(|l| &l.config),
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

pub fn to_json(facts: &Facts, findings: &[Finding]) -> Value {
    json!({
        "capabilities": capabilities_json(&facts.caps),
        "port_config": port_config_json(&facts.ports),
        "findings": findings,
    })
}

/// Colours, and the terminal's width to fit lines to (None: full lines).
struct Painter {
    color: bool,
    width: Option<usize>,
}

impl Painter {
    /// `text` on as many lines as the width needs, continuations indented
    /// by `indent`; the first `token` of the first line painted `style`.
    fn line(
        &self,
        w: &mut impl Write,
        text: &str,
        indent: usize,
        paint: Option<(&str, Style)>,
    ) -> io::Result<()> {
        let lines = match self.width {
            Some(width) => crate::term::wrap(text, width, indent),
            None => vec![text.to_owned()],
        };
        for (i, l) in lines.into_iter().enumerate() {
            let l = match paint {
                Some((token, style)) if i == 0 => l.replacen(token, &self.paint(style, token), 1),
                _ => l,
            };
            writeln!(w, "{}", l.trim_end())?;
        }
        Ok(())
    }

    /// `  NAME                 value`, the value's continuations under it.
    fn field(&self, w: &mut impl Write, name: &str, value: &str) -> io::Result<()> {
        self.line(w, &format!("  {name:<20} {value}"), 23, None)
    }

    fn bold(&self, s: &str) -> String {
        self.paint(Style::new().bold(), s)
    }

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

/// The report as text; `width` is the terminal's (None: full lines).
pub fn write_text(
    w: &mut impl Write,
    facts: &Facts,
    findings: &[Finding],
    color: bool,
    width: Option<usize>,
) -> io::Result<()> {
    let p = Painter { color, width };
    let c = &facts.caps;
    writeln!(
        w,
        "{} (kernel {}, {})",
        p.bold("portwatch doctor"),
        c.kernel,
        if c.privileged {
            "privileged"
        } else {
            "unprivileged: hooks not probed"
        }
    )?;
    write_hooks(w, &p, c)?;
    if let Some(l) = &c.linux {
        write_kernel(w, &p, l)?;
    }
    write_ports(w, &p, &facts.ports)?;
    write_findings(w, &p, findings)
}

fn write_hooks(w: &mut impl Write, p: &Painter, c: &KernelCaps) -> io::Result<()> {
    writeln!(w)?;
    writeln!(w, "{}", p.bold("What `portwatch trace` would attach"))?;
    let h = match &c.hooks {
        Ok(h) => h,
        Err(e) => return writeln!(w, "  not probed: {e}"),
    };
    for e in &h.events {
        let chosen = e.chosen.as_deref().unwrap_or("nothing loads");
        writeln!(w, "  {:<10} {chosen}", e.event)?;
    }
    if let Some(netns) = &h.netns {
        writeln!(w, "  {:<10} {netns}", "netns")?;
    }
    writeln!(w)?;
    writeln!(w, "{}", p.bold("Mechanisms"))?;
    writeln!(w, "  {:<20} {:<6} REASON", "MECHANISM", "LOADS")?;
    for m in h.support() {
        let loads = format!("{:<6}", yes_no(m.loads));
        let style = if m.loads {
            Color::Green.normal()
        } else {
            Color::Red.normal()
        };
        let reason = m.reason.unwrap_or_default();
        let line = format!("  {:<20} {loads} {reason}", m.mechanism.label());
        p.line(w, &line, 30, Some((&loads, style)))?;
    }
    Ok(())
}

fn write_kernel(w: &mut impl Write, p: &Painter, l: &LinuxKernel) -> io::Result<()> {
    writeln!(w)?;
    writeln!(w, "{}", p.bold("Kernel"))?;
    let btf = if l.btf {
        "present (/sys/kernel/btf/vmlinux)"
    } else {
        "absent"
    };
    p.field(w, "BTF", btf)?;
    let tracefs = match &l.tracefs {
        Tracefs::Mounted => "mounted".to_owned(),
        Tracefs::MountedByPortwatch => "mounted by doctor (was not mounted)".to_owned(),
        Tracefs::NotMounted { reason } => format!("not mounted ({reason})"),
    };
    p.field(w, "tracefs", &tracefs)?;
    let ring = match &l.ring_buffer {
        Ok(true) => "supported".to_owned(),
        Ok(false) => "unsupported".to_owned(),
        Err(e) => format!("unknown ({e})"),
    };
    p.field(w, "BPF ring buffer", &ring)?;
    let lockdown = match (&l.lockdown.mode, &l.lockdown.source) {
        (Some(m), Some(src)) => format!("{m} ({src})"),
        (Some(m), None) => m.clone(),
        _ => "unknown".to_owned(),
    };
    p.field(w, "lockdown", &lockdown)?;
    let pmu = if l.kprobe_pmu {
        "present"
    } else {
        "absent (/sys/bus/event_source/devices/kprobe)"
    };
    p.field(w, "kprobe PMU", pmu)?;
    if !l.config.is_empty() {
        let cfg = l
            .config
            .iter()
            .map(|(k, v)| format!("{}={v}", k.trim_start_matches("CONFIG_")))
            .collect::<Vec<_>>()
            .join(" ");
        p.field(w, "config", &cfg)?;
    }
    Ok(())
}

fn write_ports(w: &mut impl Write, p: &Painter, pc: &PortConfig) -> io::Result<()> {
    writeln!(w)?;
    writeln!(
        w,
        "{}",
        p.bold("Port configuration (this network namespace)")
    )?;
    let range = match pc.ephemeral_range {
        Some(r) => format!(
            "{}-{} ({}, {} usable per destination)",
            r.low,
            r.high,
            crate::plural(r.size(), "port", "ports"),
            pc.capacity().unwrap_or(0)
        ),
        None => "unknown".to_owned(),
    };
    p.field(w, "ephemeral range", &range)?;
    let reserved = match &pc.reserved_ports {
        Some(r) if r.is_empty() => "(none)".to_owned(),
        Some(r) => format!("{r} ({})", crate::plural(r.count(), "port", "ports")),
        None => "unknown".to_owned(),
    };
    p.field(w, "reserved ports", &reserved)?;
    let mut listening: Vec<String> = pc
        .listeners
        .iter()
        .map(|l| format!("{}/{}", l.port, l.protocol.name()))
        .collect();
    listening.sort();
    listening.dedup();
    let listening = if listening.is_empty() {
        "(none)".to_owned()
    } else {
        listening.join(" ")
    };
    p.field(w, "listening", &listening)?;
    let busiest = pc
        .time_wait
        .first()
        .map(|t| format!("; busiest {} with {}", endpoint(t.daddr, t.dport), t.count))
        .unwrap_or_default();
    p.field(w, "TIME_WAIT", &format!("{}{busiest}", pc.time_wait_total))?;
    let opt = |v: Option<u64>, unit: &str| {
        v.map(|v| format!("{v}{unit}"))
            .unwrap_or_else(|| "absent".into())
    };
    let reuse = pc
        .tcp_tw_reuse
        .map(|v| format!("{v} ({})", tw_reuse_meaning(v)))
        .unwrap_or_else(|| "absent".into());
    for (name, value) in [
        ("tcp_tw_reuse", reuse),
        ("tcp_tw_reuse_delay", opt(pc.tcp_tw_reuse_delay_ms, " ms")),
        ("tcp_max_tw_buckets", opt(pc.tcp_max_tw_buckets, "")),
        ("tcp_fin_timeout", opt(pc.tcp_fin_timeout, " s")),
    ] {
        p.field(w, name, &value)?;
    }
    Ok(())
}

fn write_findings(w: &mut impl Write, p: &Painter, findings: &[Finding]) -> io::Result<()> {
    writeln!(w)?;
    writeln!(w, "{}", p.bold("Findings"))?;
    for f in findings {
        let label = format!("{:<8}", f.severity.label());
        // Messages quote process names, which their processes chose.
        let message = format!("  {label} {}", visible(&f.message));
        p.line(w, &message, 11, Some((&label, severity_style(f.severity))))?;
        if let Some(fix) = &f.fix {
            p.line(w, &format!("  {:<8} fix: {}", "", visible(fix)), 16, None)?;
        }
    }
    Ok(())
}
