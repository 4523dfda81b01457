//! Parsers for what `netsh` prints about TCP ports, and the `netsh`
//! commands portwatch proposes. Windows keeps the dynamic (ephemeral) port
//! range and the excluded ranges in NSI, with no documented read API, so
//! `netsh` is the supported interface:
//!
//! ```text
//! > netsh int ipv4 show dynamicport tcp
//!
//! Protocol tcp Dynamic Port Range
//! ---------------------------------
//! Start Port      : 49152
//! Number of Ports : 16384
//!
//! > netsh int ipv4 show excludedportrange protocol=tcp
//!
//! Protocol tcp Port Exclusion Ranges
//!
//! Start Port    End Port
//! ----------    --------
//!       1433        1433     *
//!      50000       50059
//!
//! * - Administered port exclusions.
//! ```
//!
//! Labels are localized ("Startport", "Port de début", ...), so the parsers
//! go by shape: numbers after a colon, and lines of two port numbers.

use crate::sysctl::{PortSet, PortSpan};

/// The dynamic port range: `count` ports from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DynamicRange {
    pub start: u16,
    pub count: u32,
}

impl DynamicRange {
    /// The last port of the range.
    pub fn end(&self) -> u16 {
        let end = u32::from(self.start) + self.count.saturating_sub(1);
        u16::try_from(end).unwrap_or(u16::MAX)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.count > 0 && port >= self.start && port <= self.end()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetshError {
    #[error("netsh printed no `label : number` lines for the start port and the number of ports; its output was: {0}")]
    NoRange(String),
    #[error("netsh gave a dynamic range that does not fit in the port space: start {start}, {count} ports")]
    BadRange { start: u32, count: u32 },
    #[error("netsh printed no table of excluded ranges (no `----` line); its output was: {0}")]
    NoTable(String),
    #[error("netsh printed an excluded range {low}-{high} that is not a valid port range")]
    BadExclusion { low: u32, high: u32 },
}

/// `netsh int ipv4 show dynamicport tcp`.
pub fn parse_dynamic_port(text: &str) -> Result<DynamicRange, NetshError> {
    let numbers: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(_, v)| v.trim().parse::<u32>().ok())
        .collect();
    let [start, count, ..] = numbers[..] else {
        return Err(NetshError::NoRange(super::printable(text.trim())));
    };
    if start == 0 || start > 65535 || count == 0 || start + count - 1 > 65535 {
        return Err(NetshError::BadRange { start, count });
    }
    Ok(DynamicRange {
        start: start as u16,
        count,
    })
}

/// One excluded range; `administered` marks the ones an administrator added
/// (`*` in netsh's listing) as opposed to those applications and Windows
/// features (Hyper-V, WinNAT, Docker) reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Exclusion {
    pub low: u16,
    pub high: u16,
    pub administered: bool,
}

/// `netsh int ipv4 show excludedportrange protocol=tcp`.
pub fn parse_excluded(text: &str) -> Result<Vec<Exclusion>, NetshError> {
    // The column rule is there even when no range is excluded; without it
    // the output is something else (an error, or a netsh without `int`).
    if !text.lines().any(|l| l.trim_start().starts_with("----")) {
        return Err(NetshError::NoTable(super::printable(text.trim())));
    }
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (nums, rest) = match words.as_slice() {
            [a, b] => ([*a, *b], None),
            [a, b, star] => ([*a, *b], Some(*star)),
            _ => continue,
        };
        let (Ok(low), Ok(high)) = (nums[0].parse::<u32>(), nums[1].parse::<u32>()) else {
            continue;
        };
        if rest.is_some_and(|s| s != "*") {
            continue;
        }
        if low == 0 || low > high || high > 65535 {
            return Err(NetshError::BadExclusion { low, high });
        }
        out.push(Exclusion {
            low: low as u16,
            high: high as u16,
            administered: rest == Some("*"),
        });
    }
    Ok(out)
}

/// The excluded ranges as a port set.
pub fn excluded_set(ex: &[Exclusion]) -> PortSet {
    PortSet::from_spans(ex.iter().filter_map(|e| PortSpan::new(e.low, e.high)))
}

/// The command that adds a persistent exclusion for `span`.
pub fn add_exclusion_command(span: &PortSpan) -> String {
    format!(
        "netsh int ipv4 add excludedportrange protocol=tcp startport={} numberofports={} store=persistent",
        span.low,
        span.count()
    )
}

/// The argument vector of [`add_exclusion_command`], for running it.
pub fn add_exclusion_args(span: &PortSpan) -> Vec<String> {
    add_exclusion_command(span)
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DYNAMIC: &str = "\r\nProtocol tcp Dynamic Port Range\r\n---------------------------------\r\nStart Port      : 49152\r\nNumber of Ports : 16384\r\n\r\n";
    const DYNAMIC_DE: &str = "\nProtokoll tcp Dynamischer Portbereich\n---------------------------------\nStartport       : 10000\nAnzahl der Ports: 1000\n";
    const EXCLUDED: &str = "\r\nProtocol tcp Port Exclusion Ranges\r\n\r\nStart Port    End Port\r\n----------    --------\r\n      1433        1433     *\r\n     50000       50059\r\n     5357        5357\r\n\r\n* - Administered port exclusions.\r\n\r\n";

    #[test]
    fn dynamic_range_in_english_and_german() {
        let r = parse_dynamic_port(DYNAMIC).unwrap();
        assert_eq!(
            r,
            DynamicRange {
                start: 49152,
                count: 16384
            }
        );
        assert_eq!(r.end(), 65535);
        assert!(r.contains(49152) && r.contains(65535) && !r.contains(49151));
        let de = parse_dynamic_port(DYNAMIC_DE).unwrap();
        assert_eq!((de.start, de.end()), (10000, 10999));
    }

    #[test]
    fn dynamic_range_rejects_what_is_not_one() {
        assert!(matches!(
            parse_dynamic_port(""),
            Err(NetshError::NoRange(_))
        ));
        let e = parse_dynamic_port(
            "The following command was not found: int ipv4 show dynamicport tcp.\x1b[0m",
        )
        .unwrap_err();
        assert!(e.to_string().contains("\\u{1b}"), "escaped: {e}");
        assert!(parse_dynamic_port("Start Port : 60000\nNumber of Ports : 10000\n").is_err());
        assert!(parse_dynamic_port("Start Port : 0\nNumber of Ports : 10\n").is_err());
    }

    #[test]
    fn excluded_ranges_with_and_without_the_administered_mark() {
        let ex = parse_excluded(EXCLUDED).unwrap();
        assert_eq!(
            ex,
            vec![
                Exclusion {
                    low: 1433,
                    high: 1433,
                    administered: true
                },
                Exclusion {
                    low: 50000,
                    high: 50059,
                    administered: false
                },
                Exclusion {
                    low: 5357,
                    high: 5357,
                    administered: false
                },
            ]
        );
        let set = excluded_set(&ex);
        assert!(set.contains(50059) && set.contains(1433) && !set.contains(50060));
        let empty = "Protocol tcp Port Exclusion Ranges\n\nStart Port    End Port\n----------    --------\n\n* - Administered port exclusions.\n";
        assert_eq!(parse_excluded(empty).unwrap(), vec![]);
        // Nothing printed (wine's netsh) is not "no exclusions".
        assert!(matches!(parse_excluded(""), Err(NetshError::NoTable(_))));
        assert!(parse_excluded("----\n  5000  4000\n").is_err());
        assert!(parse_excluded("----\n  1  70000 *\n").is_err());
    }

    #[test]
    fn the_fix_is_an_exact_command() {
        let span = PortSpan::new(1433, 1434).unwrap();
        assert_eq!(
            add_exclusion_command(&span),
            "netsh int ipv4 add excludedportrange protocol=tcp startport=1433 numberofports=2 store=persistent"
        );
        assert_eq!(add_exclusion_args(&span)[0], "int");
    }
}
