//! `portwatch doctor` on Windows: the dynamic port range and the excluded
//! ranges (netsh), MaxUserPort and TcpTimedWaitDelay (registry, read, never
//! assumed), listeners inside the dynamic range, TIME_WAIT per destination,
//! and each fix as the exact command. [`analyze`] is pure; the snapshot is
//! gathered by `sys` on Windows.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;

use serde::Serialize;
use serde_json::{json, Value};

use super::netsh::{add_exclusion_command, excluded_set, DynamicRange, Exclusion};
use super::printable;
use super::tables::Row;
use crate::cmd::doctor::findings::{NARROW_RANGE, TW_CRITICAL, TW_WARNING};
use crate::cmd::doctor::{Finding, Severity};
use crate::sysctl::PortSpan;

/// `HKLM\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters`.
pub const TCPIP_PARAMETERS: &str = r"SYSTEM\CurrentControlSet\Services\Tcpip\Parameters";

/// A DWORD registry value as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegValue {
    Set(u32),
    /// The value does not exist: Windows uses its built-in default, which
    /// differs between versions and is not guessed here.
    Absent,
    Unreadable(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub protocol: &'static str,
    pub addr: IpAddr,
    pub port: u16,
    pub pid: u32,
    pub comm: Option<String>,
    pub services: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub os: String,
    pub elevated: bool,
    pub dynamic: Result<DynamicRange, String>,
    pub excluded: Result<Vec<Exclusion>, String>,
    pub max_user_port: RegValue,
    pub tcp_timed_wait_delay: RegValue,
    pub listeners: Vec<Listener>,
    /// TIME_WAIT count per destination whose local port is dynamic.
    pub time_wait: Vec<(IpAddr, u16, u32)>,
    pub time_wait_total: u32,
    pub sockets_error: Option<String>,
}

/// Listeners (TCP LISTEN, bound UDP) and TIME_WAIT per destination from
/// the table rows.
pub fn from_rows(
    rows: &[Row],
    dynamic: Option<&DynamicRange>,
    names: &HashMap<u32, String>,
    services: &HashMap<u32, Vec<String>>,
) -> (Vec<Listener>, Vec<(IpAddr, u16, u32)>, u32) {
    let mut listeners = Vec::new();
    let mut tw: HashMap<(IpAddr, u16), u32> = HashMap::new();
    let mut total = 0;
    for r in rows {
        match r.state.as_str() {
            "LISTEN" | "UNCONN" if r.lport != 0 => listeners.push(Listener {
                protocol: r.protocol.name(),
                addr: r.local,
                port: r.lport,
                pid: r.pid,
                comm: names.get(&r.pid).cloned(),
                services: services.get(&r.pid).cloned().unwrap_or_default(),
            }),
            "TIME_WAIT" => {
                total += 1;
                if dynamic.is_some_and(|d| d.contains(r.lport)) {
                    *tw.entry((r.remote, r.rport)).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    listeners.sort_by(|a, b| (a.port, a.protocol, a.addr).cmp(&(b.port, b.protocol, b.addr)));
    listeners.dedup_by(|a, b| a.port == b.port && a.protocol == b.protocol && a.pid == b.pid);
    let mut tw: Vec<(IpAddr, u16, u32)> = tw.into_iter().map(|((a, p), n)| (a, p, n)).collect();
    tw.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    (listeners, tw, total)
}

fn finding(severity: Severity, message: String, fix: Option<String>) -> Finding {
    Finding {
        severity,
        message,
        fix,
    }
}

const REG_KEY: &str = r"HKLM\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters";

fn owner(l: &Listener) -> String {
    let name = l
        .comm
        .as_deref()
        .map(printable)
        .unwrap_or_else(|| "?".into());
    let mut s = format!("{name} (pid {})", l.pid);
    if !l.services.is_empty() {
        s.push_str(&format!(", service {}", printable(&l.services.join(", "))));
    }
    s
}

pub fn analyze(s: &Snapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    if !s.elevated {
        out.push(finding(
            Severity::Info,
            "not elevated: `portwatch trace` needs an administrator to start its ETW session, and other users' process names stay hidden".into(),
            Some("run portwatch from an elevated prompt (Run as administrator)".into()),
        ));
    }
    let excluded = match &s.excluded {
        Ok(ex) => excluded_set(ex),
        Err(e) => {
            out.push(finding(
                Severity::Warning,
                format!("could not read the excluded port ranges: {}", printable(e)),
                Some("netsh int ipv4 show excludedportrange protocol=tcp".into()),
            ));
            crate::sysctl::PortSet::new()
        }
    };
    match &s.dynamic {
        Err(e) => out.push(finding(
            Severity::Warning,
            format!("could not read the dynamic port range: {}", printable(e)),
            Some("netsh int ipv4 show dynamicport tcp".into()),
        )),
        Ok(d) => {
            let usable = d.count - excluded.count_within(d.start, d.end());
            if d.count < NARROW_RANGE {
                out.push(finding(
                    Severity::Warning,
                    format!(
                        "the dynamic port range {}-{} has only {} ports: busy clients will run out (WSAEADDRINUSE / WSAENOBUFS on connect)",
                        d.start,
                        d.end(),
                        d.count
                    ),
                    Some("netsh int ipv4 set dynamicport tcp start=49152 num=16384".into()),
                ));
            }
            if usable < d.count {
                out.push(finding(
                    Severity::Info,
                    format!(
                        "{} of the {} dynamic ports are in excluded ranges (Hyper-V, WinNAT and Docker reserve blocks there): {usable} remain for outgoing connections",
                        d.count - usable,
                        d.count
                    ),
                    None,
                ));
            }
            for l in s.listeners.iter().filter(|l| d.contains(l.port)) {
                if excluded.contains(l.port) {
                    continue;
                }
                let add = add_exclusion_command(&PortSpan::single(l.port));
                let fix = match l.services.first() {
                    Some(svc) => format!("net stop {svc} && {add} && net start {svc}"),
                    None => format!("stop {}, then: {add}", owner(l)),
                };
                out.push(finding(
                    Severity::Warning,
                    format!(
                        "port {} ({}, {}) is inside the dynamic port range {}-{} and not excluded: an outgoing connection can take it while the service is down or starting",
                        l.port,
                        l.protocol,
                        owner(l),
                        d.start,
                        d.end()
                    ),
                    Some(fix),
                ));
            }
            for &(daddr, dport, count) in &s.time_wait {
                let share = f64::from(count) / f64::from(usable.max(1));
                let severity = if share >= TW_CRITICAL {
                    Severity::Critical
                } else if share >= TW_WARNING {
                    Severity::Warning
                } else {
                    continue;
                };
                let dest = match daddr {
                    IpAddr::V4(a) => format!("{a}:{dport}"),
                    IpAddr::V6(a) => format!("[{a}]:{dport}"),
                };
                out.push(finding(
                    severity,
                    format!(
                        "{count} TIME_WAIT connections to {dest} hold {:.0}% of the {usable} usable dynamic ports: new connections to it will fail once they are gone",
                        share * 100.0
                    ),
                    Some(format!(
                        "reuse connections to {dest} (pooling, keep-alive); to shorten TIME_WAIT: reg add {REG_KEY} /v TcpTimedWaitDelay /t REG_DWORD /d 30 /f (then reboot)"
                    )),
                ));
            }
        }
    }
    match &s.max_user_port {
        RegValue::Set(v) => out.push(finding(
            Severity::Info,
            format!("myth: MaxUserPort is set ({v}) but Windows ignores it since Vista; the dynamic range is the one netsh shows"),
            Some(format!("reg delete {REG_KEY} /v MaxUserPort /f   (and set the range with: netsh int ipv4 set dynamicport tcp start=49152 num=16384)")),
        )),
        RegValue::Absent => {}
        RegValue::Unreadable(e) => out.push(finding(
            Severity::Info,
            format!("could not read MaxUserPort: {}", printable(e)),
            None,
        )),
    }
    match &s.tcp_timed_wait_delay {
        RegValue::Set(v) => out.push(finding(
            Severity::Info,
            format!("TIME_WAIT lasts {v} s here (TcpTimedWaitDelay in the registry; Windows accepts 30 to 300)"),
            None,
        )),
        RegValue::Absent => out.push(finding(
            Severity::Info,
            "TcpTimedWaitDelay is not set: TIME_WAIT lasts Windows' built-in default, which differs between versions; `portwatch trace` reports the value in force (TcpGlobalParameters)".into(),
            None,
        )),
        RegValue::Unreadable(e) => out.push(finding(
            Severity::Info,
            format!("could not read TcpTimedWaitDelay: {}", printable(e)),
            None,
        )),
    }
    if let Some(e) = &s.sockets_error {
        out.push(finding(
            Severity::Warning,
            format!("could not read the socket tables: {}", printable(e)),
            None,
        ));
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

pub fn to_json(s: &Snapshot, findings: &[Finding]) -> Value {
    let errs = |r: &Result<_, String>| r.as_ref().err().cloned();
    json!({
        "capabilities": {"os": s.os, "elevated": s.elevated, "collector": "etw"},
        "port_config": {
            "dynamic_range": s.dynamic.as_ref().ok().map(|d| json!({"low": d.start, "high": d.end(), "count": d.count})),
            "dynamic_range_error": errs(&s.dynamic.as_ref().map(|_| ()).map_err(Clone::clone)),
            "excluded_ranges": s.excluded.as_ref().ok(),
            "excluded_ranges_error": errs(&s.excluded.as_ref().map(|_| ()).map_err(Clone::clone)),
            "max_user_port": s.max_user_port,
            "tcp_timed_wait_delay": s.tcp_timed_wait_delay,
            "listeners": s.listeners,
            "time_wait_total": s.time_wait_total,
            "time_wait": s.time_wait.iter().map(|(a, p, n)| json!({"daddr": a, "dport": p, "count": n})).collect::<Vec<_>>(),
        },
        "findings": findings,
    })
}

fn reg_text(v: &RegValue) -> String {
    match v {
        RegValue::Set(n) => n.to_string(),
        RegValue::Absent => "not set (built-in default)".into(),
        RegValue::Unreadable(e) => format!("unreadable: {}", printable(e)),
    }
}

pub fn write_text(w: &mut impl Write, s: &Snapshot, findings: &[Finding]) -> io::Result<()> {
    writeln!(
        w,
        "portwatch doctor ({}, {})",
        printable(&s.os),
        if s.elevated {
            "elevated"
        } else {
            "not elevated"
        }
    )?;
    writeln!(w)?;
    writeln!(w, "Port configuration")?;
    match &s.dynamic {
        Ok(d) => writeln!(
            w,
            "  dynamic port range   {}-{} ({} ports)",
            d.start,
            d.end(),
            d.count
        )?,
        Err(e) => writeln!(w, "  dynamic port range   unreadable: {}", printable(e))?,
    }
    match &s.excluded {
        Ok(ex) if ex.is_empty() => writeln!(w, "  excluded ranges      none")?,
        Ok(ex) => {
            let list: Vec<String> = ex
                .iter()
                .map(|e| {
                    let span = PortSpan {
                        low: e.low,
                        high: e.high,
                    };
                    format!("{span}{}", if e.administered { "*" } else { "" })
                })
                .collect();
            writeln!(
                w,
                "  excluded ranges      {} (* = administered)",
                list.join(", ")
            )?
        }
        Err(e) => writeln!(w, "  excluded ranges      unreadable: {}", printable(e))?,
    }
    writeln!(w, "  MaxUserPort          {}", reg_text(&s.max_user_port))?;
    writeln!(
        w,
        "  TcpTimedWaitDelay    {}",
        reg_text(&s.tcp_timed_wait_delay)
    )?;
    writeln!(w, "  listeners            {}", s.listeners.len())?;
    writeln!(w, "  TIME_WAIT            {}", s.time_wait_total)?;
    writeln!(w)?;
    writeln!(w, "Findings")?;
    if findings.is_empty() {
        writeln!(w, "  none")?;
    }
    for f in findings {
        let label = match f.severity {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        };
        writeln!(w, "  {label:<8} {}", f.message)?;
        if let Some(fix) = &f.fix {
            writeln!(w, "           fix: {fix}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(port: u16, services: &[&str]) -> Listener {
        Listener {
            protocol: "tcp",
            addr: "0.0.0.0".parse().unwrap(),
            port,
            pid: 5025,
            comm: Some("sqlservr.exe".into()),
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            os: "Windows 10.0.20348".into(),
            elevated: true,
            dynamic: Ok(DynamicRange {
                start: 1025,
                count: 64511,
            }),
            excluded: Ok(vec![Exclusion {
                low: 50000,
                high: 50099,
                administered: false,
            }]),
            max_user_port: RegValue::Absent,
            tcp_timed_wait_delay: RegValue::Absent,
            listeners: vec![
                listener(1433, &["MSSQLSERVER"]),
                listener(50010, &[]),
                listener(80, &[]),
            ],
            time_wait: vec![],
            time_wait_total: 0,
            sockets_error: None,
        }
    }

    fn warnings(f: &[Finding]) -> Vec<&Finding> {
        f.iter()
            .filter(|f| f.severity >= Severity::Warning)
            .collect()
    }

    #[test]
    fn a_listener_in_the_dynamic_range_gets_the_exact_netsh_fix() {
        let f = analyze(&snapshot());
        let w = warnings(&f);
        // 1433 is inside 1025-65535 and not excluded; 50010 is excluded; 80 is below.
        assert_eq!(w.len(), 1, "{f:#?}");
        assert!(w[0].message.contains("port 1433"));
        assert!(w[0].message.contains("MSSQLSERVER"));
        assert_eq!(
            w[0].fix.as_deref(),
            Some("net stop MSSQLSERVER && netsh int ipv4 add excludedportrange protocol=tcp startport=1433 numberofports=1 store=persistent && net start MSSQLSERVER")
        );
        // The excluded block is said, with what remains.
        assert!(f.iter().any(|x| x.message.contains("100 of the 64511")));
        // TcpTimedWaitDelay absent: said, not guessed.
        assert!(f
            .iter()
            .any(|x| x.message.contains("TcpTimedWaitDelay is not set")));
    }

    #[test]
    fn registry_values_myths_and_unreadable_sources() {
        let mut s = snapshot();
        s.max_user_port = RegValue::Set(65534);
        s.tcp_timed_wait_delay = RegValue::Set(30);
        s.dynamic = Err("netsh: not found".into());
        s.excluded = Err("netsh: not found".into());
        s.elevated = false;
        let f = analyze(&s);
        assert!(f
            .iter()
            .any(|x| x.message.contains("MaxUserPort is set (65534)")
                && x.fix.as_deref().unwrap().starts_with("reg delete")));
        assert!(f.iter().any(|x| x.message.contains("TIME_WAIT lasts 30 s")));
        assert!(f
            .iter()
            .any(|x| x.message.contains("dynamic port range: netsh")));
        assert!(f.iter().any(|x| x.message.contains("not elevated")));
        // No listener findings without a range to compare to.
        assert!(!f.iter().any(|x| x.message.contains("port 1433")));
    }

    #[test]
    fn time_wait_pressure_and_a_narrow_range() {
        let mut s = snapshot();
        s.dynamic = Ok(DynamicRange {
            start: 40000,
            count: 100,
        });
        s.excluded = Ok(vec![]);
        s.listeners.clear();
        s.time_wait = vec![
            ("10.0.0.9".parse().unwrap(), 1433, 95),
            ("10.0.0.8".parse().unwrap(), 80, 60),
        ];
        let f = analyze(&s);
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(f[0]
            .message
            .contains("95 TIME_WAIT connections to 10.0.0.9:1433"));
        assert!(f
            .iter()
            .any(|x| x.severity == Severity::Warning && x.message.contains("10.0.0.8:80")));
        assert!(f.iter().any(|x| x.message.contains("only 100 ports")));
        let mut text = Vec::new();
        write_text(&mut text, &s, &f).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("40000-40099 (100 ports)"), "{text}");
        let v = to_json(&s, &f);
        assert_eq!(v["port_config"]["dynamic_range"]["high"], 40099);
        assert_eq!(v["findings"][0]["severity"], "critical");
    }

    #[test]
    fn rows_become_listeners_and_time_wait_per_destination() {
        use super::super::tables::{build, parse, Table};
        let rows = parse(
            Table::Tcp4,
            &build::tcp4(&[
                (2, [0; 4], 1433, [0; 4], 0, 5025),
                (11, [10, 0, 0, 5], 50001, [10, 0, 0, 9], 1433, 0),
                (11, [10, 0, 0, 5], 50002, [10, 0, 0, 9], 1433, 0),
                (11, [10, 0, 0, 5], 80, [10, 0, 0, 9], 1433, 0),
            ]),
        )
        .unwrap();
        let d = DynamicRange {
            start: 49152,
            count: 16384,
        };
        let names = HashMap::from([(5025, "sqlservr.exe".to_string())]);
        let (l, tw, total) = from_rows(&rows, Some(&d), &names, &HashMap::new());
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].comm.as_deref(), Some("sqlservr.exe"));
        assert_eq!(total, 3);
        assert_eq!(tw, vec![("10.0.0.9".parse().unwrap(), 1433, 2)]);
    }
}
