//! From an application's error message to the kernel's reason.
//!
//! [`recognise`] finds the runtime and error in a text with the patterns of
//! [`table::ENTRIES`], and pulls out the port, address and errno it names;
//! [`explain`] turns that into an [`Explanation`]: the kernel cause, what the
//! message gets wrong, the fixes and the myths. Both are pure; the checks run
//! on the machine are added by `cmd::explain`. [`runtime_messages`] is the
//! same table read the other way, for trace and history: the messages each
//! runtime raises for a failed bind() or connect().

pub mod checks;
pub mod table;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

use table::{ConditionInfo, Entry, CONDITIONS, ENTRIES, STRERROR, WSA_CODES};

/// Where a message's wording comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// The runtime words it the same on Linux and Windows (or it is Linux's).
    Any,
    /// Only Windows produces it: the checks belong on the Windows machine.
    Windows,
}

/// The system call that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// bind() or listen(): the server side, taking a port.
    Bind,
    /// connect(): the client side, needing an ephemeral port.
    Connect,
}

impl Side {
    pub fn call(self) -> &'static str {
        match self {
            Side::Bind => "bind()",
            Side::Connect => "connect()",
        }
    }
}

/// The error the kernel (or Winsock) returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    AddrInUse,
    AddrNotAvail,
    NoBufs,
    Access,
}

impl Error {
    pub fn linux_name(self) -> &'static str {
        match self {
            Error::AddrInUse => "EADDRINUSE",
            Error::AddrNotAvail => "EADDRNOTAVAIL",
            Error::NoBufs => "ENOBUFS",
            Error::Access => "EACCES",
        }
    }

    pub fn windows_name(self) -> &'static str {
        match self {
            Error::AddrInUse => "WSAEADDRINUSE",
            Error::AddrNotAvail => "WSAEADDRNOTAVAIL",
            Error::NoBufs => "WSAENOBUFS",
            Error::Access => "WSAEACCES",
        }
    }

    pub fn from_linux_name(name: &str) -> Option<Error> {
        [
            Error::AddrInUse,
            Error::AddrNotAvail,
            Error::NoBufs,
            Error::Access,
        ]
        .into_iter()
        .find(|e| e.linux_name() == name)
    }

    fn view(self, platform: Platform) -> ErrnoView {
        let windows = WSA_CODES
            .iter()
            .find(|(_, n, _)| *n == self.windows_name())
            .map(|(c, _, _)| *c);
        ErrnoView {
            name: self.linux_name().to_owned(),
            number: crate::errno::from_name(self.linux_name()).and_then(|n| u32::try_from(n).ok()),
            windows_name: Some(self.windows_name().to_owned()),
            windows_code: windows,
            system: match platform {
                Platform::Any => "linux",
                Platform::Windows => "windows",
            },
        }
    }
}

/// What happened in the kernel, whatever the runtime called it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// bind(): another socket holds the port.
    PortHeld,
    /// connect(): no ephemeral port is free towards the destination.
    EphemeralExhausted,
    /// bind(): the address is not one of this machine's.
    NotLocalAddress,
    /// Windows connect(): the destination is not a valid remote address.
    BadDestination,
    /// Windows bind(): the port is in an excluded range.
    ExcludedRange,
}

impl Condition {
    pub fn of(error: Error, side: Side, platform: Platform) -> Condition {
        match (error, side, platform) {
            (Error::Access, _, _) => Condition::ExcludedRange,
            (Error::AddrInUse, Side::Bind, _) => Condition::PortHeld,
            (Error::AddrNotAvail, Side::Bind, _) => Condition::NotLocalAddress,
            (Error::AddrNotAvail, Side::Connect, Platform::Windows) => Condition::BadDestination,
            (Error::AddrInUse | Error::AddrNotAvail | Error::NoBufs, Side::Connect, _) => {
                Condition::EphemeralExhausted
            }
            (Error::NoBufs, Side::Bind, _) => Condition::EphemeralExhausted,
        }
    }

    pub fn info(self) -> Option<&'static ConditionInfo> {
        CONDITIONS.iter().find(|c| c.condition == self)
    }
}

/// An errno as the message gave it, or as the recognised entry implies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrnoView {
    /// The Linux name (`EADDRINUSE`), or the WSA name when it has none.
    pub name: String,
    /// The Linux number, when known.
    pub number: Option<u32>,
    pub windows_name: Option<String>,
    pub windows_code: Option<u32>,
    /// Which system's numbering the message used: `linux` or `windows`.
    pub system: &'static str,
}

/// What could be read from the text, recognised or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Understood {
    pub port: Option<u16>,
    /// As written: an IP address or a host name.
    pub address: Option<String>,
    pub errno: Option<ErrnoView>,
}

/// A recognised message.
#[derive(Debug)]
pub struct Recognised {
    pub entry: &'static Entry,
    /// The line of the input that matched (the input may be a whole log).
    pub line: String,
    /// The calls that can have raised it, most likely first; narrowed to
    /// one when the text (a stack trace, say) shows which.
    pub sides: Vec<Side>,
    pub understood: Understood,
}

fn compiled() -> &'static [(&'static Entry, Regex)] {
    static COMPILED: OnceLock<Vec<(&'static Entry, Regex)>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        // Every pattern compiles (a unit test says so); one that did not
        // would only make its entry unrecognisable, never fail a user.
        ENTRIES
            .iter()
            .filter_map(|e| Regex::new(e.pattern).ok().map(|r| (e, r)))
            .collect()
    })
}

fn regex(cell: &'static OnceLock<Option<Regex>>, pattern: &str) -> Option<&'static Regex> {
    cell.get_or_init(|| Regex::new(pattern).ok()).as_ref()
}

macro_rules! static_regex {
    ($name:ident, $pattern:expr) => {
        fn $name() -> Option<&'static Regex> {
            static CELL: OnceLock<Option<Regex>> = OnceLock::new();
            regex(&CELL, $pattern)
        }
    };
}

// What a stack trace or the surrounding text says about the failing call.
static_regex!(
    connect_hint,
    r"(?i)\bconnect0\b|\bconnectex\b|\bconnectasync\b|\bdoconnect\b|socket\.connect\b|\.connect\(|\bconnect\(\)|connect failed|: connect\b|\bdial (?:tcp|udp)|\bhttpclient\b|\bcreate_connection\b|\burlopen\b|while connecting to upstream|failed to establish a new connection"
);
static_regex!(
    bind_hint,
    r"(?i)\bbind0\b|\bdobind\b|socket\.bind\b|\.bind\(|\bbind\(\)|bind failed|: bind\b|\btcplistener\b|\bserversocket\b|\blisten (?:tcp|udp)|\bcreate_server\b|\bjvm_bind\b"
);

// Addresses and ports written in the usual ways, most specific first.
static_regex!(
    bracketed_endpoint,
    r"\[(?P<addr>[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)\]:(?P<port>\d{1,5})\b"
);
static_regex!(
    ipv4_endpoint,
    r"\b(?P<addr>\d{1,3}(?:\.\d{1,3}){3}):(?P<port>\d{1,5})\b"
);
// Python's repr of an address, or a traceback's source line: ('h', 80), ("h", 80).
static_regex!(
    python_tuple,
    r#"\(['"](?P<addr>[^'"]*)['"], (?P<port>\d{1,5})\b"#
);
static_regex!(
    named_endpoint,
    r"(?i)\b(?P<addr>localhost|\*):(?P<port>\d{1,5})\b"
);
static_regex!(unspecified_v6, r"(?P<addr>::):(?P<port>\d{1,5})\b");
// requests/urllib3: HTTPConnectionPool(host='10.0.0.5', port=8080); curl:
// "Failed to connect to 10.0.0.5 port 8080".
static_regex!(
    host_and_port,
    r"(?i)host='(?P<addr>[^']*)', port=(?P<port>\d{1,5})\b|\b(?P<addr2>\d{1,3}(?:\.\d{1,3}){3}) port (?P<port2>\d{1,5})\b"
);
static_regex!(port_word, r"(?i)\bport[ =:]{1,2}(?P<port>\d{1,5})\b");

// Errno as the message spells it.
static_regex!(python_errno, r"\[Errno (?P<n>\d+)\]");
static_regex!(
    windows_number,
    r"(?i)(?:\[WinError |SocketException \(|WSA error |socket error |error code |error |code )(?P<n>100\d\d)\b"
);
static_regex!(wsa_name, r"\b(?P<name>WSAE[A-Z]+)\b");
static_regex!(parenthesised_errno, r"\((?P<n>\d{1,3})[:)]");
static_regex!(errno_name, r"\b(?P<name>E[A-Z]{3,15})\b");
static_regex!(errno_word, r"(?i)\berrno\W{0,3}(?P<n>\d{1,5})\b");

/// The line of `text` that holds byte offset `at`, trimmed.
fn line_at(text: &str, at: usize) -> &str {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    text[start..end].trim()
}

fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// An address as a message writes it: brackets and zone stripped of
/// surrounding noise; empty (Go's ":8080") means none.
fn clean_address(s: &str) -> Option<String> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    // SQL Server's "[ 'any' <ipv4> 1433]", a "*:80" listener: all addresses.
    (!s.is_empty() && s != "*" && !s.eq_ignore_ascii_case("any")).then(|| s.to_owned())
}

/// The first address and port found in `s`.
pub fn find_endpoint(s: &str) -> (Option<String>, Option<u16>) {
    for re in [
        bracketed_endpoint(),
        ipv4_endpoint(),
        python_tuple(),
        named_endpoint(),
        unspecified_v6(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(c) = re.captures(s) {
            let port = c.name("port").and_then(|p| parse_port(p.as_str()));
            if port.is_some() {
                return (c.name("addr").and_then(|a| clean_address(a.as_str())), port);
            }
        }
    }
    if let Some(c) = host_and_port().and_then(|re| re.captures(s)) {
        let port = c
            .name("port")
            .or(c.name("port2"))
            .and_then(|p| parse_port(p.as_str()));
        let addr = c
            .name("addr")
            .or(c.name("addr2"))
            .and_then(|a| clean_address(a.as_str()));
        if port.is_some() {
            return (addr, port);
        }
    }
    let port = port_word()
        .and_then(|re| re.captures(s))
        .and_then(|c| c.name("port").and_then(|p| parse_port(p.as_str())));
    (None, port)
}

fn linux_errno(n: u32) -> Option<ErrnoView> {
    let name = crate::errno::socket_call_name(i32::try_from(n).ok()?)?;
    let wsa = WSA_CODES.iter().find(|(_, _, l)| *l == Some(name));
    Some(ErrnoView {
        name: name.to_owned(),
        number: Some(n),
        windows_name: wsa.map(|(_, w, _)| (*w).to_owned()),
        windows_code: wsa.map(|(c, _, _)| *c),
        system: "linux",
    })
}

fn windows_errno(code: u32) -> Option<ErrnoView> {
    let (c, w, l) = WSA_CODES.iter().find(|(c, _, _)| *c == code)?;
    Some(ErrnoView {
        name: l.unwrap_or(w).to_owned(),
        number: l
            .and_then(crate::errno::from_name)
            .and_then(|n| u32::try_from(n).ok()),
        windows_name: Some((*w).to_owned()),
        windows_code: Some(*c),
        system: "windows",
    })
}

/// The errno a text names, in any of the usual spellings.
pub fn find_errno(s: &str) -> Option<ErrnoView> {
    let num = |re: Option<&'static Regex>| {
        re.and_then(|r| r.captures(s))
            .and_then(|c| c.name("n").and_then(|n| n.as_str().parse::<u32>().ok()))
    };
    if let Some(e) = num(python_errno()).and_then(linux_errno) {
        return Some(e);
    }
    if let Some(e) = num(windows_number()).and_then(windows_errno) {
        return Some(e);
    }
    if let Some(e) = wsa_name()
        .and_then(|r| {
            r.captures_iter(s).find_map(|c| {
                let name = c.name("name")?.as_str();
                WSA_CODES
                    .iter()
                    .find(|(_, w, _)| *w == name)
                    .map(|(code, _, _)| *code)
            })
        })
        .and_then(windows_errno)
    {
        return Some(e);
    }
    if let Some(e) = num(parenthesised_errno()).and_then(linux_errno) {
        return Some(e);
    }
    if let Some(e) = errno_name().and_then(|r| {
        r.captures_iter(s).find_map(|c| {
            let n = crate::errno::from_name(c.name("name")?.as_str())?;
            linux_errno(u32::try_from(n).ok()?)
        })
    }) {
        return Some(e);
    }
    if let Some(e) = num(errno_word()).and_then(linux_errno) {
        return Some(e);
    }
    // Last, the C library's text for it ("Connection refused").
    let lower = s.to_lowercase();
    STRERROR
        .iter()
        .find(|(text, _)| lower.contains(&text.to_lowercase()))
        .and_then(|(_, name)| crate::errno::from_name(name))
        .and_then(|n| u32::try_from(n).ok())
        .and_then(linux_errno)
}

/// Which call the text says failed, when it says so unambiguously.
fn side_hint(text: &str) -> Option<Side> {
    let connect = connect_hint().is_some_and(|r| r.is_match(text));
    let bind = bind_hint().is_some_and(|r| r.is_match(text));
    match (connect, bind) {
        (true, false) => Some(Side::Connect),
        (false, true) => Some(Side::Bind),
        _ => None,
    }
}

/// Everything readable in a text that no entry recognises.
pub fn understand(text: &str) -> Understood {
    let (address, port) = find_endpoint(text);
    Understood {
        port,
        address,
        errno: find_errno(text),
    }
}

/// The first entry (in table order) whose pattern matches `text`, with what
/// the text says around it; otherwise what could be understood.
pub fn recognise(text: &str) -> Result<Recognised, Understood> {
    let Some((entry, caps)) = compiled()
        .iter()
        .find_map(|(e, re)| re.captures(text).map(|c| (*e, c)))
    else {
        return Err(understand(text));
    };
    let whole = caps.get(0).map_or(0..0, |m| m.range());
    let line = line_at(text, whole.start).to_owned();
    // The entry's own captures first, then the matched line, then the text.
    let mut address = caps.name("addr").and_then(|a| clean_address(a.as_str()));
    let mut port = caps.name("port").and_then(|p| parse_port(p.as_str()));
    if let Some(url) = caps.name("url") {
        let (a, p) = find_endpoint(url.as_str());
        address = address.or(a);
        port = port.or(p);
    }
    // An address is taken from elsewhere only together with a port: Go's
    // "listen tcp :8080" names no address on purpose (all of them).
    for scope in [line.as_str(), text] {
        if port.is_none() {
            let (a, p) = find_endpoint(scope);
            port = p;
            address = address.or(a);
        }
    }
    let sides = match side_hint(text) {
        Some(s) if entry.sides.contains(&s) => vec![s],
        _ => entry.sides.to_vec(),
    };
    Ok(Recognised {
        entry,
        line,
        sides,
        understood: Understood {
            port,
            address,
            errno: Some(entry.error.view(entry.platform)),
        },
    })
}

/// Values for the `{port}`, `{addr}`, `{endpoint}` templates of the table.
#[derive(Clone, Debug, Default)]
pub struct Values {
    pub port: Option<u16>,
    pub addr: Option<String>,
}

impl Values {
    fn endpoint(&self, bracket: bool) -> String {
        let port = self.port.map_or("PORT".to_owned(), |p| p.to_string());
        match self.addr.as_deref() {
            Some(a) if bracket && a.contains(':') => format!("[{a}]:{port}"),
            Some(a) => format!("{a}:{port}"),
            None => format!("ADDRESS:{port}"),
        }
    }

    pub fn render(&self, template: &str) -> String {
        template
            .replace("{endpoint_unbracketed}", &self.endpoint(false))
            .replace("{endpoint}", &self.endpoint(true))
            .replace(
                "{the_port}",
                &self
                    .port
                    .map_or("the port".to_owned(), |p| format!("port {p}")),
            )
            .replace(
                "{port}",
                &self.port.map_or("PORT".to_owned(), |p| p.to_string()),
            )
            .replace("{addr}", self.addr.as_deref().unwrap_or("ADDRESS"))
    }
}

/// One thing looked at on this machine (or to look at on another).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What is being looked at.
    pub what: String,
    /// The command that shows the same, to run again later or elsewhere.
    pub command: Option<String>,
    /// What was found; empty when the check is only a command to run.
    pub result: Vec<String>,
}

/// The whole answer: `--json` writes it as it is.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub recognised: bool,
    /// The line that was explained (the first line when nothing matched).
    pub message: String,
    /// The table entry, e.g. `java-connect-address-in-use`.
    pub id: Option<&'static str>,
    pub runtime: Option<&'static str>,
    pub platform: Option<Platform>,
    pub errno: Option<ErrnoView>,
    /// The call that most likely failed.
    pub side: Option<Side>,
    /// The other call that can raise the same message, when the text does
    /// not tell them apart.
    pub other_side: Option<Side>,
    pub condition: Option<Condition>,
    /// What happened in the kernel if `other_side` failed.
    pub other_condition: Option<Condition>,
    pub port: Option<u16>,
    pub address: Option<String>,
    /// The kernel cause, in one sentence.
    pub cause: Option<String>,
    /// The kernel cause if `other_side` failed.
    pub cause_if_other_side: Option<String>,
    /// What this runtime's message means.
    pub about_message: Option<String>,
    /// Why the message points the wrong way.
    pub misleading: Option<String>,
    pub checks: Vec<Check>,
    /// Fixes, most likely first.
    pub fixes: Vec<String>,
    pub myths: Vec<String>,
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// The explanation of a recognised message, before any machine checks.
pub fn explain(r: &Recognised) -> Explanation {
    let e = r.entry;
    let values = Values {
        port: r.understood.port,
        addr: r.understood.address.clone(),
    };
    let conditions: Vec<Condition> = r
        .sides
        .iter()
        .map(|s| Condition::of(e.error, *s, e.platform))
        .collect();
    let summary = |c: Option<&Condition>| {
        c.and_then(|c| c.info())
            .map(|i| values.render(i.summary) + ".")
    };
    let mut fixes = Vec::new();
    let mut myths = Vec::new();
    for f in e.fixes {
        push_unique(&mut fixes, values.render(f));
    }
    for info in conditions.iter().filter_map(|c| c.info()) {
        let platform_fixes = match e.platform {
            Platform::Windows => info.fixes_windows,
            Platform::Any => info.fixes_linux,
        };
        for f in platform_fixes {
            push_unique(&mut fixes, values.render(f));
        }
        for m in info.myths {
            push_unique(&mut myths, (*m).to_owned());
        }
    }
    Explanation {
        recognised: true,
        message: r.line.clone(),
        id: Some(e.id),
        runtime: Some(e.runtime),
        platform: Some(e.platform),
        errno: r.understood.errno.clone(),
        side: r.sides.first().copied(),
        other_side: r.sides.get(1).copied(),
        condition: conditions.first().copied(),
        other_condition: conditions.get(1).copied(),
        port: r.understood.port,
        address: r.understood.address.clone(),
        cause: summary(conditions.first()),
        cause_if_other_side: summary(conditions.get(1)),
        about_message: Some(values.render(e.cause)),
        misleading: e.misleading.map(|m| values.render(m)),
        checks: Vec::new(),
        fixes,
        myths,
    }
}

/// The answer for a text nothing in the table recognises.
pub fn not_recognised(text: &str, u: Understood) -> Explanation {
    let message = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned();
    Explanation {
        recognised: false,
        message,
        id: None,
        runtime: None,
        platform: None,
        errno: u.errno,
        side: None,
        other_side: None,
        condition: None,
        other_condition: None,
        port: u.port,
        address: u.address,
        cause: None,
        cause_if_other_side: None,
        about_message: None,
        misleading: None,
        checks: Vec::new(),
        fixes: Vec::new(),
        myths: Vec::new(),
    }
}

/// Whether an entry's wording can come from the system portwatch runs on.
fn on_this_platform(p: Platform) -> bool {
    p == Platform::Any || cfg!(windows)
}

/// The runtimes [`runtime_messages`] names, in this order, at most
/// [`HINT_RUNTIMES`] of them so that the hint stays one line.
pub const HINT_ORDER: &[&str] = &["Java", "Python", "Go", "Node.js", ".NET", ".NET / Win32"];
pub const HINT_RUNTIMES: usize = 4;

/// The messages common runtimes raise for a bind() or connect() that failed
/// with `errno` (a Linux name such as `EADDRNOTAVAIL`), one per runtime, as
/// `java: "..." · python: "..."`; `None` when the table knows none.
pub fn runtime_messages(
    errno: &str,
    side: Side,
    addr: Option<IpAddr>,
    port: Option<u16>,
) -> Option<String> {
    let error = Error::from_linux_name(errno)?;
    let values = Values {
        port,
        addr: addr.map(|a| a.to_string()),
    };
    let parts: Vec<String> = HINT_ORDER
        .iter()
        .filter_map(|runtime| {
            // The first entry of this runtime (in table order) that raises
            // this error for this call here.
            ENTRIES.iter().find_map(|e| {
                let raises = e.raises?;
                (e.runtime == *runtime
                    && e.error == error
                    && e.sides.contains(&side)
                    && on_this_platform(e.platform))
                .then(|| {
                    format!(
                        "{}: \"{}\"",
                        e.runtime.to_lowercase(),
                        values.render(raises)
                    )
                })
            })
        })
        .take(HINT_RUNTIMES)
        .collect();
    (!parts.is_empty()).then(|| parts.join(" · "))
}
