//! `portwatch reserve` on Windows: persistent excluded port ranges
//! (`netsh int ipv4 add excludedportrange ... store=persistent`), the
//! Windows form of Linux's ip_local_reserved_ports. [`plan`] is pure: which
//! parts of the wanted ports still need an exclusion, and the exact
//! commands.

use std::io::{self, Write};

use super::netsh::{add_exclusion_command, excluded_set, DynamicRange, Exclusion};
use crate::sysctl::{PortSet, PortSpan};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Spans to exclude, none overlapping an existing exclusion (netsh
    /// refuses overlaps).
    pub add: Vec<PortSpan>,
    /// Ports already excluded.
    pub already: PortSet,
    /// Ports outside the dynamic range: Windows would not hand them out
    /// anyway; excluded all the same, in case the range is widened.
    pub outside: PortSet,
}

impl Plan {
    pub fn commands(&self) -> Vec<String> {
        self.add.iter().map(add_exclusion_command).collect()
    }
}

/// The spans of `wanted` not covered by `excluded`.
pub fn plan(wanted: &PortSet, excluded: &[Exclusion], dynamic: Option<&DynamicRange>) -> Plan {
    let have = excluded_set(excluded);
    let mut add = Vec::new();
    let mut already = PortSet::new();
    let mut outside = PortSet::new();
    for span in wanted.spans() {
        let mut run: Option<PortSpan> = None;
        for port in span.low..=span.high {
            if dynamic.is_some_and(|d| !d.contains(port)) {
                outside.insert(PortSpan::single(port));
            }
            if have.contains(port) {
                already.insert(PortSpan::single(port));
                if let Some(r) = run.take() {
                    add.push(r);
                }
                continue;
            }
            run = Some(match run {
                Some(r) => PortSpan {
                    low: r.low,
                    high: port,
                },
                None => PortSpan::single(port),
            });
        }
        if let Some(r) = run {
            add.push(r);
        }
    }
    Plan {
        add,
        already,
        outside,
    }
}

pub fn write_plan(w: &mut impl Write, p: &Plan, dry_run: bool) -> io::Result<()> {
    if dry_run {
        writeln!(w, "dry run: nothing is changed")?;
    }
    if !p.already.is_empty() {
        writeln!(w, "already excluded: {}", p.already)?;
    }
    if !p.outside.is_empty() {
        writeln!(
            w,
            "note: {} lies outside the dynamic port range, so Windows would not hand it out anyway; excluded all the same, in case the range is widened",
            p.outside
        )?;
    }
    if p.add.is_empty() {
        writeln!(w, "nothing to add")?;
        return Ok(());
    }
    writeln!(w, "{}", if dry_run { "would run:" } else { "running:" })?;
    for c in p.commands() {
        writeln!(w, "  {c}")?;
    }
    writeln!(
        w,
        "note: netsh refuses to exclude a port that is in use; stop the service that holds it first, then start it again"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> PortSet {
        crate::sysctl::parse_user_ports(s).unwrap()
    }

    #[test]
    fn only_the_uncovered_parts_are_added() {
        let ex = [Exclusion {
            low: 50005,
            high: 50006,
            administered: true,
        }];
        let d = DynamicRange {
            start: 49152,
            count: 16384,
        };
        let p = plan(&set("1433,50000-50010"), &ex, Some(&d));
        assert_eq!(
            p.commands(),
            vec![
                "netsh int ipv4 add excludedportrange protocol=tcp startport=1433 numberofports=1 store=persistent",
                "netsh int ipv4 add excludedportrange protocol=tcp startport=50000 numberofports=5 store=persistent",
                "netsh int ipv4 add excludedportrange protocol=tcp startport=50007 numberofports=4 store=persistent",
            ]
        );
        assert_eq!(p.already.to_string(), "50005-50006");
        assert_eq!(p.outside.to_string(), "1433");
        let mut out = Vec::new();
        write_plan(&mut out, &p, true).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("dry run: nothing is changed\n"), "{out}");
        assert!(out.contains("would run:"));
    }

    #[test]
    fn everything_excluded_already() {
        let ex = [Exclusion {
            low: 1433,
            high: 1434,
            administered: true,
        }];
        let p = plan(&set("1433"), &ex, None);
        assert!(p.add.is_empty());
        let mut out = Vec::new();
        write_plan(&mut out, &p, false).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("nothing to add"));
    }
}
