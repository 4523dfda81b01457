//! Doctor's findings from facts built here and from facts recorded on real
//! machines, and both renderings.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::facts::*;
use super::findings::*;
use super::render::{severity_style, to_json, write_text};
use crate::model::Protocol;
use crate::source::{EventHooks, HookAttempt, HookKind, HookTable};
use crate::sysctl::PortSet;

fn attempt(how: &str, mechanism: HookKind, loads: bool) -> HookAttempt {
    HookAttempt {
        how: how.into(),
        mechanism,
        loads,
        reason: (!loads).then(|| format!("{how} refused")),
    }
}

fn event(what: &'static str, attempts: Vec<HookAttempt>, fallback: Option<&str>) -> EventHooks {
    let first = attempts.iter().find(|a| a.loads);
    EventHooks {
        event: what,
        chosen: first.map(|a| a.how.clone()).or(fallback.map(str::to_owned)),
        mechanism: first
            .map(|a| a.mechanism)
            .or(fallback.map(|_| HookKind::Tracepoint)),
        attempts,
    }
}

/// A hook table where fexit/fentry and kprobes load or not; the syscall
/// tracepoints always do.
fn hooks(fexit: bool, kprobe: bool, extra: Vec<HookAttempt>) -> HookTable {
    let call = |what: &'static str| {
        event(
            what,
            vec![
                attempt("fexit f", HookKind::Fexit, fexit),
                attempt("kprobe+kretprobe f", HookKind::Kprobe, kprobe),
                attempt("tracepoint syscalls:x", HookKind::SyscallTracepoints, true),
            ],
            None,
        )
    };
    let state = attempt(
        "tracepoint sock:inet_sock_set_state",
        HookKind::Tracepoint,
        true,
    );
    HookTable {
        events: vec![
            event("state", vec![state], None),
            event(
                "timewait",
                vec![
                    attempt("fentry tcp_time_wait", HookKind::Fentry, fexit),
                    attempt("kprobe tcp_time_wait", HookKind::Kprobe, kprobe),
                ],
                Some("state tracepoint + sock_diag confirmation"),
            ),
            call("bind"),
            call("connect"),
        ],
        extra,
        netns: None,
    }
}

/// The hook table of the development host: no kprobes, fexit refused.
fn dev_host_hooks() -> HookTable {
    hooks(
        false,
        false,
        vec![attempt("cgroup", HookKind::CgroupSockAddr, true)],
    )
}

/// A production-like kernel: fexit everywhere.
fn fexit_hooks() -> HookTable {
    hooks(true, true, vec![])
}

fn caps(hooks: Result<HookTable, String>) -> KernelCaps {
    KernelCaps {
        kernel: "6.18.0".into(),
        privileged: hooks.is_ok(),
        hooks,
        linux: Some(LinuxKernel {
            btf: true,
            tracefs: Tracefs::Mounted,
            ring_buffer: Ok(true),
            lockdown: Lockdown {
                mode: Some("integrity".into()),
                source: Some("test".into()),
            },
            kprobe_pmu: false,
            config: BTreeMap::new(),
        }),
    }
}

fn linux(k: &mut KernelCaps) -> &mut LinuxKernel {
    k.linux.as_mut().expect("Linux facts")
}

fn listener(protocol: Protocol, port: u16) -> Listener {
    Listener {
        protocol,
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port,
        owners: vec![Owner {
            pid: 4242,
            comm: "sqlservr".into(),
        }],
    }
}

fn ports(low: u16, high: u16, reserved: &str) -> PortConfig {
    PortConfig {
        ephemeral_range: Some(EphemeralRange { low, high }),
        reserved_ports: Some(PortSet::parse(reserved).unwrap()),
        tcp_tw_reuse: Some(2),
        tcp_tw_reuse_delay_ms: Some(1000),
        tcp_max_tw_buckets: Some(262144),
        tcp_fin_timeout: Some(60),
        owners_complete: true,
        ..Default::default()
    }
}

fn about<'a>(fs: &'a [Finding], needle: &str) -> Vec<&'a Finding> {
    fs.iter().filter(|f| f.message.contains(needle)).collect()
}

#[test]
fn flags_a_listener_inside_the_range_with_the_exact_fix() {
    let mut p = ports(40000, 40100, "40010,40020-40030");
    p.listeners = vec![
        listener(Protocol::Tcp, 40050),
        listener(Protocol::Tcp, 1433),
    ];
    let fs = port_findings(&p);
    let hit = about(&fs, "port 40050");
    assert_eq!(hit.len(), 1, "{fs:#?}");
    assert_eq!(hit[0].severity, Severity::Warning);
    assert!(
        hit[0].message.contains("sqlservr (pid 4242)"),
        "{}",
        hit[0].message
    );
    assert!(hit[0].message.contains("40000-40100"));
    let fix = hit[0].fix.as_deref().unwrap();
    assert!(fix.starts_with("portwatch reserve 40050"), "{fix}");
    // The sysctl alternative is merged with what is reserved already.
    assert!(
        fix.contains("sysctl -w net.ipv4.ip_local_reserved_ports=40010,40020-40030,40050"),
        "{fix}"
    );
    // 1433 is outside the range: not flagged.
    assert!(about(&fs, "port 1433").is_empty(), "{fs:#?}");
}

#[test]
fn a_reserved_listener_is_not_flagged() {
    let mut p = ports(40000, 40100, "40040-40060");
    p.listeners = vec![listener(Protocol::Tcp, 40050)];
    assert!(about(&port_findings(&p), "40050").is_empty());
    // The range edges count as inside.
    let mut p = ports(40000, 40100, "");
    p.listeners = vec![
        listener(Protocol::Tcp, 40000),
        listener(Protocol::Tcp, 40100),
    ];
    let fs = port_findings(&p);
    assert_eq!(about(&fs, "ports 40000 (tcp, ").len(), 1, "{fs:#?}");
    assert_eq!(about(&fs, " and 40100 (tcp, ").len(), 1, "{fs:#?}");
}

/// The value a fix's `sysctl -w net.ipv4.ip_local_reserved_ports=...` sets.
fn sysctl_value(fix: &str) -> PortSet {
    let v = fix
        .split("ip_local_reserved_ports=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("a sysctl -w in the fix")
        .trim_end_matches(',');
    PortSet::parse(v).expect("a port list")
}

#[test]
fn following_every_reserve_fix_keeps_every_port() {
    // Two TCP listeners and a UDP socket in the range, 40010 reserved.
    let fs = analyze(&recorded("root"));
    let fixes: Vec<&str> = fs
        .iter()
        .filter_map(|f| f.fix.as_deref())
        .filter(|f| f.contains("ip_local_reserved_ports="))
        .collect();
    assert_eq!(fixes.len(), 2, "one for TCP, one for UDP: {fs:#?}");
    let tcp = about(&fs, "ports 40050 (tcp, python3 (pid ");
    assert_eq!(tcp.len(), 1, "{fs:#?}");
    assert!(tcp[0].message.contains(" and 40060 (tcp, python3 (pid "));
    let fix = tcp[0].fix.as_deref().expect("fix");
    assert!(
        fix.starts_with("portwatch reserve 40050 40060 --persist"),
        "{fix}"
    );
    // Whichever sysctl alternative is applied, in whatever order, what was
    // reserved and every flagged port stay reserved.
    let want = PortSet::parse("40010,40050,40060,40070").expect("set");
    for fix in fixes {
        assert_eq!(sysctl_value(fix), want, "{fix}");
    }
}

#[test]
fn one_finding_per_port_and_udp_is_only_information() {
    let mut p = ports(32768, 60999, "");
    let mut v6 = listener(Protocol::Tcp, 50000);
    v6.addr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    p.listeners = vec![
        listener(Protocol::Tcp, 50000),
        v6,
        listener(Protocol::Udp, 45000),
    ];
    let fs = port_findings(&p);
    assert_eq!(about(&fs, "port 50000").len(), 1, "{fs:#?}");
    let udp = about(&fs, "UDP port 45000");
    assert_eq!(udp.len(), 1, "{fs:#?}");
    assert_eq!(udp[0].severity, Severity::Info);
    assert!(udp[0]
        .fix
        .as_deref()
        .unwrap()
        .contains("portwatch reserve 45000"));
}

fn tw(p: &mut PortConfig, daddr: IpAddr, count: u32) {
    p.time_wait.push(TimeWaitDest {
        daddr,
        dport: 8080,
        count,
    });
    p.time_wait_total += u64::from(count);
}

#[test]
fn time_wait_thresholds_against_the_range_capacity() {
    let remote = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    let sev = |count: u32, reuse: u8, daddr: IpAddr| {
        // 101 ports, one reserved inside: capacity 100.
        let mut p = ports(40000, 40100, "40050,1433");
        p.tcp_tw_reuse = Some(reuse);
        tw(&mut p, daddr, count);
        let fs = port_findings(&p);
        let hit = about(&fs, "TIME_WAIT sockets towards");
        assert!(hit.len() <= 1);
        hit.first()
            .map(|f| (f.severity, f.message.clone(), f.fix.clone()))
    };
    assert_eq!(sev(50, 0, remote), None);
    let (s, msg, fix) = sev(51, 0, remote).unwrap();
    assert_eq!(s, Severity::Warning);
    assert!(
        msg.contains("10.0.0.7:8080") && msg.contains("51%") && msg.contains("of the 100"),
        "{msg}"
    );
    assert!(fix.unwrap().contains("net.ipv4.tcp_tw_reuse=1"));
    assert_eq!(sev(90, 0, remote).unwrap().0, Severity::Warning);
    assert_eq!(sev(91, 0, remote).unwrap().0, Severity::Critical);
    // tcp_tw_reuse=2 helps loopback only; =1 helps everyone: then at most a warning.
    assert_eq!(sev(95, 2, remote).unwrap().0, Severity::Critical);
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (s, msg, fix) = sev(95, 2, lo).unwrap();
    assert_eq!(s, Severity::Warning);
    assert!(msg.contains("tcp_tw_reuse=2"), "{msg}");
    assert!(!fix.unwrap().contains("tcp_tw_reuse=1"));
    assert_eq!(sev(95, 1, remote).unwrap().0, Severity::Warning);
    let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
    assert_eq!(sev(95, 2, mapped).unwrap().0, Severity::Warning);
}

#[test]
fn warns_about_a_narrow_or_mostly_reserved_range_and_tw_bucket_limit() {
    let fs = port_findings(&ports(40000, 40100, ""));
    assert_eq!(about(&fs, "has only 101 ports").len(), 1, "{fs:#?}");
    let fs = port_findings(&ports(40000, 40000, ""));
    assert_eq!(
        about(
            &fs,
            "has only 1 port: at most 1 concurrent or TIME_WAIT connection per destination"
        )
        .len(),
        1,
        "{fs:#?}"
    );
    assert!(port_findings(&ports(32768, 60999, ""))
        .iter()
        .all(|f| !f.message.contains("has only")));
    let fs = port_findings(&ports(32768, 60999, "32768-50000"));
    assert_eq!(about(&fs, "reserved ports take 17233").len(), 1, "{fs:#?}");

    let mut p = ports(32768, 60999, "");
    p.tcp_max_tw_buckets = Some(1000);
    p.time_wait_total = 950;
    assert_eq!(
        about(&port_findings(&p), "tcp_max_tw_buckets=1000").len(),
        1
    );
    p.time_wait_total = 900;
    assert!(about(&port_findings(&p), "tcp_max_tw_buckets").is_empty());
}

#[test]
fn explains_tw_reuse_and_corrects_the_myths() {
    let fs = port_findings(&ports(32768, 60999, ""));
    let reuse = about(&fs, "tcp_tw_reuse=2");
    assert_eq!(reuse.len(), 1);
    assert!(reuse[0].message.contains("loopback only") && reuse[0].message.contains("1000 ms"));
    let fin = about(&fs, "tcp_fin_timeout");
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].severity, Severity::Info);
    assert!(fin[0].message.contains("fixed 60 s"));
    let res = about(&fs, "does not stop a program from binding it explicitly");
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].severity, Severity::Info);
    // Before 6.13 there is no tcp_tw_reuse_delay: fine, just not mentioned.
    let mut p = ports(32768, 60999, "");
    p.tcp_tw_reuse_delay_ms = None;
    p.tcp_tw_reuse = Some(0);
    let fs = port_findings(&p);
    let reuse = about(&fs, "tcp_tw_reuse=0");
    assert!(
        reuse[0].message.contains("disabled") && !reuse[0].message.contains("tcp_tw_reuse_delay")
    );
    assert!(fs.iter().all(|f| f.severity == Severity::Info), "{fs:#?}");
}

#[test]
fn syscall_tracepoints_warn_with_the_measured_tax() {
    let fs = capability_findings(&caps(Ok(dev_host_hooks())));
    let w = about(&fs, "syscall tracepoints");
    assert_eq!(w.len(), 1, "{fs:#?}");
    assert_eq!(w[0].severity, Severity::Warning);
    assert!(
        w[0].message.starts_with("bind and connect"),
        "{}",
        w[0].message
    );
    assert!(w[0].message.contains("measured on the development host"));
    assert!(w[0].message.contains("198 ns") && w[0].message.contains("244 ns"));
    assert!(w[0].fix.is_some());
    // The cgroup hooks load here: only a kernel where they do not is told so.
    assert_eq!(about(&fs, "cgroup sock_addr").len(), 0);
    assert_eq!(about(&fs, "tcp_time_wait cannot be hooked").len(), 1);
    assert!(
        fs.iter().all(|f| f.severity != Severity::Critical),
        "{fs:#?}"
    );

    // With fexit nothing taxes every syscall, and nothing is said about it.
    let fs = capability_findings(&caps(Ok(fexit_hooks())));
    assert!(about(&fs, "syscall").is_empty(), "{fs:#?}");
    assert!(about(&fs, "tcp_time_wait").is_empty(), "{fs:#?}");
}

#[test]
fn a_missing_hook_or_refused_probe_is_critical() {
    let mut h = dev_host_hooks();
    h.events[0] = event(
        "state",
        vec![attempt(
            "tracepoint sock:inet_sock_set_state",
            HookKind::Tracepoint,
            false,
        )],
        None,
    );
    let fs = capability_findings(&caps(Ok(h)));
    let c = about(&fs, "no hook for state");
    assert_eq!(c.len(), 1, "{fs:#?}");
    assert_eq!(c[0].severity, Severity::Critical);
    assert!(c[0].message.contains("refused"));

    let mut k = caps(Err("loading the eBPF object failed: boom".into()));
    k.privileged = true;
    let fs = capability_findings(&k);
    assert_eq!(fs[0].severity, Severity::Critical, "{fs:#?}");

    let mut k = caps(Ok(fexit_hooks()));
    linux(&mut k).ring_buffer = Ok(false);
    linux(&mut k).lockdown.mode = Some("confidentiality".into());
    let fs = capability_findings(&k);
    assert_eq!(
        fs.iter()
            .filter(|f| f.severity == Severity::Critical)
            .count(),
        2,
        "{fs:#?}"
    );
}

#[test]
fn unprivileged_says_what_is_missing_and_how_to_get_it() {
    let mut k = caps(Err("portwatch needs root".into()));
    linux(&mut k).tracefs = Tracefs::NotMounted {
        reason: "mounting it needs root".into(),
    };
    linux(&mut k).ring_buffer = Err("checking needs root".into());
    let fs = capability_findings(&k);
    let w = about(&fs, "hooks not probed");
    assert_eq!(w.len(), 1, "{fs:#?}");
    assert_eq!(w[0].fix.as_deref(), Some("sudo portwatch doctor"));
    assert!(
        fs.iter().all(|f| f.severity != Severity::Critical),
        "{fs:#?}"
    );

    let mut p = ports(32768, 60999, "");
    p.owners_complete = false;
    p.listeners = vec![Listener {
        owners: vec![],
        ..listener(Protocol::Tcp, 80)
    }];
    assert_eq!(about(&port_findings(&p), "show no owner").len(), 1);
}

#[test]
fn lockdown_unknown_is_reported_with_a_way_to_check() {
    let mut k = caps(Ok(fexit_hooks()));
    linux(&mut k).lockdown = Lockdown::default();
    let fs = capability_findings(&k);
    let l = about(&fs, "lockdown mode unknown");
    assert_eq!(l.len(), 1);
    assert!(l[0].fix.as_deref().unwrap().contains("securityfs"));
}

#[test]
fn analysis_puts_the_worst_first() {
    let mut k = caps(Ok(dev_host_hooks()));
    linux(&mut k).ring_buffer = Ok(false);
    let mut p = ports(40000, 40100, "");
    p.listeners = vec![listener(Protocol::Tcp, 40050)];
    let fs = analyze(&Facts { caps: k, ports: p });
    let sev: Vec<Severity> = fs.iter().map(|f| f.severity).collect();
    let mut sorted = sev.clone();
    sorted.sort_by_key(|s| std::cmp::Reverse(*s));
    assert_eq!(sev, sorted);
    assert_eq!(sev[0], Severity::Critical);
    assert_eq!(*sev.last().unwrap(), Severity::Info);
}

fn snapshot() -> Facts {
    let mut p = ports(40000, 40100, "40010");
    p.listeners = vec![listener(Protocol::Tcp, 40050)];
    tw(&mut p, IpAddr::V4(Ipv4Addr::LOCALHOST), 3);
    Facts {
        caps: caps(Ok(dev_host_hooks())),
        ports: p,
    }
}

#[test]
fn json_has_the_documented_shape() {
    let s = snapshot();
    let fs = analyze(&s);
    let v = to_json(&s, &fs);
    let c = &v["capabilities"];
    assert_eq!(c["events"]["bind"]["mechanism"], "syscall_tracepoints");
    assert_eq!(c["events"]["state"]["mechanism"], "tracepoint");
    assert_eq!(c["events"]["bind"]["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(c["mechanisms"]["kprobe"]["loads"], false);
    assert_eq!(
        c["mechanisms"]["kprobe"]["reason"],
        "kprobe tcp_time_wait refused"
    );
    assert_eq!(c["mechanisms"]["syscall_tracepoints"]["loads"], true);
    assert_eq!(c["mechanisms"]["cgroup_sock_addr"]["loads"], true);
    assert_eq!(c["probed"], true);
    assert_eq!(c["tracefs"]["state"], "mounted");
    assert!(c["trace_would_attach"]
        .as_str()
        .unwrap()
        .starts_with("state=tracepoint sock:inet_sock_set_state, timewait=state tracepoint + sock_diag confirmation, bind="));
    let p = &v["port_config"];
    assert_eq!(p["ephemeral_range"]["low"], 40000);
    assert_eq!(p["ephemeral_range_size"], 101);
    assert_eq!(p["capacity_per_destination"], 100);
    assert_eq!(p["reserved_ports"], "40010");
    assert_eq!(p["listeners"][0]["port"], 40050);
    assert_eq!(p["time_wait"][0]["count"], 3);
    let f = v["findings"].as_array().unwrap();
    assert_eq!(f.len(), fs.len());
    for x in f {
        assert!(["info", "warning", "critical"].contains(&x["severity"].as_str().unwrap()));
        assert!(x["message"].is_string());
        assert!(x["fix"].is_string() || x["fix"].is_null());
    }

    let mut un = snapshot();
    un.caps = caps(Err("needs root".into()));
    let v = to_json(&un, &analyze(&un));
    assert_eq!(v["capabilities"]["probed"], false);
    assert_eq!(v["capabilities"]["not_probed_reason"], "needs root");
    assert!(v["capabilities"]["events"].is_null());
}

#[test]
fn text_report_has_the_tables_and_colours_only_on_request() {
    let s = snapshot();
    let fs = analyze(&s);
    let mut plain = Vec::new();
    write_text(&mut plain, &s, &fs, false, None).unwrap();
    let plain = String::from_utf8(plain).unwrap();
    assert!(!plain.contains('\x1b'));
    for needle in [
        "What `portwatch trace` would attach",
        "  bind       tracepoint syscalls:x",
        "  kprobe               no     kprobe tcp_time_wait refused",
        "  syscall tracepoints  yes\n",
        "ephemeral range      40000-40100 (101 ports, 100 usable per destination)",
        "reserved ports       40010 (1 port)",
        "listening            40050/tcp",
        "TIME_WAIT            3; busiest 127.0.0.1:8080 with 3",
        "WARNING  port 40050",
        "fix: portwatch reserve 40050",
    ] {
        assert!(plain.contains(needle), "missing {needle:?} in:\n{plain}");
    }
    let mut coloured = Vec::new();
    write_text(&mut coloured, &s, &fs, true, None).unwrap();
    let coloured = String::from_utf8(coloured).unwrap();
    assert!(coloured.contains(
        &severity_style(Severity::Warning)
            .paint("WARNING ")
            .to_string()
    ));
}

#[cfg(target_os = "linux")]
#[test]
fn reads_kernel_config_and_lockdown() {
    use super::linux::{lockdown_from_config, parse_lockdown, selected_options};
    use procfs::FromRead as _;
    let text = "# comment\nCONFIG_BPF_SYSCALL=y\n# CONFIG_KPROBES is not set\nCONFIG_CGROUP_BPF=m\nCONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY=y\nCONFIG_OTHER=y\n";
    let parsed = procfs::KernelConfig::from_read(text.as_bytes()).expect("config");
    let cfg = selected_options(&parsed.0);
    assert_eq!(cfg.get("CONFIG_BPF_SYSCALL").map(String::as_str), Some("y"));
    assert_eq!(cfg.get("CONFIG_CGROUP_BPF").map(String::as_str), Some("m"));
    assert_eq!(cfg.get("CONFIG_KPROBES").map(String::as_str), Some("n"));
    assert_eq!(
        cfg.get("CONFIG_DEBUG_INFO_BTF").map(String::as_str),
        Some("n"),
        "not in the config: not set"
    );
    assert!(!cfg.contains_key("CONFIG_OTHER"));
    assert_eq!(lockdown_from_config(&cfg).as_deref(), Some("integrity"));
    assert_eq!(lockdown_from_config(&BTreeMap::new()), None);
    assert_eq!(
        parse_lockdown("none [integrity] confidentiality\n").as_deref(),
        Some("integrity")
    );
    assert_eq!(
        parse_lockdown("[none] integrity confidentiality").as_deref(),
        Some("none")
    );
    assert_eq!(parse_lockdown(""), None);
}

/// Facts `portwatch doctor --facts` recorded on the CI host (kernel 6.18:
/// no kprobes, fexit refused), in a network namespace with the range
/// 40000-40100, 40010 reserved, TCP listeners on 40050 and 40060 and a
/// UDP socket on 40070; as root and as nobody.
fn recorded(name: &str) -> Facts {
    let text = match name {
        "root" => include_str!("../../../tests/fixtures/doctor/ci-host-root.json"),
        "nobody" => include_str!("../../../tests/fixtures/doctor/ci-host-nobody.json"),
        _ => panic!("no recording {name}"),
    };
    serde_json::from_str(text).expect("recorded facts parse")
}

#[test]
fn recorded_facts_round_trip() {
    for name in ["root", "nobody"] {
        let facts = recorded(name);
        let again: Facts =
            serde_json::from_str(&serde_json::to_string(&facts).expect("ser")).expect("de");
        assert_eq!(again, facts, "{name}");
    }
}

#[test]
fn findings_on_the_recorded_ci_host_as_root() {
    let fs = analyze(&recorded("root"));
    assert!(
        fs.iter().all(|f| f.severity != Severity::Critical),
        "{fs:#?}"
    );
    let tax = about(&fs, "would be traced with syscall tracepoints");
    assert_eq!(tax.len(), 1, "{fs:#?}");
    assert!(tax[0].message.starts_with("bind and connect"));
    assert_eq!(about(&fs, "tcp_time_wait cannot be hooked").len(), 1);
    assert_eq!(about(&fs, "has only 101 ports").len(), 1, "{fs:#?}");
    assert!(about(&fs, "lockdown mode unknown").is_empty(), "{fs:#?}");
    assert_eq!(about(&fs, "UDP port 40070").len(), 1, "{fs:#?}");
    assert!(
        about(&fs, "port 40050")
            .iter()
            .all(|f| f.message.contains("python3 (pid ")),
        "{fs:#?}"
    );
    assert!(about(&fs, "show no owner").is_empty());
}

#[test]
fn findings_on_the_recorded_ci_host_as_nobody() {
    let fs = analyze(&recorded("nobody"));
    assert!(
        fs.iter().all(|f| f.severity != Severity::Critical),
        "{fs:#?}"
    );
    let w = about(&fs, "hooks not probed");
    assert_eq!(w.len(), 1, "{fs:#?}");
    assert_eq!(w[0].fix.as_deref(), Some("sudo portwatch doctor"));
    assert_eq!(about(&fs, "some sockets show no owner").len(), 1, "{fs:#?}");
    assert!(about(&fs, "owner unknown").len() >= 2, "{fs:#?}");
}

#[test]
fn text_fits_a_terminal_and_keeps_full_lines_when_piped() {
    let facts = recorded("root");
    let fs = analyze(&facts);
    let mut piped = Vec::new();
    write_text(&mut piped, &facts, &fs, false, None).unwrap();
    let piped = String::from_utf8(piped).unwrap();
    assert!(
        piped.lines().any(|l| l.chars().count() > 200),
        "findings whole when piped:\n{piped}"
    );
    for width in [80, 100] {
        let mut out = Vec::new();
        write_text(&mut out, &facts, &fs, true, Some(width)).unwrap();
        let out = String::from_utf8(out).unwrap();
        let plain = |l: &str| {
            // The width on screen: without the colours' escape sequences.
            let mut n = 0;
            let mut esc = false;
            for c in l.chars() {
                match (esc, c) {
                    (false, '\x1b') => esc = true,
                    (true, 'm') => esc = false,
                    (true, _) => {}
                    (false, _) => n += 1,
                }
            }
            n
        };
        for l in out.lines() {
            assert!(plain(l) <= width, "{width}: {l:?}");
        }
        // A wrapped finding continues under its message, its fix under "fix:".
        assert!(out.contains("\n           "), "{out}");
        assert!(
            out.contains("fix: portwatch reserve 40050 40060 --persist"),
            "{out}"
        );
    }
}
