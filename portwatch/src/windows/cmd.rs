//! The subcommands on Windows (`trace` is shared: src/cmd/trace.rs hands
//! its live part to the ETW collector).

use std::io::{self, Write};

use anyhow::{bail, Context as _};

use super::doctor::{self, Snapshot, TCPIP_PARAMETERS};
use super::{autologger, history, netsh, reserve, sys, who};
use crate::cli::{Command, DoctorArgs, HistoryArgs, InstallServiceArgs, ReserveArgs, WhoArgs};

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Who(a) => run_who(a),
        Command::Doctor(a) => run_doctor(a),
        Command::Reserve(a) => run_reserve(a),
        Command::InstallService(a) => run_install_service(a),
        Command::History(a) => run_history(a),
        Command::Record(_) => bail!(
            "on Windows, Event Tracing for Windows records boot for portwatch: run `portwatch install-service` (an ETW AutoLogger), reboot, then `portwatch history`; `portwatch trace` traces live"
        ),
        Command::Trace(_)
        | Command::Explain(_)
        | Command::Completions(_)
        | Command::Manpages(_) => {
            bail!("trace, explain, completions and manpages are dispatched by the shared commands")
        }
    }
}

fn run_who(args: WhoArgs) -> anyhow::Result<()> {
    let (rows, errors) = sys::socket_rows();
    if rows.is_empty() && !errors.is_empty() {
        bail!("cannot read the socket tables: {}", errors.join("; "));
    }
    let (names, names_error) = match sys::process_names() {
        Ok(n) => (n, None),
        Err(e) => (Default::default(), Some(e)),
    };
    let owners = who::Owners {
        names,
        services: sys::service_pids().unwrap_or_default(),
        names_error,
    };
    let Some(port) = args.port else {
        bail!("on Windows, who needs a PORT: its filters without one (--remote, --state, --to) are Linux-only so far");
    };
    let mut report = who::report(port, rows, &owners);
    if !errors.is_empty() {
        let more = format!("some tables could not be read: {}", errors.join("; "));
        report.missing = Some(match report.missing.take() {
            Some(m) => format!("{m}; {more}"),
            None => more,
        });
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        who::write_text(&mut out, &report)?;
    }
    out.flush()?;
    Ok(())
}

fn dynamic_and_excluded() -> (
    Result<netsh::DynamicRange, String>,
    Result<Vec<netsh::Exclusion>, String>,
) {
    let dynamic = sys::netsh("int ipv4 show dynamicport tcp")
        .and_then(|t| netsh::parse_dynamic_port(&t).map_err(|e| e.to_string()));
    let excluded = sys::netsh("int ipv4 show excludedportrange protocol=tcp")
        .and_then(|t| netsh::parse_excluded(&t).map_err(|e| e.to_string()));
    (dynamic, excluded)
}

fn run_doctor(args: DoctorArgs) -> anyhow::Result<()> {
    let (dynamic, excluded) = dynamic_and_excluded();
    let (rows, errors) = sys::socket_rows();
    let names = sys::process_names().unwrap_or_default();
    let services = sys::service_pids().unwrap_or_default();
    let (listeners, time_wait, time_wait_total) =
        doctor::from_rows(&rows, dynamic.as_ref().ok(), &names, &services);
    let snapshot = Snapshot {
        os: sys::os_name(),
        elevated: sys::is_elevated(),
        dynamic,
        excluded,
        max_user_port: sys::reg_dword(TCPIP_PARAMETERS, "MaxUserPort"),
        tcp_timed_wait_delay: sys::reg_dword(TCPIP_PARAMETERS, "TcpTimedWaitDelay"),
        listeners,
        time_wait,
        time_wait_total,
        sockets_error: (!errors.is_empty()).then(|| errors.join("; ")),
    };
    let findings = doctor::analyze(&snapshot);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", doctor::to_json(&snapshot, &findings))?;
    } else {
        doctor::write_text(&mut out, &snapshot, &findings)?;
    }
    out.flush()?;
    Ok(())
}

fn run_reserve(args: ReserveArgs) -> anyhow::Result<()> {
    let wanted = args
        .ports
        .iter()
        .fold(crate::sysctl::PortSet::new(), |acc, p| acc.union(p));
    let (dynamic, excluded) = dynamic_and_excluded();
    // netsh refuses overlapping exclusions itself, so an unreadable list
    // only means the plan may propose one that exists already.
    let excluded = excluded.unwrap_or_else(|e| {
        eprintln!("portwatch: could not read the excluded port ranges ({e}); the plan assumes there are none");
        Vec::new()
    });
    let plan = reserve::plan(&wanted, &excluded, dynamic.as_ref().ok());
    let stdout = io::stdout();
    let mut out = stdout.lock();
    reserve::write_plan(&mut out, &plan, args.dry_run)?;
    out.flush()?;
    if args.dry_run || plan.add.is_empty() {
        return Ok(());
    }
    if !sys::is_elevated() {
        bail!("adding excluded port ranges needs an administrator: run this from an elevated prompt, or run the commands above there");
    }
    for span in &plan.add {
        sys::run_tool("netsh", &netsh::add_exclusion_args(span)).map_err(anyhow::Error::msg)?;
    }
    writeln!(
        out,
        "done; `netsh int ipv4 show excludedportrange protocol=tcp` lists them"
    )?;
    Ok(())
}

fn run_install_service(args: InstallServiceArgs) -> anyhow::Result<()> {
    let etl = history::etl_path(&args.journal);
    let writes = autologger::plan(&etl.to_string_lossy(), 64);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.dry_run {
        writeln!(
            out,
            "dry run: nothing is changed; these commands configure the ETW AutoLogger `{}`:",
            autologger::SESSION
        )?;
        for w in &writes {
            writeln!(out, "  {}", w.command())?;
        }
        writeln!(
            out,
            "it starts at the next boot and writes {}; remove it with: {}",
            etl.display(),
            autologger::uninstall_command()
        )?;
        return Ok(());
    }
    if !sys::is_elevated() {
        bail!("configuring an AutoLogger needs an administrator: run this from an elevated prompt (or --dry-run to see the commands)");
    }
    std::fs::create_dir_all(&args.journal)
        .with_context(|| format!("cannot create {}", args.journal.display()))?;
    for w in &writes {
        sys::run_tool("reg", &w.reg_args()).map_err(anyhow::Error::msg)?;
    }
    writeln!(
        out,
        "installed the ETW AutoLogger `{}`: it starts at the next boot and writes {}",
        autologger::SESSION,
        etl.display()
    )?;
    writeln!(
        out,
        "after a reboot: portwatch history --port PORT --boot 0 --first"
    )?;
    Ok(())
}

fn run_history(args: HistoryArgs) -> anyhow::Result<()> {
    let etl = history::etl_path(&args.journal);
    if !etl.is_file() {
        bail!(
            "no boot trace at {}: run `portwatch install-service` (elevated) and reboot; the AutoLogger writes it",
            etl.display()
        );
    }
    let (events, boot) = crate::source::windows::live::read_etl(&etl)?;
    let outcome = crate::journal::ReadOutcome {
        records: history::records(events, boot),
        damage: Vec::new(),
    };
    crate::cmd::history::answer(&args, outcome)
}
