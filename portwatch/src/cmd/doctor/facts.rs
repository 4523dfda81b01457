//! What doctor knows about a machine: plain data, no behaviour beyond a few
//! derived figures. A collector per platform fills it ([`super::linux`] on
//! Linux; a Windows collector fills the same struct, leaving
//! [`KernelCaps::linux`] empty), and it serialises both ways, so findings
//! can be tested from facts recorded on real machines
//! (`portwatch doctor --facts`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::Protocol;
use crate::source::HookTable;
use crate::sysctl::PortSet;

/// Everything doctor's findings are judged from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub caps: KernelCaps,
    pub ports: PortConfig,
}

/// What the kernel lets portwatch do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCaps {
    /// `uname -r` (or the Windows build).
    pub kernel: String,
    /// Whether this process may load portwatch's probes (on Linux root, or
    /// CAP_BPF + CAP_PERFMON).
    pub privileged: bool,
    /// The probed hook table, or why it could not be probed.
    pub hooks: Result<HookTable, String>,
    /// What only a Linux kernel has; None on other platforms.
    pub linux: Option<LinuxKernel>,
}

/// The Linux kernel features portwatch's eBPF programs depend on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxKernel {
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    pub tracefs: Tracefs,
    /// Whether BPF ring buffer maps can be created; Err if not checked or failed.
    pub ring_buffer: Result<bool, String>,
    pub lockdown: Lockdown,
    /// `/sys/bus/event_source/devices/kprobe` exists.
    pub kprobe_pmu: bool,
    /// Selected kernel config options (`y`, `m`, `n` or a value), when the
    /// config is readable.
    pub config: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Tracefs {
    /// Mounted before doctor ran.
    #[default]
    Mounted,
    /// Doctor mounted it (as `trace` does).
    MountedByPortwatch,
    NotMounted {
        reason: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockdown {
    /// `none`, `integrity` or `confidentiality`; None if unknown.
    pub mode: Option<String>,
    /// Where the mode was read from.
    pub source: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EphemeralRange {
    pub low: u16,
    pub high: u16,
}

impl EphemeralRange {
    pub fn size(&self) -> u32 {
        u32::from(self.high.saturating_sub(self.low)) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

/// A listening TCP socket or a bound, unconnected UDP socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub protocol: Protocol,
    pub addr: IpAddr,
    pub port: u16,
    pub owners: Vec<Owner>,
}

/// TIME_WAIT sockets towards one destination whose local port is ephemeral.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWaitDest {
    pub daddr: IpAddr,
    pub dport: u16,
    pub count: u32,
}

/// The port configuration of one network namespace (on Windows: of the
/// machine, with the excluded port ranges as the reserved ports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    pub ephemeral_range: Option<EphemeralRange>,
    pub reserved_ports: Option<PortSet>,
    pub listeners: Vec<Listener>,
    /// Busiest first.
    pub time_wait: Vec<TimeWaitDest>,
    /// Every TIME_WAIT socket, ephemeral local port or not.
    pub time_wait_total: u64,
    pub tcp_tw_reuse: Option<u8>,
    pub tcp_tw_reuse_delay_ms: Option<u64>,
    pub tcp_max_tw_buckets: Option<u64>,
    pub tcp_fin_timeout: Option<u64>,
    /// Why sockets could not be listed (sock_diag), if they could not.
    pub sockets_error: Option<String>,
    /// False when other users' processes could not be searched for owners.
    pub owners_complete: bool,
    /// Sysctls that could not be read or parsed.
    pub read_errors: Vec<String>,
}

impl PortConfig {
    /// Ephemeral ports a client can use towards one destination (per local address).
    pub fn capacity(&self) -> Option<u32> {
        let r = self.ephemeral_range?;
        let reserved = self
            .reserved_ports
            .as_ref()
            .map_or(0, |s| s.count_within(r.low, r.high));
        Some(r.size().saturating_sub(reserved))
    }
}
