//! What the machine shows about an explained message: the sockets on its
//! port, the ephemeral range, the sockets towards its destination, doctor's
//! port checks; turned into [`Check`]s and into fixes reordered by that
//! evidence. Pure: `cmd::explain` collects a [`Machine`] (on Linux) and the
//! tests inject one.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::table::{FIX_FIND_HOLDER, FIX_RESERVE, FIX_REUSEADDR};
use super::{Check, Condition, Explanation, Values};
use crate::cmd::doctor::{self, Finding, PortConfig, Severity};
use crate::escape::visible;

/// Sockets listed one per line before the rest are only counted.
const MAX_HOLDER_LINES: usize = 8;

/// One socket on the port in question, as `who` sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub protocol: &'static str,
    pub state: String,
    pub local: String,
    pub remote: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub unit: Option<String>,
    /// Why there is no owner, or who the journal says created it.
    pub note: Option<String>,
}

/// What was found on this machine.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub hostname: Option<String>,
    pub ports: Option<PortConfig>,
    /// The sockets whose local port is the message's port.
    pub holders: Option<Result<Vec<Holder>, String>>,
    /// What `who` could not see (other users' processes without root).
    pub holders_missing: Option<String>,
    /// TCP sockets towards the message's destination, counted by state.
    pub towards: Option<Result<BTreeMap<String, u32>, String>>,
    /// Whether the message's address is one of this machine's.
    pub address_local: Option<Result<bool, String>>,
    /// `net.ipv4.ip_nonlocal_bind` (or the IPv6 one) and its value.
    pub nonlocal_bind: Option<(&'static str, Option<u8>)>,
}

pub fn conditions(x: &Explanation) -> Vec<Condition> {
    let mut v: Vec<Condition> = x.condition.into_iter().chain(x.other_condition).collect();
    v.dedup();
    v
}

/// The message's address as an IP address, when it is one.
pub fn ip_of(x: &Explanation) -> Option<IpAddr> {
    let a = x.address.as_deref()?;
    a.split('%').next()?.parse().ok()
}

pub use crate::model::endpoint;

/// One line per socket, saying what it is to the port: a listener, a
/// client's ephemeral port, an accepted connection; TIME_WAIT remnants,
/// which can be many, in one line.
fn holder_lines(holders: &[Holder], port: u16) -> Vec<String> {
    if holders.is_empty() {
        return vec![format!("nothing holds {port} now: the holder is gone (a client's connection ended, a TIME_WAIT remnant expired after 60 s); catch it next time with portwatch trace --port {port} --errors")];
    }
    let listened = holders.iter().any(|h| h.state == "LISTEN");
    let (remnants, live): (Vec<&Holder>, Vec<&Holder>) =
        holders.iter().partition(|h| h.state == "TIME_WAIT");
    let mut out: Vec<String> = live
        .iter()
        .take(MAX_HOLDER_LINES)
        .map(|h| {
            let who = match (&h.comm, h.pid) {
                (Some(c), Some(p)) => format!("{} (pid {p})", visible(c)),
                _ => h
                    .note
                    .as_deref()
                    .map(visible)
                    .unwrap_or_default()
                    .into_owned(),
            };
            let unit = h
                .unit
                .as_deref()
                .map_or(String::new(), |u| format!(", {}", visible(u)));
            let role = match h.state.as_str() {
                "LISTEN" => "a server listening on it".to_owned(),
                "UNCONN" => "a bound UDP socket".to_owned(),
                _ if h.protocol == "tcp" && !listened => format!(
                    "an outgoing connection to {} that has {port} as its local (ephemeral) port",
                    h.remote
                ),
                _ => "a connection accepted by the listener".to_owned(),
            };
            format!(
                "{} {} {} -> {}  {who}{unit}: {role}",
                h.protocol, h.state, h.local, h.remote
            )
        })
        .collect();
    if live.len() > MAX_HOLDER_LINES {
        out.push(format!(
            "... and {} more (portwatch who {port})",
            live.len() - MAX_HOLDER_LINES
        ));
    }
    if let Some(first) = remnants.first() {
        let creator = remnants
            .iter()
            .find_map(|h| h.note.as_deref().filter(|n| n.starts_with("created by")))
            .map_or(String::new(), |c| format!(", {}", visible(c)));
        let more = match remnants.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        out.push(format!(
            "{} TIME_WAIT {} of closed connections (to {}{more}{creator}): gone within 60 s; SO_REUSEADDR set before bind() lets a server bind past them",
            remnants.len(),
            if remnants.len() == 1 { "remnant" } else { "remnants" },
            first.remote,
        ));
    }
    out
}

fn range_lines(p: &PortConfig, port: Option<u16>) -> (Vec<String>, bool) {
    let Some(r) = p.ephemeral_range else {
        return (
            vec!["the ephemeral range could not be read".to_owned()],
            false,
        );
    };
    let reserved = p.reserved_ports.clone().unwrap_or_default();
    let reserved_text = if reserved.is_empty() {
        "none reserved".to_owned()
    } else {
        format!("reserved: {reserved}")
    };
    let mut out = vec![format!(
        "{}-{} ({} port{}, {} usable per destination), {reserved_text}",
        r.low,
        r.high,
        r.size(),
        if r.size() == 1 { "" } else { "s" },
        p.capacity().unwrap_or(0)
    )];
    let mut at_risk = false;
    if let Some(port) = port {
        out.push(if !r.contains(port) {
            format!("{port} lies outside the range: the kernel never hands it out as an ephemeral port here, so a client holds it only by binding it explicitly")
        } else if reserved.contains(port) {
            format!("{port} lies inside the range but is reserved: no client is handed it")
        } else {
            at_risk = true;
            format!("{port} lies inside the range and is not reserved: an outgoing connection can be handed {port} whenever it is free, e.g. while the service restarts or before it starts at boot")
        });
    }
    (out, at_risk)
}

/// doctor's port checks on the part of the configuration the message is
/// about: warnings and worse only.
fn doctor_findings(
    p: &PortConfig,
    cond: Condition,
    port: Option<u16>,
    dest: Option<(IpAddr, u16)>,
) -> Vec<Finding> {
    let mut narrowed = p.clone();
    match cond {
        Condition::PortHeld => {
            narrowed.listeners.retain(|l| Some(l.port) == port);
            narrowed.time_wait.clear();
        }
        _ => {
            narrowed.listeners.clear();
            if let Some((a, pt)) = dest {
                narrowed.time_wait.retain(|t| t.daddr == a && t.dport == pt);
            }
        }
    }
    doctor::port_findings(&narrowed)
        .into_iter()
        .filter(|f| f.severity >= Severity::Warning)
        .collect()
}

fn check(what: impl Into<String>, command: Option<String>, result: Vec<String>) -> Check {
    Check {
        what: what.into(),
        command,
        result,
    }
}

/// Adds what the machine shows to `x` (checks, and fixes reordered by the
/// evidence); returns doctor's findings on the relevant configuration.
pub fn add_machine(x: &mut Explanation, m: &Machine) -> Vec<Finding> {
    let mut findings: Vec<Finding> = Vec::new();
    let values = Values {
        port: x.port,
        addr: x.address.clone(),
    };
    let dest = ip_of(x).zip(x.port);
    for cond in conditions(x) {
        match cond {
            Condition::PortHeld => {
                if x.port.is_none() && m.ports.is_some() {
                    x.checks.push(check(
                        "the sockets on the port: the message names no port",
                        None,
                        vec!["run again with --port PORT to see who holds it".to_owned()],
                    ));
                }
                if let (Some(port), Some(h)) = (x.port, &m.holders) {
                    let mut result = match h {
                        Ok(h) => holder_lines(h, port),
                        Err(e) => vec![format!("could not list the sockets: {e}")],
                    };
                    result.extend(m.holders_missing.iter().map(|n| format!("note: {n}")));
                    x.checks.push(check(
                        format!("the sockets on port {port} now"),
                        Some(format!("portwatch who {port}")),
                        result,
                    ));
                    if let Ok(h) = h {
                        // Looked at already: no need to tell the user to.
                        let find = values.render(FIX_FIND_HOLDER);
                        x.fixes.retain(|f| *f != find);
                        let only_tw = !h.is_empty() && h.iter().all(|s| s.state == "TIME_WAIT");
                        if only_tw {
                            // The remnants are the whole story: SO_REUSEADDR first.
                            if x.fixes.iter().any(|f| f.contains("SO_REUSEADDR")) {
                                x.fixes.sort_by_key(|f| !f.contains("SO_REUSEADDR"));
                            } else {
                                x.fixes.insert(0, FIX_REUSEADDR.to_owned());
                            }
                        }
                    }
                }
                if let Some(p) = &m.ports {
                    let (lines, at_risk) = range_lines(p, x.port);
                    x.checks.push(check(
                        "the ephemeral range and reserved ports",
                        Some(format!(
                            "sysctl {} {}",
                            crate::sysctl::PORT_RANGE,
                            crate::sysctl::RESERVED_PORTS
                        )),
                        lines,
                    ));
                    if let (Some(port), Some(_)) = (x.port, p.ephemeral_range) {
                        // Settled by the range: the exact command, or nothing.
                        let generic = values.render(FIX_RESERVE);
                        let at = x.fixes.iter().position(|f| *f == generic);
                        x.fixes.retain(|f| *f != generic);
                        if at_risk {
                            let client_holds = matches!(&m.holders, Some(Ok(h)) if h.iter().any(|s| s.protocol == "tcp" && s.state != "LISTEN" && s.state != "TIME_WAIT"));
                            let at = if client_holds {
                                0
                            } else {
                                at.unwrap_or(x.fixes.len()).min(x.fixes.len())
                            };
                            x.fixes
                                .insert(at, doctor::reserve_fix(port, p.reserved_ports.as_ref()));
                        }
                    }
                    findings.extend(doctor_findings(p, cond, x.port, dest));
                }
            }
            Condition::EphemeralExhausted => {
                if let Some(p) = &m.ports {
                    x.checks.push(check(
                        "the ephemeral range and reserved ports",
                        Some(format!(
                            "sysctl {} {}",
                            crate::sysctl::PORT_RANGE,
                            crate::sysctl::RESERVED_PORTS
                        )),
                        range_lines(p, None).0,
                    ));
                    let capacity = p.capacity().unwrap_or(0).max(1);
                    match (&m.towards, dest) {
                        (Some(Ok(states)), Some((a, port))) => {
                            let total: u32 = states.values().sum();
                            let by_state = states
                                .iter()
                                .map(|(s, n)| format!("{s} {n}"))
                                .collect::<Vec<_>>()
                                .join(", ");
                            x.checks.push(check(
                                format!("TCP sockets towards {}", endpoint(a, port)),
                                Some(format!("ss -tan dst {}", endpoint(a, port))),
                                vec![if total == 0 {
                                    "none now: the exhaustion has passed, or happened in another network namespace (a container) or on another machine".to_owned()
                                } else {
                                    format!(
                                        "{total} now ({by_state}): {:.1}% of the {capacity} ports usable towards it",
                                        f64::from(total) * 100.0 / f64::from(capacity)
                                    )
                                }],
                            ));
                        }
                        (Some(Err(e)), _) => x.checks.push(check(
                            "TCP sockets towards the destination",
                            None,
                            vec![format!("could not list them: {e}")],
                        )),
                        _ => {
                            let busiest: Vec<String> = p
                                .time_wait
                                .iter()
                                .take(3)
                                .map(|t| {
                                    format!(
                                        "{} with {} ({:.1}% of {capacity})",
                                        endpoint(t.daddr, t.dport),
                                        t.count,
                                        f64::from(t.count) * 100.0 / f64::from(capacity)
                                    )
                                })
                                .collect();
                            let line = if busiest.is_empty() {
                                "no TIME_WAIT sockets from ephemeral ports now: the exhaustion has passed, or happened in another network namespace (a container) or on another machine".to_owned()
                            } else {
                                format!(
                                    "{} TIME_WAIT sockets in all; busiest destinations: {}",
                                    p.time_wait_total,
                                    busiest.join(", ")
                                )
                            };
                            x.checks.push(check(
                                "TIME_WAIT towards each destination (the message names none)",
                                Some("ss -tan state time-wait".to_owned()),
                                vec![line],
                            ));
                        }
                    }
                    if let Some(v) = p.tcp_tw_reuse {
                        x.checks.push(check(
                            "TIME_WAIT reuse for outgoing connections",
                            Some(format!("sysctl {}", crate::sysctl::TW_REUSE)),
                            vec![format!("tcp_tw_reuse={v}: {}", doctor::tw_reuse_meaning(v))],
                        ));
                        if v == 1 {
                            x.fixes.retain(|f| !f.contains("tcp_tw_reuse=1"));
                        }
                    }
                    findings.extend(doctor_findings(p, cond, x.port, dest));
                }
            }
            Condition::NotLocalAddress => {
                if let (Some(a), Some(local)) = (ip_of(x), &m.address_local) {
                    let line = match local {
                        Ok(true) => format!("{a} is an address of this machine now (a test bind to it succeeds): it was probably missing when the program started"),
                        Ok(false) => format!("{a} is not an address of this machine (a test bind to it fails with EADDRNOTAVAIL)"),
                        Err(e) => format!("a test bind to {a} failed otherwise: {e}"),
                    };
                    x.checks.push(check(
                        format!("whether {a} is local"),
                        Some("ip -br addr".to_owned()),
                        vec![line],
                    ));
                }
                if let Some((name, v)) = m.nonlocal_bind {
                    let v = v.map_or("absent".to_owned(), |v| v.to_string());
                    x.checks.push(check(
                        "binding to addresses this machine does not have",
                        Some(format!("sysctl {name}")),
                        vec![format!("{name}={v}")],
                    ));
                }
            }
            Condition::BadDestination | Condition::ExcludedRange => {}
        }
    }
    if !findings.is_empty() {
        let lines = findings
            .iter()
            .flat_map(|f| {
                let severity = format!("{:?}", f.severity).to_uppercase();
                std::iter::once(format!("{severity}: {}", f.message))
                    .chain(f.fix.iter().map(|fix| format!("  fix: {fix}")))
            })
            .collect();
        x.checks.push(check(
            "the port checks of portwatch doctor",
            Some("portwatch doctor".to_owned()),
            lines,
        ));
    }
    findings
}

/// For a message only Windows words this way: the commands to run there.
pub fn add_windows_checks(x: &mut Explanation) {
    let values = Values {
        port: x.port,
        addr: x.address.clone(),
    };
    for cond in conditions(x) {
        for (what, command) in cond.info().map_or(&[][..], |i| i.look_windows) {
            let command = values.render(command);
            // Both readings of a message can ask for the same command.
            if !x
                .checks
                .iter()
                .any(|c| c.command.as_ref() == Some(&command))
            {
                x.checks
                    .push(check(values.render(what), Some(command), Vec::new()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::doctor::{EphemeralRange, TimeWaitDest};
    use crate::explain::{explain, recognise};
    use crate::sysctl::PortSet;

    fn ports(low: u16, high: u16, reserved: &str) -> PortConfig {
        PortConfig {
            ephemeral_range: Some(EphemeralRange { low, high }),
            reserved_ports: PortSet::parse(reserved).ok(),
            tcp_tw_reuse: Some(2),
            tcp_fin_timeout: Some(60),
            owners_complete: true,
            ..PortConfig::default()
        }
    }

    fn holder(state: &str, local: &str, remote: &str, comm: Option<&str>) -> Holder {
        Holder {
            protocol: "tcp",
            state: state.to_owned(),
            local: local.to_owned(),
            remote: remote.to_owned(),
            pid: comm.map(|_| 4242),
            comm: comm.map(str::to_owned),
            unit: None,
            note: comm
                .is_none()
                .then(|| "TIME_WAIT sockets belong to the kernel, not to a process".into()),
        }
    }

    fn held_by(holders: Vec<Holder>, ports: Option<PortConfig>) -> Machine {
        Machine {
            ports,
            holders: Some(Ok(holders)),
            ..Machine::default()
        }
    }

    fn explained(text: &str) -> Explanation {
        explain(&recognise(text).expect("recognised"))
    }

    fn lines(x: &Explanation) -> String {
        x.checks
            .iter()
            .flat_map(|c| std::iter::once(c.what.clone()).chain(c.result.clone()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_client_holding_the_service_port_puts_the_exact_reservation_first() {
        let mut x = explained("Error: listen EADDRINUSE: address already in use :::40050");
        let m = held_by(
            vec![holder(
                "ESTABLISHED",
                "10.0.0.2:40050",
                "10.0.0.9:443",
                Some("curl"),
            )],
            Some(ports(40000, 40100, "40010")),
        );
        add_machine(&mut x, &m);
        let text = lines(&x);
        assert!(
            text.contains("an outgoing connection to 10.0.0.9:443 that has 40050 as its local (ephemeral) port"),
            "{text}"
        );
        assert!(text.contains("curl (pid 4242)"), "{text}");
        assert!(
            text.contains("40050 lies inside the range and is not reserved"),
            "{text}"
        );
        assert!(
            x.fixes[0].starts_with("portwatch reserve 40050 --persist")
                && x.fixes[0].contains("ip_local_reserved_ports=40010,40050"),
            "{:?}",
            x.fixes
        );
        assert!(
            !x.fixes.iter().any(|f| f.starts_with("find the holder")),
            "looked at already: {:?}",
            x.fixes
        );
        assert_eq!(
            x.fixes
                .iter()
                .filter(|f| f.contains("portwatch reserve"))
                .count(),
            1,
            "{:?}",
            x.fixes
        );
    }

    #[test]
    fn only_time_wait_remnants_put_so_reuseaddr_first_and_outside_the_range_no_reservation() {
        // The port from --port, as `portwatch explain --port 8000` sets it.
        let mut r = recognise("OSError: [Errno 98] Address already in use").expect("py");
        r.understood.port = Some(8000);
        let mut x = explain(&r);
        let remnants = (0..12)
            .map(|i| {
                holder(
                    "TIME_WAIT",
                    "127.0.0.1:8000",
                    &format!("127.0.0.1:{}", 40000 + i),
                    None,
                )
            })
            .collect();
        let m = held_by(remnants, Some(ports(32768, 60999, "")));
        add_machine(&mut x, &m);
        let text = lines(&x);
        assert!(
            text.contains(
                "12 TIME_WAIT remnants of closed connections (to 127.0.0.1:40000 and 11 more)"
            ),
            "{text}"
        );
        assert_eq!(
            text.matches("TIME_WAIT remnant").count(),
            1,
            "one line: {text}"
        );
        assert!(text.contains("8000 lies outside the range"), "{text}");
        assert!(x.fixes[0].contains("SO_REUSEADDR"), "{:?}", x.fixes);
        assert!(
            !x.fixes.iter().any(|f| f.contains("portwatch reserve")),
            "{:?}",
            x.fixes
        );
        // A runtime whose own fixes say nothing of SO_REUSEADDR gets it first too.
        let mut y =
            explained("socat[320904] E bind(5, {AF=2 127.0.0.1:8000}, 16): Address already in use");
        add_machine(&mut y, &m);
        assert!(y.fixes[0].starts_with("set SO_REUSEADDR"), "{:?}", y.fixes);
        // With a listener on the port, SO_REUSEADDR is not the fix.
        let mut z =
            explained("socat[320904] E bind(5, {AF=2 127.0.0.1:8000}, 16): Address already in use");
        let listening = held_by(
            vec![holder(
                "LISTEN",
                "127.0.0.1:8000",
                "0.0.0.0:0",
                Some("socat"),
            )],
            m.ports.clone(),
        );
        add_machine(&mut z, &listening);
        assert!(
            !z.fixes.iter().any(|f| f.contains("SO_REUSEADDR")),
            "{:?}",
            z.fixes
        );
    }

    #[test]
    fn nothing_on_the_port_and_no_port_say_what_to_do() {
        let mut x =
            explained("nginx: [emerg] bind() to 0.0.0.0:80 failed (98: Address already in use)");
        let m = held_by(Vec::new(), Some(ports(32768, 60999, "")));
        add_machine(&mut x, &m);
        assert!(lines(&x).contains("nothing holds 80 now"), "{}", lines(&x));
        let mut x = explained("OSError: [Errno 98] Address already in use");
        add_machine(&mut x, &m);
        assert!(
            lines(&x).contains("run again with --port PORT"),
            "{}",
            lines(&x)
        );
    }

    #[test]
    fn exhaustion_counts_the_sockets_towards_the_destination() {
        let mut x = explained("dial tcp 10.1.2.3:8080: connect: cannot assign requested address");
        let mut p = ports(40000, 40100, "40050");
        p.tcp_tw_reuse = Some(1);
        p.time_wait = vec![TimeWaitDest {
            daddr: "10.1.2.3".parse().expect("ip"),
            dport: 8080,
            count: 95,
        }];
        p.time_wait_total = 95;
        let towards = BTreeMap::from([("ESTABLISHED".to_owned(), 5), ("TIME_WAIT".to_owned(), 95)]);
        let m = Machine {
            ports: Some(p),
            towards: Some(Ok(towards)),
            ..Machine::default()
        };
        let findings = add_machine(&mut x, &m);
        let text = lines(&x);
        assert!(text.contains("TCP sockets towards 10.1.2.3:8080"), "{text}");
        assert!(
            text.contains(
                "100 now (ESTABLISHED 5, TIME_WAIT 95): 100.0% of the 100 ports usable towards it"
            ),
            "{text}"
        );
        assert!(text.contains("tcp_tw_reuse=1: enabled"), "{text}");
        assert!(
            !x.fixes.iter().any(|f| f.contains("tcp_tw_reuse=1")),
            "already on: {:?}",
            x.fixes
        );
        assert!(
            findings.iter().any(|f| f
                .message
                .contains("TIME_WAIT sockets towards 10.1.2.3:8080")),
            "{findings:#?}"
        );
        assert!(findings.iter().all(|f| f.severity >= Severity::Warning));
        assert!(text.contains("WARNING: 95 TIME_WAIT sockets"), "{text}");
    }

    #[test]
    fn an_address_that_is_not_local_is_tested_and_said_so() {
        let mut x =
            explained("listen tcp 192.168.6.143:8080: bind: cannot assign requested address");
        let m = Machine {
            ports: Some(ports(32768, 60999, "")),
            address_local: Some(Ok(false)),
            nonlocal_bind: Some(("net.ipv4.ip_nonlocal_bind", Some(0))),
            ..Machine::default()
        };
        add_machine(&mut x, &m);
        let text = lines(&x);
        assert!(
            text.contains("192.168.6.143 is not an address of this machine"),
            "{text}"
        );
        assert!(text.contains("net.ipv4.ip_nonlocal_bind=0"), "{text}");
    }

    #[test]
    fn process_names_reach_the_checks_escaped() {
        let mut x = explained("Error: listen EADDRINUSE: address already in use :::3000");
        let m = held_by(
            vec![holder(
                "LISTEN",
                "0.0.0.0:3000",
                "0.0.0.0:0",
                Some("evil\x1b]0;pwned\x07"),
            )],
            None,
        );
        add_machine(&mut x, &m);
        let text = lines(&x);
        assert!(
            text.contains(r"evil\e]0;pwned\x07 (pid 4242): a server listening on it"),
            "{text}"
        );
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn windows_messages_list_the_commands_to_run_there() {
        let mut x = explained("System.Net.Sockets.SocketException (10013): An attempt was made to access a socket in a way forbidden by its access permissions (0.0.0.0:5000)");
        add_windows_checks(&mut x);
        assert_eq!(x.checks.len(), 1, "{:?}", x.checks);
        assert_eq!(
            x.checks[0].command.as_deref(),
            Some("netsh int ipv4 show excludedportrange protocol=tcp")
        );
        assert!(x.checks[0].what.contains("port 5000"));
        // Both readings of 10048 (connect, then bind) want the dynamic range:
        // it is listed once.
        let mut both = explained("SocketException (10048): Only one usage of each socket address (protocol/network address/port) is normally permitted.");
        add_windows_checks(&mut both);
        let dynamic = both
            .checks
            .iter()
            .filter(|c| c.command.as_deref() == Some("netsh int ipv4 show dynamicport tcp"))
            .count();
        assert_eq!(dynamic, 1, "{:#?}", both.checks);
        assert!(both.checks.len() >= 4, "{:#?}", both.checks);
        // Nothing collected (--no-checks, or a Windows message): no checks.
        let mut y = explained("[Errno 99] Cannot assign requested address");
        assert!(add_machine(&mut y, &Machine::default()).is_empty());
        assert!(y.checks.is_empty());
    }
}
