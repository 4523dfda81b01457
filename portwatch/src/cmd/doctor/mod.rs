//! `portwatch doctor`: what this kernel lets portwatch hook, and whether the
//! port configuration invites ephemeral-port trouble.
//!
//! Three parts, each usable alone:
//! - [`facts`]: what is true of the machine, a plain struct that serialises
//!   both ways; [`linux`] collects it on Linux (a Windows collector fills
//!   the same struct);
//! - [`findings`]: judging the facts, a pure function, tested from facts
//!   recorded on real machines (`portwatch doctor --facts` prints them);
//! - [`render`]: the text report and the JSON document.

pub mod facts;
pub mod findings;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod render;
#[cfg(test)]
mod tests;

use std::io::{self, Write};

pub use facts::{
    EphemeralRange, Facts, KernelCaps, LinuxKernel, Listener, Lockdown, Owner, PortConfig,
    TimeWaitDest, Tracefs,
};
pub use findings::{
    analyze, capability_findings, port_findings, reserve_fix, tw_reuse_meaning, Finding, Severity,
};
#[cfg(target_os = "linux")]
pub use linux::collect_ports;
pub use render::{to_json, write_text};

use crate::cli::DoctorArgs;

/// The facts, with the port configuration read in namespace `netns`
/// (`--netns`) when given: its ranges, reserved ports and listeners.
#[cfg(target_os = "linux")]
fn collect(netns: Option<&str>) -> anyhow::Result<Facts> {
    let Some(spec) = netns else {
        return Ok(linux::collect());
    };
    let (_, fd) = crate::system::open_netns(spec).map_err(anyhow::Error::msg)?;
    // sock_diag sockets and /proc/sys/net belong to the namespace of the
    // thread that opens them.
    let ports = crate::system::run_in(Some(&*fd), || Ok(linux::collect_ports()))
        .map_err(|e| anyhow::anyhow!("--netns {spec}: cannot enter the namespace: {e}"))?;
    let mut facts = linux::collect();
    facts.ports = ports;
    Ok(facts)
}

#[cfg(not(target_os = "linux"))]
fn collect(_netns: Option<&str>) -> anyhow::Result<Facts> {
    Ok(Facts {
        caps: KernelCaps {
            kernel: "unknown".into(),
            privileged: false,
            hooks: Err("doctor's probes need Linux".into()),
            linux: None,
        },
        ports: PortConfig::default(),
    })
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let facts = collect(args.netns.as_deref())?;
    let stdout = io::stdout();
    let result = if args.facts {
        let mut out = stdout.lock();
        serde_json::to_writer_pretty(&mut out, &facts)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else if args.json {
        let findings = analyze(&facts);
        let mut out = stdout.lock();
        serde_json::to_writer_pretty(&mut out, &to_json(&facts, &findings))
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        let findings = analyze(&facts);
        let color = crate::term::color(args.color);
        let width = crate::term::stdout_width();
        let mut out = io::BufWriter::new(stdout.lock());
        write_text(&mut out, &facts, &findings, color, width).and_then(|()| out.flush())
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
