//! `portwatch who PORT` on Windows: the IP Helper tables' rows on a port,
//! with their owners' image names and services. The report has the same
//! shape and field names as on Linux (`{"port", "sockets", "missing"}`).

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Serialize;

use super::printable;
use super::tables::Row;
use crate::model::SocketEnds;

/// pid 0 (System Idle) owns TIME_WAIT entries; pid 4 (System) is the kernel.
pub const SYSTEM_PID: u32 = 4;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SocketView {
    #[serde(flatten)]
    pub ends: SocketEnds,
    pub pid: Option<u32>,
    /// The process's image name, e.g. `sqlservr.exe`.
    pub comm: Option<String>,
    /// Services hosted by that process (`svchost.exe` hosts several).
    pub services: Vec<String>,
    /// Why there is no ordinary owner, or who pid 4 is.
    pub no_owner: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct WhoReport {
    pub port: u16,
    pub sockets: Vec<SocketView>,
    pub missing: Option<String>,
}

/// What the system says about the owners.
#[derive(Debug, Default)]
pub struct Owners {
    pub names: HashMap<u32, String>,
    pub services: HashMap<u32, Vec<String>>,
    /// Why names could not be read, when they could not.
    pub names_error: Option<String>,
}

pub fn report(port: u16, rows: Vec<Row>, owners: &Owners) -> WhoReport {
    let mut unnamed = 0;
    let mut sockets: Vec<SocketView> = rows
        .into_iter()
        .filter(|r| r.lport == port)
        .map(|r| {
            let (pid, no_owner) = match (r.pid, r.state.as_str()) {
                (0, "TIME_WAIT") => (
                    None,
                    Some("TIME_WAIT connections belong to the TCP/IP stack, not to a process".to_owned()),
                ),
                (0, _) => (None, Some("no owning process (pid 0)".to_owned())),
                (SYSTEM_PID, _) => (
                    Some(SYSTEM_PID),
                    Some("System (pid 4): the kernel, usually HTTP.sys serving a URL reservation; `netsh http show servicestate` names the process behind it".to_owned()),
                ),
                (pid, _) => (Some(pid), None),
            };
            let comm = pid.and_then(|p| owners.names.get(&p).cloned()).or_else(|| {
                (pid == Some(SYSTEM_PID)).then(|| "System".to_owned())
            });
            if pid.is_some() && comm.is_none() {
                unnamed += 1;
            }
            SocketView {
                ends: SocketEnds {
                    protocol: r.protocol,
                    family: r.family,
                    state: r.state,
                    saddr: r.local,
                    sport: r.lport,
                    daddr: r.remote,
                    dport: r.rport,
                },
                services: pid
                    .and_then(|p| owners.services.get(&p).cloned())
                    .unwrap_or_default(),
                pid,
                comm,
                no_owner,
            }
        })
        .collect();
    sockets.sort_by(|a, b| a.ends.reading_order().cmp(&b.ends.reading_order()));
    WhoReport {
        port,
        sockets,
        missing: (unnamed > 0).then(|| {
            format!(
                "the names of {unnamed} owning processes could not be read{}: run `portwatch who {port}` from an elevated prompt to see them",
                owners
                    .names_error
                    .as_deref()
                    .map_or(String::new(), |e| format!(" ({})", printable(e)))
            )
        }),
    }
}

pub fn write_text(w: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    if r.sockets.is_empty() {
        writeln!(w, "nothing is bound to port {}", r.port)?;
    } else {
        writeln!(
            w,
            "{:<5} {:<11} {:<28} {:<28} {:>7} {:<20} SERVICE / NOTE",
            "PROTO", "STATE", "LOCAL", "REMOTE", "PID", "COMM"
        )?;
        for s in &r.sockets {
            let note = if s.services.is_empty() {
                s.no_owner.clone().unwrap_or_default()
            } else {
                s.services.join(", ")
            };
            writeln!(
                w,
                "{:<5} {:<11} {:<28} {:<28} {:>7} {:<20} {}",
                s.ends.protocol.name(),
                s.ends.state,
                s.ends.local(),
                s.ends.remote(),
                s.pid.map_or("-".to_owned(), |p| p.to_string()),
                printable(s.comm.as_deref().unwrap_or("-")),
                printable(&note),
            )?;
        }
    }
    if let Some(m) = &r.missing {
        writeln!(w, "note: {m}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tables::{build, parse, Table};
    use super::*;

    fn rows() -> Vec<Row> {
        let mut r = parse(
            Table::Tcp4,
            &build::tcp4(&[
                (11, [127, 0, 0, 1], 1433, [127, 0, 0, 1], 52742, 0),
                (2, [0, 0, 0, 0], 1433, [0, 0, 0, 0], 0, 5025),
                (2, [0, 0, 0, 0], 80, [0, 0, 0, 0], 0, 4),
                (5, [10, 0, 0, 5], 50000, [10, 0, 0, 9], 1433, 77),
            ]),
        )
        .unwrap();
        r.extend(parse(Table::Udp4, &build::udp4(&[([0, 0, 0, 0], 1433, 6000)])).unwrap());
        r
    }

    fn owners() -> Owners {
        Owners {
            names: HashMap::from([
                (5025, "sqlservr.exe".to_owned()),
                (77, "app.exe".to_owned()),
            ]),
            services: HashMap::from([(5025, vec!["MSSQLSERVER".to_owned()])]),
            names_error: None,
        }
    }

    #[test]
    fn local_port_only_listeners_first_time_wait_explained() {
        let r = report(1433, rows(), &owners());
        let states: Vec<&str> = r.sockets.iter().map(|s| s.ends.state.as_str()).collect();
        assert_eq!(states, vec!["LISTEN", "TIME_WAIT", "UNCONN"]);
        assert_eq!(r.sockets[0].comm.as_deref(), Some("sqlservr.exe"));
        assert_eq!(r.sockets[0].services, vec!["MSSQLSERVER"]);
        assert_eq!(r.sockets[1].pid, None);
        assert!(r.sockets[1]
            .no_owner
            .as_deref()
            .unwrap()
            .contains("TCP/IP stack"));
        // The udp owner's name is unknown: said, with what to do.
        assert!(r.missing.as_deref().unwrap().contains("elevated"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["port"], 1433);
        assert_eq!(v["sockets"][0]["sport"], 1433);
        assert_eq!(v["sockets"][0]["protocol"], "tcp");
        assert_eq!(v["sockets"][0]["family"], "ipv4");
    }

    #[test]
    fn pid_4_says_it_is_the_kernel_or_http_sys() {
        let r = report(80, rows(), &owners());
        assert_eq!(r.sockets.len(), 1);
        assert_eq!(r.sockets[0].comm.as_deref(), Some("System"));
        assert!(r.sockets[0]
            .no_owner
            .as_deref()
            .unwrap()
            .contains("HTTP.sys"));
        assert!(r.missing.is_none());
        let mut text = Vec::new();
        write_text(&mut text, &r).unwrap();
        assert!(String::from_utf8(text).unwrap().contains("HTTP.sys"));
    }

    #[test]
    fn names_are_escaped_on_the_terminal() {
        let mut o = owners();
        o.names.insert(5025, "evil\x1b]0;x\x07.exe".to_owned());
        let mut text = Vec::new();
        write_text(&mut text, &report(1433, rows(), &o)).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(!text.contains('\x1b') && text.contains("\\u{1b}"), "{text}");
    }
}
