//! `portwatch explain "ERROR TEXT"`: an application's port error, explained,
//! and looked into on this machine.
//!
//! [`crate::explain`] recognises the message and says what it means; this
//! module reads the input, looks at the machine with the code `who` and
//! `doctor` use ([`collect`], Linux only), hands what it saw to
//! [`crate::explain::checks`] and prints text or JSON.

// Some are used only by the Linux machine checks.
#[cfg_attr(not(target_os = "linux"), allow(unused_imports))]
use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Read, Write};
#[cfg_attr(not(target_os = "linux"), allow(unused_imports))]
use std::net::IpAddr;

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::cli::ExplainArgs;
#[cfg_attr(not(target_os = "linux"), allow(unused_imports))]
use crate::cmd::doctor::{self, Finding};
use crate::escape::visible;
#[cfg_attr(not(target_os = "linux"), allow(unused_imports))]
use crate::explain::checks::{add_machine, add_windows_checks, conditions, ip_of, Holder, Machine};
#[cfg_attr(not(target_os = "linux"), allow(unused_imports))]
use crate::explain::{self, Condition, Explanation, Platform};
use crate::output::one_line;

/// The most read from standard input: enough for a log excerpt with its
/// stack trace, not a whole log.
const MAX_INPUT: u64 = 1 << 20;

/// The text to explain: the arguments joined, or standard input when the
/// argument is `-`, or absent and standard input is not a terminal.
pub fn read_input(
    args: &[String],
    stdin_is_terminal: bool,
    stdin: impl Read,
) -> anyhow::Result<String> {
    let from_stdin = match args {
        [] => !stdin_is_terminal,
        [dash] => dash == "-",
        _ => false,
    };
    if !from_stdin {
        if args.is_empty() {
            bail!("give the error message as an argument (portwatch explain \"TEXT\") or pipe it in (... | portwatch explain)");
        }
        return Ok(args.join(" "));
    }
    let mut raw = Vec::new();
    stdin
        .take(MAX_INPUT)
        .read_to_end(&mut raw)
        .context("cannot read the error message from standard input")?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

#[cfg(target_os = "linux")]
fn holders_of(r: crate::cmd::who::WhoReport) -> (Vec<Holder>, Option<String>) {
    let holders = r
        .sockets
        .into_iter()
        .map(|s| Holder {
            protocol: s.ends.protocol.name(),
            local: s.ends.local(),
            remote: s.ends.remote(),
            state: s.ends.state,
            pid: s.pid,
            comm: s.comm,
            unit: s.unit.map(Into::into),
            note: match s.created_by {
                Some(c) => Some(format!(
                    "created by {}[{}] (journal)",
                    c.comm.as_deref().unwrap_or("?"),
                    c.pid.map_or("?".to_owned(), |p| p.to_string())
                )),
                None => s.no_owner,
            },
        })
        .collect();
    (holders, r.missing)
}

#[cfg(target_os = "linux")]
fn count_towards(a: IpAddr, port: u16) -> Result<BTreeMap<String, u32>, String> {
    use crate::model::TcpState;
    use crate::sockdiag::{SockDiag, TCP_ALL_STATES};
    let entries = SockDiag::new()
        .and_then(|mut d| d.tcp_sockets(TCP_ALL_STATES))
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for e in entries
        .iter()
        .filter(|e| e.daddr.to_canonical() == a.to_canonical() && e.dport == port)
    {
        let state = TcpState::from_kernel(e.state)
            .map_or_else(|| format!("STATE{}", e.state), |s| s.name().to_owned());
        *out.entry(state).or_insert(0) += 1;
    }
    Ok(out)
}

#[cfg(target_os = "linux")]
fn test_bind(a: IpAddr) -> Result<bool, String> {
    match std::net::UdpSocket::bind((a, 0)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Looks at this machine for what the explanation needs.
#[cfg(target_os = "linux")]
pub fn collect(x: &Explanation, journal: &std::path::Path) -> Machine {
    use crate::sysctl;
    let conds = conditions(x);
    let mut m = Machine {
        hostname: sysctl::read("kernel.hostname").ok().flatten(),
        ports: Some(doctor::collect_ports()),
        ..Machine::default()
    };
    if let (true, Some(port)) = (conds.contains(&Condition::PortHeld), x.port) {
        match crate::cmd::who::snapshot(port, journal) {
            Ok(r) => {
                let (h, missing) = holders_of(r);
                m.holders = Some(Ok(h));
                m.holders_missing = missing;
            }
            Err(e) => m.holders = Some(Err(format!("{e:#}"))),
        }
    }
    if let (true, Some(a), Some(port)) = (
        conds.contains(&Condition::EphemeralExhausted),
        ip_of(x),
        x.port,
    ) {
        m.towards = Some(count_towards(a, port));
    }
    if let (true, Some(a)) = (conds.contains(&Condition::NotLocalAddress), ip_of(x)) {
        m.address_local = Some(test_bind(a));
        let name = if a.is_ipv6() {
            "net.ipv6.ip_nonlocal_bind"
        } else {
            "net.ipv4.ip_nonlocal_bind"
        };
        m.nonlocal_bind = Some((name, sysctl::read_number(name)));
    }
    m
}

#[cfg(not(target_os = "linux"))]
pub fn collect(_: &Explanation, _: &std::path::Path) -> Machine {
    Machine::default()
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    explanation: &'a Explanation,
    /// doctor's findings on the configuration the message is about.
    findings: &'a [Finding],
    /// The sockets on the message's port, when it was looked up.
    sockets: Option<&'a [Holder]>,
}

fn errno_text(x: &Explanation) -> Option<String> {
    let e = x.errno.as_ref()?;
    Some(
        match (e.system, &e.windows_name, e.windows_code, e.number) {
            ("windows", Some(w), Some(c), _) => format!("{w} ({c}, Linux {})", e.name),
            (_, _, _, Some(n)) => format!("{} ({n})", e.name),
            _ => e.name.clone(),
        },
    )
}

/// The human-readable answer.
pub fn write_text(w: &mut impl Write, x: &Explanation, hostname: Option<&str>) -> io::Result<()> {
    let message = one_line(&visible(&x.message), 240);
    if !x.recognised {
        writeln!(w, "not recognised: \"{message}\"")?;
        let mut understood = Vec::new();
        if let Some(p) = x.port {
            understood.push(format!("port {p}"));
        }
        if let Some(a) = &x.address {
            understood.push(format!("address {}", visible(a)));
        }
        if let Some(e) = errno_text(x) {
            understood.push(format!("errno {e}"));
        }
        writeln!(
            w,
            "understood: {}",
            if understood.is_empty() {
                "no port, address or errno".to_owned()
            } else {
                understood.join(", ")
            }
        )?;
        writeln!(w, "portwatch explains port errors (EADDRINUSE, EADDRNOTAVAIL and their Windows equivalents) of Java, .NET and Winsock, Python, Go, Node.js, nginx, SQL Server and PostgreSQL, and the plain errno names and numbers.")?;
        return Ok(());
    }
    let runtime = x.runtime.unwrap_or("?");
    let wording = if x.platform == Some(Platform::Windows) {
        " (Windows)"
    } else {
        ""
    };
    writeln!(w, "{runtime}{wording}: {message}")?;
    let side = match (x.side, x.other_side) {
        (Some(s), Some(o)) => format!(
            " from {} (or from {}: the message alone does not tell, a stack trace does)",
            s.call(),
            o.call()
        ),
        (Some(s), None) => format!(" from {}", s.call()),
        _ => String::new(),
    };
    if let Some(e) = errno_text(x) {
        writeln!(w, "  error: {e}{side}")?;
    }
    if x.port.is_some() || x.address.is_some() {
        let a = x.address.as_deref().map(visible).unwrap_or_default();
        let p = x.port.map_or(String::new(), |p| p.to_string());
        writeln!(
            w,
            "  about: {}",
            match (a.is_empty(), p.is_empty()) {
                (false, false) => format!("address {a}, port {p}"),
                (false, true) => format!("address {a}"),
                _ => format!("port {p}"),
            }
        )?;
    }
    writeln!(w, "\nKernel cause")?;
    if let Some(c) = &x.cause {
        writeln!(w, "  {c}")?;
    }
    if let (Some(o), Some(c)) = (x.other_side, &x.cause_if_other_side) {
        writeln!(w, "  If it came from {} instead: {c}", o.call())?;
    }
    writeln!(w, "\nThis message")?;
    if let Some(a) = &x.about_message {
        writeln!(w, "  {a}")?;
    }
    if let Some(m) = &x.misleading {
        writeln!(w, "  Misleading: {m}")?;
    }
    if !x.checks.is_empty() {
        let place = match (x.platform, hostname) {
            (Some(Platform::Windows), _) => {
                "On the Windows machine that raised it, look at".to_owned()
            }
            (_, Some(h)) => format!("On this machine ({}), looked at just now", visible(h)),
            _ => "On this machine, looked at just now".to_owned(),
        };
        writeln!(w, "\n{place}")?;
        for c in &x.checks {
            match &c.command {
                Some(cmd) => writeln!(w, "  {}: {cmd}", c.what)?,
                None => writeln!(w, "  {}", c.what)?,
            }
            for r in &c.result {
                writeln!(w, "    {r}")?;
            }
        }
    }
    writeln!(w, "\nFixes, most likely first")?;
    for (i, f) in x.fixes.iter().enumerate() {
        writeln!(w, "  {}. {f}", i + 1)?;
    }
    if !x.myths.is_empty() {
        writeln!(w, "\nMyths")?;
        for m in &x.myths {
            writeln!(w, "  - {m}")?;
        }
    }
    Ok(())
}

/// Runs `portwatch explain`; `Ok(false)` when the message was not recognised.
pub fn run(args: ExplainArgs) -> anyhow::Result<bool> {
    let stdin = io::stdin();
    let text = read_input(&args.text, stdin.is_terminal(), stdin.lock())?;
    if text.trim().is_empty() {
        bail!("nothing to explain: the error message is empty");
    }
    let (mut x, machine) = match explain::recognise(&text) {
        Ok(mut r) => {
            if args.port.is_some() {
                r.understood.port = args.port;
            }
            let mut x = explain::explain(&r);
            let machine = if args.no_checks {
                Machine::default()
            } else if x.platform == Some(Platform::Windows) {
                add_windows_checks(&mut x);
                Machine::default()
            } else {
                collect(&x, &args.journal)
            };
            (x, machine)
        }
        Err(u) => (explain::not_recognised(&text, u), Machine::default()),
    };
    let findings = add_machine(&mut x, &machine);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = if args.json {
        let sockets = match &machine.holders {
            Some(Ok(h)) => Some(h.as_slice()),
            _ => None,
        };
        serde_json::to_writer(
            &mut out,
            &JsonReport {
                explanation: &x,
                findings: &findings,
                sockets,
            },
        )
        .map_err(io::Error::from)
        .and_then(|()| writeln!(out))
    } else {
        write_text(&mut out, &x, machine.hostname.as_deref())
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(x.recognised),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn input_comes_from_the_words_or_from_a_pipe() {
        let piped = "Traceback ...\nOSError: [Errno 98] Address already in use\n".as_bytes();
        assert_eq!(
            read_input(&args(&["[Errno", "98]"]), true, piped).expect("words"),
            "[Errno 98]"
        );
        assert!(read_input(&args(&["-"]), true, piped)
            .expect("dash")
            .contains("[Errno 98]"));
        assert!(read_input(&[], false, piped)
            .expect("pipe")
            .contains("Traceback"));
        let e = read_input(&[], true, piped).expect_err("a terminal and no words");
        assert!(e.to_string().contains("pipe it in"), "{e}");
        // A whole log is cut at MAX_INPUT instead of filling memory.
        let big = vec![b'x'; MAX_INPUT as usize + 10];
        let read = read_input(&args(&["-"]), false, big.as_slice()).expect("big");
        assert_eq!(read.len() as u64, MAX_INPUT);
    }

    fn text_of(x: &Explanation) -> String {
        let mut out = Vec::new();
        write_text(&mut out, x, Some("host\x1b[2J")).expect("write");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn text_has_the_sections_in_order_and_escapes_what_it_was_given() {
        let r =
            explain::recognise("\x1b[31mjava.net.BindException: Address already in use: connect")
                .expect("java");
        let mut x = explain::explain(&r);
        add_windows_checks(&mut x);
        let text = text_of(&x);
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(
            text.starts_with(r"Java (Windows): \e[31mjava.net.BindException"),
            "{text}"
        );
        assert!(
            text.contains("error: WSAEADDRINUSE (10048, Linux EADDRINUSE) from connect()"),
            "{text}"
        );
        let order = [
            "\nKernel cause\n",
            "\nThis message\n",
            "\nOn the Windows machine that raised it, look at\n",
            "\nFixes, most likely first\n  1. ",
            "\nMyths\n  - ",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|s| {
                text.find(s)
                    .unwrap_or_else(|| panic!("{s:?} missing:\n{text}"))
            })
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(
            text.contains("netsh int ipv4 show dynamicport tcp"),
            "{text}"
        );
        // A Linux message's checks name the (escaped) host they ran on.
        let mut y = explain::explain(
            &explain::recognise("[Errno 99] Cannot assign requested address").expect("py"),
        );
        y.checks.push(explain::Check {
            what: "w".into(),
            command: None,
            result: vec!["r".into()],
        });
        let t = text_of(&y);
        assert!(
            t.contains(r"On this machine (host\e[2J), looked at just now"),
            "{t}"
        );
        assert!(
            t.contains("from connect() (or from bind(): the message alone does not tell"),
            "{t}"
        );
        assert!(
            t.contains("If it came from bind() instead: bind() failed with EADDRNOTAVAIL"),
            "{t}"
        );
    }

    #[test]
    fn unrecognised_text_says_so_and_what_it_understood() {
        let text = "curl: (7) Failed to connect to 10.0.0.5 port 8080: Connection refused\x07";
        let x = explain::not_recognised(text, explain::understand(text));
        let t = text_of(&x);
        assert!(t.starts_with("not recognised: \"curl: (7) Failed to connect to 10.0.0.5 port 8080: Connection refused\\x07\""), "{t}");
        assert!(
            t.contains("understood: port 8080, address 10.0.0.5, errno ECONNREFUSED (111)"),
            "{t}"
        );
        let none = explain::not_recognised("hello", explain::understand("hello"));
        assert!(text_of(&none).contains("understood: no port, address or errno"));
        // JSON has the same, as data.
        let v = serde_json::to_value(JsonReport {
            explanation: &x,
            findings: &[],
            sockets: None,
        })
        .expect("json");
        assert_eq!(v["recognised"], false);
        assert_eq!(v["port"], 8080);
        assert_eq!(v["errno"]["name"], "ECONNREFUSED");
        assert!(v["findings"].as_array().is_some_and(Vec::is_empty) && v["sockets"].is_null());
    }
}
