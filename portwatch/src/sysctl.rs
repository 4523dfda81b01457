//! Kernel sysctls under `/proc/sys`, and the port lists they hold.
//!
//! `net.ipv4.ip_local_reserved_ports` is a comma-separated list of ports and
//! inclusive ranges (`1433,40000-40010`); the kernel prints it sorted with
//! adjacent ports merged. [`PortSet`] parses that form (and anything a user
//! may write in it), merges, and prints it back the way the kernel does, so
//! a value written back reads identically.
//!
//! Both `ip_local_port_range` and `ip_local_reserved_ports` are per network
//! namespace: reading or writing them affects only the caller's namespace.

use std::fmt;
use std::io;
use std::path::PathBuf;

pub const PORT_RANGE: &str = "net.ipv4.ip_local_port_range";
pub const RESERVED_PORTS: &str = "net.ipv4.ip_local_reserved_ports";
pub const TW_REUSE: &str = "net.ipv4.tcp_tw_reuse";
/// Linux 6.13 and later.
pub const TW_REUSE_DELAY: &str = "net.ipv4.tcp_tw_reuse_delay";
pub const MAX_TW_BUCKETS: &str = "net.ipv4.tcp_max_tw_buckets";
pub const FIN_TIMEOUT: &str = "net.ipv4.tcp_fin_timeout";

/// `net.ipv4.ip_local_port_range` -> `/proc/sys/net/ipv4/ip_local_port_range`.
pub fn proc_path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

/// The value of a sysctl, trimmed. `Ok(None)` when this kernel lacks it.
pub fn read(name: &str) -> io::Result<Option<String>> {
    match std::fs::read_to_string(proc_path(name)) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A sysctl parsed as a number; `None` when absent or not a number.
pub fn read_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    read(name).ok().flatten().and_then(|s| s.parse().ok())
}

/// Writes a sysctl (as `sysctl -w` does). Needs root, or CAP_NET_ADMIN in
/// the network namespace's owning user namespace for `net.*`.
pub fn write(name: &str, value: &str) -> io::Result<()> {
    std::fs::write(proc_path(name), format!("{value}\n"))
}

/// `ip_local_port_range` as (low, high); `None` if unreadable or inverted.
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(low)), Some(Ok(high)), None) if low <= high => Some((low, high)),
        _ => None,
    }
}

/// An inclusive port range; a single port has `low == high`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpan {
    pub low: u16,
    pub high: u16,
}

impl PortSpan {
    pub fn single(port: u16) -> Self {
        PortSpan {
            low: port,
            high: port,
        }
    }

    pub fn new(low: u16, high: u16) -> Option<Self> {
        (low <= high).then_some(PortSpan { low, high })
    }

    /// How many ports the span covers (never 0).
    pub fn count(&self) -> u32 {
        u32::from(self.high - self.low) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl fmt::Display for PortSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortListError {
    #[error("`{0}` is not a port or a range: write PORT or LOW-HIGH, e.g. 1433 or 40000-40010")]
    Junk(String),
    #[error("port {0} is out of range: ports are 1 to 65535")]
    OutOfRange(String),
    #[error("port 0 cannot be reserved: ports are 1 to 65535")]
    Zero,
    #[error("range {0} is reversed: write the lower port first ({1})")]
    Reversed(String, String),
    #[error("empty item in `{0}`: stray comma?")]
    Empty(String),
}

/// A set of ports kept as sorted, disjoint, non-adjacent spans: the
/// canonical form the kernel prints for `ip_local_reserved_ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    spans: Vec<PortSpan>,
}

impl PortSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the kernel's list (`1,3-5,9`); the empty string is the empty
    /// set. Port 0 is accepted here because the kernel's bitmap has a bit
    /// for it; user input goes through [`parse_user_ports`] instead.
    pub fn parse(s: &str) -> Result<Self, PortListError> {
        let mut set = PortSet::new();
        let s = s.trim();
        if s.is_empty() {
            return Ok(set);
        }
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(PortListError::Empty(s.to_owned()));
            }
            set.insert(parse_span(item)?);
        }
        Ok(set)
    }

    pub fn from_spans(spans: impl IntoIterator<Item = PortSpan>) -> Self {
        let mut set = PortSet::new();
        for s in spans {
            set.insert(s);
        }
        set
    }

    /// Adds a span, merging it with every span it overlaps or touches.
    pub fn insert(&mut self, span: PortSpan) {
        let mut merged = span;
        let mut out = Vec::with_capacity(self.spans.len() + 1);
        let mut placed = false;
        for s in self.spans.drain(..) {
            // Disjoint and not adjacent: keep as is, in order.
            if u32::from(s.high) + 1 < u32::from(merged.low) {
                out.push(s);
            } else if u32::from(merged.high) + 1 < u32::from(s.low) {
                if !placed {
                    out.push(merged);
                    placed = true;
                }
                out.push(s);
            } else {
                merged = PortSpan {
                    low: merged.low.min(s.low),
                    high: merged.high.max(s.high),
                };
            }
        }
        if !placed {
            out.push(merged);
        }
        self.spans = out;
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        for s in &other.spans {
            out.insert(*s);
        }
        out
    }

    pub fn contains(&self, port: u16) -> bool {
        self.spans.iter().any(|s| s.contains(port))
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn spans(&self) -> &[PortSpan] {
        &self.spans
    }

    /// How many ports the set holds.
    pub fn count(&self) -> u32 {
        self.spans.iter().map(PortSpan::count).sum()
    }

    /// How many of the set's ports lie within `low..=high`.
    pub fn count_within(&self, low: u16, high: u16) -> u32 {
        self.spans
            .iter()
            .filter_map(|s| PortSpan::new(s.low.max(low), s.high.min(high)))
            .map(|s| s.count())
            .sum()
    }
}

/// `1,3-5`; the empty set prints as the empty string, as the kernel does.
impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.spans.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for PortSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PortSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PortSet::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_port(s: &str) -> Result<u16, PortListError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortListError::Junk(s.to_owned()));
    }
    s.parse::<u16>()
        .map_err(|_| PortListError::OutOfRange(s.to_owned()))
}

fn parse_span(item: &str) -> Result<PortSpan, PortListError> {
    match item.split_once('-') {
        None => parse_port(item).map(PortSpan::single),
        Some((a, b)) => {
            let (low, high) = (parse_port(a.trim()), parse_port(b.trim()));
            let (low, high) = match (low, high) {
                (Ok(l), Ok(h)) => (l, h),
                // Report the offending half, but junk like `1-2-3` as a whole.
                (Err(PortListError::Junk(_)), _) | (_, Err(PortListError::Junk(_))) => {
                    return Err(PortListError::Junk(item.to_owned()))
                }
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            PortSpan::new(low, high)
                .ok_or_else(|| PortListError::Reversed(item.to_owned(), format!("{high}-{low}")))
        }
    }
}

/// Ports a user asked for, as `PORT`, `LOW-HIGH`, or a comma list of them.
/// Unlike the kernel's own list, port 0 is refused: it is never handed out
/// as an ephemeral port, so reserving it is always a mistake.
pub fn parse_user_ports(s: &str) -> Result<PortSet, PortListError> {
    let set = PortSet::parse(s)?;
    if set.is_empty() {
        return Err(PortListError::Junk(s.to_owned()));
    }
    if set.contains(0) {
        return Err(PortListError::Zero);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> PortSet {
        PortSet::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_kernel_form_and_prints_it_back() {
        for canonical in [
            "",
            "1433",
            "1-7",
            "22,80,443",
            "1433,40000-40010",
            "0,65535",
            "0-65535",
        ] {
            assert_eq!(set(canonical).to_string(), canonical, "{canonical}");
        }
        // The kernel ends the value with a newline.
        assert_eq!(set("1433,40000-40010\n").to_string(), "1433,40000-40010");
        assert_eq!(set("  \n").to_string(), "");
    }

    #[test]
    fn canonicalises_unsorted_overlapping_and_adjacent_input() {
        // What `echo 1,2-5,7,6 > ip_local_reserved_ports` reads back as.
        assert_eq!(set("1,2-5,7,6").to_string(), "1-7");
        assert_eq!(set("9,3-5,1").to_string(), "1,3-5,9");
        assert_eq!(set("10-20,15-25,5-10").to_string(), "5-25");
        assert_eq!(set("10-20,12-13").to_string(), "10-20");
        assert_eq!(set("5,5,5").to_string(), "5");
        assert_eq!(set("5-5").to_string(), "5");
        assert_eq!(set(" 1 , 2 - 3 ").to_string(), "1-3");
        // Ends of the port space do not overflow when merging.
        assert_eq!(set("65535,65534,0,1").to_string(), "0-1,65534-65535");
    }

    #[test]
    fn merges_with_existing_reserved_ports() {
        let existing = set("40010,40020-40030");
        let wanted = set("40031,40040-40041");
        assert_eq!(
            existing.union(&wanted).to_string(),
            "40010,40020-40031,40040-40041"
        );
        // Bridging two spans joins them into one.
        assert_eq!(set("1-3,7-9").union(&set("4-6")).to_string(), "1-9");
        // Already covered: nothing changes.
        let e = set("1000-2000");
        assert_eq!(e.union(&set("1500")), e);
        // Merging with the empty set is the identity both ways.
        assert_eq!(PortSet::new().union(&e), e);
        assert_eq!(e.union(&PortSet::new()), e);
    }

    #[test]
    fn counts_and_membership() {
        let s = set("1433,40000-40010,40020");
        assert_eq!(s.count(), 13);
        assert!(s.contains(1433) && s.contains(40005) && s.contains(40020));
        assert!(!s.contains(1434) && !s.contains(40011));
        assert_eq!(s.count_within(40005, 40100), 7);
        assert_eq!(s.count_within(1, 1000), 0);
        assert_eq!(set("").count(), 0);
        assert_eq!(set("0-65535").count(), 65536);
    }

    #[test]
    fn rejects_bad_user_input_clearly() {
        assert_eq!(parse_user_ports("0"), Err(PortListError::Zero));
        assert_eq!(parse_user_ports("0-10"), Err(PortListError::Zero));
        assert!(matches!(
            parse_user_ports("65536"),
            Err(PortListError::OutOfRange(p)) if p == "65536"
        ));
        assert!(matches!(
            parse_user_ports("40000-70000"),
            Err(PortListError::OutOfRange(p)) if p == "70000"
        ));
        let e = parse_user_ports("40010-40000").unwrap_err();
        assert!(matches!(&e, PortListError::Reversed(..)));
        assert!(e.to_string().contains("40000-40010"), "{e}");
        for junk in [
            "", "abc", "14x3", "-5", "5-", "1-2-3", "+80", "1433,", ",1433", "1..5",
        ] {
            assert!(parse_user_ports(junk).is_err(), "{junk:?} accepted");
        }
        assert!(matches!(parse_user_ports("x"), Err(PortListError::Junk(_))));
        assert_eq!(parse_user_ports("1433").unwrap().to_string(), "1433");
        assert_eq!(
            parse_user_ports("1434,1433").unwrap().to_string(),
            "1433-1434"
        );
        assert_eq!(parse_user_ports("65535").unwrap().to_string(), "65535");
    }

    #[test]
    fn parses_the_ephemeral_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("40000 40000"), Some((40000, 40000)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
    }

    #[test]
    fn maps_names_to_proc_paths_and_reads_this_namespace() {
        assert_eq!(
            proc_path(RESERVED_PORTS),
            PathBuf::from("/proc/sys/net/ipv4/ip_local_reserved_ports")
        );
        let range = read(PORT_RANGE).unwrap().expect("every kernel has it");
        assert!(parse_port_range(&range).is_some(), "{range}");
        let reserved = read(RESERVED_PORTS).unwrap().expect("present");
        assert_eq!(set(&reserved).to_string(), reserved);
        assert_eq!(read("net.ipv4.no_such_sysctl_here").unwrap(), None);
        assert_eq!(read_number::<u32>("net.ipv4.no_such_sysctl_here"), None);
    }
}
