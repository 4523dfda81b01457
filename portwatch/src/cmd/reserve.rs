//! `portwatch reserve`: adds ports to `net.ipv4.ip_local_reserved_ports`,
//! merged with what is reserved already, and optionally persists the merged
//! value in a sysctl.d file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::cli::ReserveArgs;
use crate::sysctl::{self, PortSet};

pub const PERSIST_FILE: &str = "/etc/sysctl.d/90-portwatch-reserved-ports.conf";

/// Directories `systemd-sysctl` and `sysctl --system` read, besides
/// /etc/sysctl.conf (which `sysctl --system` applies last).
const SYSCTL_DIRS: &[&str] = &[
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
];

/// The value a sysctl.d-style text assigns to `name` (the last assignment
/// wins, as when the file is applied). Accepts `a.b.c` and `a/b/c` keys and
/// the `-` prefix systemd uses for "ignore errors".
pub fn conf_value(text: &str, name: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix('-').unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            if k.trim().replace('/', ".") == name {
                found = Some(v.trim().to_owned());
            }
        }
    }
    found
}

/// The content of the persisted file for `value`.
pub fn conf_file(value: &PortSet) -> String {
    format!(
        "# Written by `portwatch reserve`: ports the kernel must not hand out as\n\
         # ephemeral (client) ports. Applied at boot to the initial network namespace.\n\
         # portwatch merges new ports into this value; edit it freely.\n\
         {} = {value}\n",
        sysctl::RESERVED_PORTS
    )
}

/// The new live value and, for --persist, the file's new value: the file
/// keeps what it had and gains what is live now and what was asked for.
pub fn merged(current: &PortSet, wanted: &PortSet, file: Option<&PortSet>) -> (PortSet, PortSet) {
    let live = current.union(wanted);
    let persisted = match file {
        Some(f) => f.union(&live),
        None => live.clone(),
    };
    (live, persisted)
}

/// Files applied after ours that also set the reserved ports: their value
/// wins at boot.
fn later_overrides(ours: &Path) -> Vec<PathBuf> {
    let Some(our_name) = ours.file_name() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dir in SYSCTL_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.as_os_str() <= our_name || !name.to_string_lossy().ends_with(".conf") {
                continue;
            }
            let path = e.path();
            if std::fs::read_to_string(&path)
                .is_ok_and(|t| conf_value(&t, sysctl::RESERVED_PORTS).is_some())
            {
                out.push(path);
            }
        }
    }
    let conf = Path::new("/etc/sysctl.conf");
    if std::fs::read_to_string(conf).is_ok_and(|t| conf_value(&t, sysctl::RESERVED_PORTS).is_some())
    {
        out.push(conf.to_path_buf());
    }
    out.sort();
    out.dedup();
    out
}

/// Whether this process shares PID 1's network namespace (None if unknown).
fn in_initial_netns() -> Option<bool> {
    let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
    let init = std::fs::read_link("/proc/1/ns/net").ok()?;
    Some(ours == init)
}

fn write_atomically(path: &Path, content: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn needs_root(args: &ReserveArgs) -> String {
    let ports: Vec<String> = args.ports.iter().map(|p| p.to_string()).collect();
    format!(
        "changing {} needs root: run `sudo portwatch reserve {}{}` (add --dry-run to only see the change)",
        sysctl::RESERVED_PORTS,
        ports.join(" "),
        if args.persist { " --persist" } else { "" }
    )
}

pub fn run(args: ReserveArgs) -> anyhow::Result<()> {
    // The report is written once the change is made: a closed stdout
    // (`portwatch reserve 1433 | head -1`) must not stop it half-way.
    let mut report = Vec::new();
    let result = change(&args, &mut report);
    let mut stdout = io::stdout().lock();
    stdout.write_all(&report)?;
    stdout.flush()?;
    result
}

fn change(args: &ReserveArgs, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let wanted = args
        .ports
        .iter()
        .fold(PortSet::new(), |acc, p| acc.union(p));
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !args.dry_run && !root {
        bail!(needs_root(args));
    }

    let raw = sysctl::read(sysctl::RESERVED_PORTS)
        .with_context(|| format!("reading {}", sysctl::RESERVED_PORTS))?
        .with_context(|| format!("this kernel has no {}", sysctl::RESERVED_PORTS))?;
    let current = PortSet::parse(&raw)
        .with_context(|| format!("unexpected value of {}: `{raw}`", sysctl::RESERVED_PORTS))?;

    let path = args
        .persist_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(PERSIST_FILE));
    let file_value = if args.persist {
        match std::fs::read_to_string(&path) {
            Ok(text) => match conf_value(&text, sysctl::RESERVED_PORTS) {
                Some(v) => Some(PortSet::parse(&v).with_context(|| {
                    format!(
                        "{} sets {} to `{v}`, which is not a port list: fix or remove it first",
                        path.display(),
                        sysctl::RESERVED_PORTS
                    )
                })?),
                None => None,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    } else {
        None
    };
    let (after, persisted) = merged(&current, &wanted, file_value.as_ref());

    let show = |s: &PortSet| {
        if s.is_empty() {
            "(none)".to_owned()
        } else {
            s.to_string()
        }
    };
    if args.dry_run {
        writeln!(out, "dry run: nothing is changed")?;
    }
    writeln!(out, "{}", sysctl::RESERVED_PORTS)?;
    writeln!(out, "  before: {}", show(&current))?;
    writeln!(
        out,
        "  after:  {}{}",
        show(&after),
        if after == current {
            "  (unchanged: already reserved)"
        } else {
            ""
        }
    )?;
    if let Some((low, high)) = sysctl::read(sysctl::PORT_RANGE)
        .ok()
        .flatten()
        .and_then(|r| sysctl::parse_port_range(&r))
    {
        let outside: Vec<String> = wanted
            .spans()
            .iter()
            .filter(|s| s.high < low || s.low > high)
            .map(|s| s.to_string())
            .collect();
        if !outside.is_empty() {
            writeln!(
                out,
                "note: {} lies outside the ephemeral range {low}-{high}, so the kernel would not hand it out anyway; reserved all the same, in case the range is widened",
                outside.join(", ")
            )?;
        }
    }

    if !args.dry_run && after != current {
        if let Err(e) = sysctl::write(sysctl::RESERVED_PORTS, &after.to_string()) {
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) {
                bail!("{}: {e}", needs_root(args));
            }
            return Err(e).with_context(|| format!("writing {}", sysctl::RESERVED_PORTS));
        }
        let back = sysctl::read(sysctl::RESERVED_PORTS)?.unwrap_or_default();
        if back != after.to_string() {
            bail!(
                "wrote `{after}` to {} but it reads back as `{back}`",
                sysctl::RESERVED_PORTS
            );
        }
    }

    if args.persist {
        let content = conf_file(&persisted);
        writeln!(
            out,
            "{} {}:",
            if args.dry_run {
                "would write"
            } else {
                "writing"
            },
            path.display()
        )?;
        for line in content.lines() {
            writeln!(out, "  {line}")?;
        }
        if !args.dry_run {
            write_atomically(&path, &content).with_context(|| {
                if root {
                    format!("writing {}", path.display())
                } else {
                    needs_root(args)
                }
            })?;
        }
        for other in later_overrides(&path) {
            writeln!(
                out,
                "warning: {} also sets {} and is applied after {}, so its value wins at boot: merge the ports there",
                other.display(),
                sysctl::RESERVED_PORTS,
                path.display()
            )?;
        }
        if in_initial_netns() == Some(false) {
            writeln!(
                out,
                "warning: this process is not in PID 1's network namespace: the live change applies to this namespace only, the file at boot to the initial one"
            )?;
        }
    }
    writeln!(
        out,
        "note: reserving keeps the kernel from handing these ports out as ephemeral ports; it does not stop a program from binding them explicitly"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> PortSet {
        PortSet::parse(s).unwrap()
    }

    #[test]
    fn reads_the_value_a_conf_file_sets() {
        let text = "# comment\n; other comment\n\nnet.ipv4.tcp_tw_reuse = 1\n\
                    net.ipv4.ip_local_reserved_ports = 1433\n\
                    -net/ipv4/ip_local_reserved_ports=1433,5432\n";
        assert_eq!(
            conf_value(text, sysctl::RESERVED_PORTS).as_deref(),
            Some("1433,5432")
        );
        assert_eq!(conf_value(text, sysctl::TW_REUSE).as_deref(), Some("1"));
        assert_eq!(
            conf_value(
                "# net.ipv4.ip_local_reserved_ports = 1\n",
                sysctl::RESERVED_PORTS
            ),
            None
        );
        assert_eq!(conf_value("", sysctl::RESERVED_PORTS), None);
    }

    #[test]
    fn the_file_it_writes_reads_back_as_the_merged_value() {
        let v = set("1433,40000-40010");
        let text = conf_file(&v);
        assert_eq!(
            conf_value(&text, sysctl::RESERVED_PORTS).as_deref(),
            Some("1433,40000-40010")
        );
        assert!(text.ends_with("net.ipv4.ip_local_reserved_ports = 1433,40000-40010\n"));
    }

    #[test]
    fn merges_live_wanted_and_file() {
        let (live, file) = merged(&set("40010,40020-40030"), &set("40031,40040-40041"), None);
        assert_eq!(live.to_string(), "40010,40020-40031,40040-40041");
        assert_eq!(file, live);
        // The file keeps ports it had that are not live (never applied yet).
        let (live, file) = merged(&set("1433"), &set("5432"), Some(&set("3306")));
        assert_eq!(live.to_string(), "1433,5432");
        assert_eq!(file.to_string(), "1433,3306,5432");
        // Asking again for a reserved port changes nothing.
        let (live, _) = merged(&set("1433"), &set("1433"), None);
        assert_eq!(live.to_string(), "1433");
    }

    #[test]
    fn writes_files_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("90-x.conf");
        write_atomically(&p, "a = 1\n").unwrap();
        write_atomically(&p, "a = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 2\n");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
    }
}
