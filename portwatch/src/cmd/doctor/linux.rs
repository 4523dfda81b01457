//! Doctor's facts on Linux: the hooks this kernel accepts (probed by
//! loading portwatch's own programs, root only), the kernel features they
//! need, and the port configuration of this network namespace.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use procfs::ConfigSetting;

use super::facts::{
    EphemeralRange, Facts, KernelCaps, LinuxKernel, Listener, Lockdown, Owner, PortConfig,
    TimeWaitDest, Tracefs,
};
use crate::model::Protocol;
use crate::sysctl::{self, PortSet};

/// Kernel config options worth reporting, when the config is readable.
const CONFIG_KEYS: &[&str] = &[
    "CONFIG_BPF_SYSCALL",
    "CONFIG_BPF_EVENTS",
    "CONFIG_KPROBES",
    "CONFIG_FTRACE_SYSCALLS",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
    "CONFIG_CGROUP_BPF",
    "CONFIG_SECURITY_LOCKDOWN_LSM",
    "CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY",
    "CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY",
];

/// The options doctor reports from a kernel config (as procfs reads it from
/// /proc/config.gz or /boot/config-RELEASE): `y`, `m` or the value, and `n`
/// for an option the config does not set (`# ... is not set`, or left out
/// because what it depends on is off).
pub fn selected_options(config: &HashMap<String, ConfigSetting>) -> BTreeMap<String, String> {
    CONFIG_KEYS
        .iter()
        .map(|k| {
            let v = match config.get(*k) {
                Some(ConfigSetting::Yes) => "y".to_owned(),
                Some(ConfigSetting::Module) => "m".to_owned(),
                Some(ConfigSetting::Value(v)) => v.trim_matches('"').to_owned(),
                None => "n".to_owned(),
            };
            ((*k).to_owned(), v)
        })
        .collect()
}

/// `none [integrity] confidentiality` -> `integrity`.
pub fn parse_lockdown(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map(str::to_owned)
}

/// Lockdown from the kernel config, when it forces a mode (a floor: the
/// kernel command line may raise it).
pub fn lockdown_from_config(cfg: &BTreeMap<String, String>) -> Option<String> {
    let on = |k: &str| cfg.get(k).is_some_and(|v| v == "y");
    if on("CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY") {
        Some("confidentiality".into())
    } else if on("CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY") {
        Some("integrity".into())
    } else {
        None
    }
}

/// The running kernel's config (/proc/config.gz, decompressed by procfs
/// with flate2, or /boot/config-RELEASE); empty when neither is readable.
fn kernel_config() -> BTreeMap<String, String> {
    match procfs::kernel_config() {
        Ok(config) => selected_options(&config),
        Err(e) => {
            log::debug!("kernel config not readable: {e}");
            BTreeMap::new()
        }
    }
}

/// tracefs at /sys/kernel/tracing per this process's mount table: readable
/// without root, unlike the mount point itself.
fn tracefs_in_mounts() -> bool {
    procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .is_ok_and(|mounts| {
            mounts.into_iter().any(|m| {
                m.fs_type == "tracefs" && m.mount_point == Path::new(crate::source::linux::TRACEFS)
            })
        })
}

fn collect_caps() -> KernelCaps {
    use crate::source::linux::probe;

    let kernel = sysctl::read("kernel.osrelease")
        .ok()
        .flatten()
        .unwrap_or_else(|| "unknown".into());
    let privileged = probe::capabilities().can_load_bpf();
    let tracefs = if probe::tracefs_mounted() || tracefs_in_mounts() {
        Tracefs::Mounted
    } else if !privileged {
        Tracefs::NotMounted {
            reason: "mounting it needs root".into(),
        }
    } else {
        match probe::ensure_tracefs() {
            Ok(()) => Tracefs::MountedByPortwatch,
            Err(e) => Tracefs::NotMounted {
                reason: e.to_string(),
            },
        }
    };
    let hooks = if privileged {
        probe::probe_hooks().map_err(|e| format!("{e:#}"))
    } else {
        Err(crate::source::linux::CollectorError::NotPrivileged.to_string())
    };
    let ring_buffer = if privileged {
        probe::ring_buffer_supported()
    } else {
        Err("checking needs root".into())
    };
    let config = kernel_config();
    let lockdown = match std::fs::read_to_string("/sys/kernel/security/lockdown")
        .ok()
        .and_then(|t| parse_lockdown(&t))
    {
        Some(mode) => Lockdown {
            mode: Some(mode),
            source: Some("/sys/kernel/security/lockdown".into()),
        },
        None => match lockdown_from_config(&config) {
            Some(mode) => Lockdown {
                mode: Some(mode),
                source: Some("forced by the kernel config; the command line may raise it".into()),
            },
            None => Lockdown::default(),
        },
    };
    KernelCaps {
        kernel,
        privileged,
        hooks,
        linux: Some(LinuxKernel {
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            tracefs,
            ring_buffer,
            lockdown,
            kprobe_pmu: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
            config,
        }),
    }
}

/// The port configuration of this network namespace, as doctor checks it
/// (also what `portwatch explain` looks at).
pub fn collect_ports() -> PortConfig {
    use crate::sockdiag::{Proto, SockDiag};

    const TCP_TIME_WAIT: u8 = 6;
    const TCP_CLOSE: u8 = 7;
    const TCP_LISTEN: u8 = 10;

    let mut p = PortConfig {
        owners_complete: unsafe { libc::geteuid() } == 0,
        ..Default::default()
    };
    match sysctl::read(sysctl::PORT_RANGE) {
        Ok(Some(s)) => match sysctl::parse_port_range(&s) {
            Some((low, high)) => p.ephemeral_range = Some(EphemeralRange { low, high }),
            None => p
                .read_errors
                .push(format!("{}: unexpected value `{s}`", sysctl::PORT_RANGE)),
        },
        Ok(None) => p
            .read_errors
            .push(format!("{}: absent", sysctl::PORT_RANGE)),
        Err(e) => p.read_errors.push(format!("{}: {e}", sysctl::PORT_RANGE)),
    }
    match sysctl::read(sysctl::RESERVED_PORTS) {
        Ok(Some(s)) => match PortSet::parse(&s) {
            Ok(set) => p.reserved_ports = Some(set),
            Err(e) => p
                .read_errors
                .push(format!("{}: {e}", sysctl::RESERVED_PORTS)),
        },
        Ok(None) => p
            .read_errors
            .push(format!("{}: absent", sysctl::RESERVED_PORTS)),
        Err(e) => p
            .read_errors
            .push(format!("{}: {e}", sysctl::RESERVED_PORTS)),
    }
    p.tcp_tw_reuse = sysctl::read_number(sysctl::TW_REUSE);
    p.tcp_tw_reuse_delay_ms = sysctl::read_number(sysctl::TW_REUSE_DELAY);
    p.tcp_max_tw_buckets = sysctl::read_number(sysctl::MAX_TW_BUCKETS);
    p.tcp_fin_timeout = sysctl::read_number(sysctl::FIN_TIMEOUT);

    let sockets = SockDiag::new().and_then(|mut d| {
        let tcp = d.tcp_sockets((1 << TCP_LISTEN) | (1 << TCP_TIME_WAIT))?;
        let udp = d.udp_sockets()?;
        Ok((tcp, udp))
    });
    let (tcp, udp) = match sockets {
        Ok(s) => s,
        Err(e) => {
            p.sockets_error = Some(e.to_string());
            return p;
        }
    };

    let mut tw: HashMap<(IpAddr, u16), u32> = HashMap::new();
    let mut bound = Vec::new();
    for e in tcp {
        if e.state == TCP_TIME_WAIT {
            p.time_wait_total += 1;
            if p.ephemeral_range.is_some_and(|r| r.contains(e.sport)) {
                *tw.entry((e.daddr, e.dport)).or_default() += 1;
            }
        } else if e.state == TCP_LISTEN {
            bound.push(e);
        }
    }
    bound.extend(
        udp.into_iter()
            .filter(|e| e.proto == Proto::Udp && e.state == TCP_CLOSE && e.sport != 0),
    );
    let inodes: Vec<u64> = bound.iter().map(|e| e.inode).collect();
    let owners = crate::procfd::owners_of(&inodes);
    p.listeners = bound
        .into_iter()
        .map(|e| Listener {
            protocol: match e.proto {
                Proto::Tcp => Protocol::Tcp,
                Proto::Udp => Protocol::Udp,
            },
            addr: e.saddr,
            port: e.sport,
            owners: owners
                .get(&e.inode)
                .map(|v| {
                    v.iter()
                        .map(|o| Owner {
                            pid: o.pid,
                            comm: o.comm.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    p.listeners.sort_by(|a, b| {
        (a.port, a.protocol.name(), a.addr).cmp(&(b.port, b.protocol.name(), b.addr))
    });
    let mut tw: Vec<TimeWaitDest> = tw
        .into_iter()
        .map(|((daddr, dport), count)| TimeWaitDest {
            daddr,
            dport,
            count,
        })
        .collect();
    tw.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then((a.daddr, a.dport).cmp(&(b.daddr, b.dport)))
    });
    p.time_wait = tw;
    p
}

/// Every fact doctor judges, from this machine.
pub fn collect() -> Facts {
    Facts {
        caps: collect_caps(),
        ports: collect_ports(),
    }
}
