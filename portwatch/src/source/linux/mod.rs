//! The Linux collector: loads portwatch's eBPF programs, attaches the
//! cheapest hook the running kernel accepts for each kind of event, and
//! streams decoded events into the pipeline.

pub mod counts;
pub mod decode;
pub mod offsets;
pub mod probe;

use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::ProgramFd;
use aya::{Ebpf, EbpfLoader};
use portwatch_common::{Filter, RawEvent};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::model::{LostReason, SourceMsg};
use crate::source::Mechanism;
use decode::{Clock, Decoder};

pub use probe::{capabilities, probe_hooks, AllowedHooks, Capabilities, HOOKS_ENV};

/// Where tracefs must be for tracepoints to attach.
pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    // Not `setcap` on the binary on PATH: that would let every local user
    // trace all sockets and read every command line.
    #[error("portwatch needs root, or CAP_BPF and CAP_PERFMON, to load eBPF programs: run it with sudo. To let only a trusted group trace without sudo, give that group a copy of its own: `sudo install -o root -g portwatch -m 0750 $(command -v portwatch) /usr/local/sbin/portwatch-trace && sudo setcap cap_bpf,cap_perfmon,cap_net_admin,cap_sys_admin,cap_sys_ptrace,cap_dac_read_search+ep /usr/local/sbin/portwatch-trace` (see Privileges in the README)")]
    NotPrivileged,
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed ({0}); mount it with `sudo mount -t tracefs tracefs {TRACEFS}`")]
    Tracefs(std::io::Error),
    #[error("this kernel has no sock:inet_sock_set_state tracepoint (Linux 4.16 or later has it); portwatch cannot trace TCP states here")]
    NoStateTracepoint,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object lacks {0}: the build is broken; rebuild with `cargo xtask build`")]
    Missing(&'static str),
    #[error("attaching {what} failed: {detail}")]
    Attach { what: &'static str, detail: String },
    #[error("{0}")]
    BadHooks(String),
    #[error("--netns filters in the kernel, which needs the kernel's BTF to read a socket's namespace: {0}")]
    NoNetns(String),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("ring buffer: {0}")]
    Io(#[from] std::io::Error),
}

/// What the user asked the kernel side to do.
#[derive(Clone, Debug, Default)]
pub struct CollectorConfig {
    /// Only events owned by this process (tgid).
    pub pid: Option<u32>,
    /// Only events with one of these ports at either end.
    pub ports: Vec<u16>,
    /// Only events of sockets in this network namespace (inode).
    pub netns: Option<u32>,
    /// Count events per process in the kernel and send only the rare ones
    /// (listens, closes that may be TIME_WAIT, failures): `--summary-only`.
    pub aggregate: bool,
    /// Ring-buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: Option<u32>,
    /// Test-only: how long the reader waits before it first drains the ring,
    /// to exercise overflow accounting.
    pub stall_reader: Option<Duration>,
    /// Test-only: the reader waits until this file exists before it first
    /// drains, so that processes can exit before their events are read.
    pub stall_until: Option<std::path::PathBuf>,
    /// How often the per-CPU lost counter is read.
    pub lost_poll: Duration,
    /// How often the reader drains the ring without being woken (zero: the
    /// default, [`DRAIN_EVERY`]). The kernel side wakes it only when the
    /// backlog crosses a quarter of the ring, not for every event.
    pub drain_every: Duration,
}

/// Default ring-buffer size, as the eBPF object declares it.
pub const RING_BYTES: u32 = 4 << 20;
/// Default drain interval: the most an event waits in the ring when the
/// backlog is under the wakeup threshold.
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Events per message to the pipeline.
const BATCH: usize = 512;
/// Events drained per wakeup before the reader yields to other tasks.
const DRAIN_CAP: usize = 8192;
/// Batches in flight between the reader and the pipeline. When the pipeline
/// falls behind, the reader waits, the ring fills and the kernel counts what
/// it cannot store: no loss is silent.
pub const CHANNEL_BATCHES: usize = 32;

/// What the collector sends: events in batches, so the pipeline is woken
/// once per batch rather than once per event.
pub type Batch = Vec<SourceMsg>;

/// What the kernel counted in aggregate mode, read at the stop.
#[derive(Debug, Default)]
pub struct KernelCounts {
    /// Events per process: pid -> (events, command name).
    pub procs: std::collections::HashMap<u32, (u64, String)>,
    pub totals: counts::Totals,
}

/// A running collector. Dropping it detaches every program.
pub struct LinuxCollector {
    ebpf: Option<Ebpf>,
    mechanisms: Vec<Mechanism>,
    stop: watch::Sender<bool>,
    reader: Option<JoinHandle<Result<(), CollectorError>>>,
    /// Records read from the ring buffer so far.
    ring_events: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch"));

impl LinuxCollector {
    /// Loads and attaches everything, then starts streaming into `tx`.
    pub fn start(cfg: &CollectorConfig, tx: mpsc::Sender<Batch>) -> Result<Self, CollectorError> {
        let allowed = probe::AllowedHooks::from_env()?;
        let caps = capabilities();
        if !caps.can_load_bpf() {
            return Err(CollectorError::NotPrivileged);
        }
        probe::ensure_tracefs()?;
        if !probe::tracepoint_exists("sock", "inet_sock_set_state") {
            return Err(CollectorError::NoStateTracepoint);
        }

        let offsets = offsets::kernel_isolated();
        if cfg.netns.is_some() && offsets.missing.is_some() {
            return Err(CollectorError::NoNetns(
                offsets.missing.clone().unwrap_or_default(),
            ));
        }
        let filter = Filter {
            pid: cfg.pid.unwrap_or(0),
            ports_enabled: u32::from(!cfg.ports.is_empty()),
            netns: cfg.netns.unwrap_or(0),
            mode: if cfg.aggregate {
                portwatch_common::mode::AGGREGATE
            } else {
                portwatch_common::mode::FULL
            },
        };
        let ring_bytes = cfg.ring_bytes.unwrap_or(RING_BYTES);
        let wakeup_bytes = u64::from(ring_bytes / 4);
        // The loader holds a parsed copy of the kernel's BTF (megabytes);
        // scoped so it is freed before attaching parses its own, which keeps
        // the peak RSS to one copy.
        let mut ebpf = {
            let mut loader = EbpfLoader::new();
            // The programs carry no CO-RE relocations (offsets come in
            // through OFFSETS): the kernel's BTF, parsed here by default,
            // would only raise the peak memory.
            loader.btf(None);
            loader.override_global("FILTER", &filter, true);
            loader.override_global("OFFSETS", &offsets.offsets, true);
            loader.override_global("WAKEUP_BYTES", &wakeup_bytes, true);
            if let Some(bytes) = cfg.ring_bytes {
                loader.map_max_entries("EVENTS", bytes);
            }
            loader.load(OBJECT)?
        };

        if !cfg.ports.is_empty() {
            let map = ebpf
                .map_mut("PORT_FILTER")
                .ok_or(CollectorError::Missing("map PORT_FILTER"))?;
            let mut ports: BpfHashMap<_, u16, u8> = BpfHashMap::try_from(map)?;
            for p in &cfg.ports {
                ports.insert(p, 1, 0)?;
            }
        }

        let mut mechanisms = probe::attach_all(&mut ebpf, allowed)?;
        mechanisms.push(Mechanism {
            what: "netns",
            how: offsets.describe(),
        });
        // The kernel skips a tracepoint or kprobe program that would run
        // while another one runs on the same CPU (an interrupt during one,
        // say) and counts it per program: those are lost events too.
        let progs: Vec<ProgramFd> = ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok().and_then(|fd| fd.try_clone().ok()))
            .collect();

        let events = ebpf
            .take_map("EVENTS")
            .ok_or(CollectorError::Missing("map EVENTS"))?;
        let ring = RingBuf::try_from(events)?;
        let lost_map = ebpf
            .take_map("LOST")
            .ok_or(CollectorError::Missing("map LOST"))?;
        let lost: PerCpuArray<MapData, u64> = PerCpuArray::try_from(lost_map)?;

        // SAFETY: the ring buffer owns its fd and keeps it open as long as the
        // AsyncFd that wraps it.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| CollectorError::Io(e.into()))?;
        let (stop, stop_rx) = watch::channel(false);
        let ring_events = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = tokio::spawn(read_loop(
            ring,
            ring_events.clone(),
            Losses { ring: lost, progs },
            tx,
            stop_rx,
            Stall {
                time: cfg.stall_reader,
                until: cfg.stall_until.clone(),
            },
            if cfg.lost_poll.is_zero() {
                Duration::from_millis(500)
            } else {
                cfg.lost_poll
            },
            if cfg.drain_every.is_zero() {
                DRAIN_EVERY
            } else {
                cfg.drain_every
            },
        ));
        Ok(LinuxCollector {
            ebpf: Some(ebpf),
            mechanisms,
            stop,
            reader: Some(reader),
            ring_events,
        })
    }

    pub fn mechanisms(&self) -> &[Mechanism] {
        &self.mechanisms
    }

    /// A counter of the records read from the ring buffer, shared with the
    /// reader (it goes on counting the final drain after `stop`).
    pub fn ring_events(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.ring_events.clone()
    }

    /// Events counted in the kernel per process (aggregate mode): pid ->
    /// (events, command name), summed over CPUs.
    pub fn proc_counts(
        &self,
    ) -> Result<std::collections::HashMap<u32, (u64, String)>, CollectorError> {
        use aya::maps::PerCpuHashMap;
        use portwatch_common::ProcCount;
        let mut out = std::collections::HashMap::new();
        let Some(ebpf) = self.ebpf.as_ref() else {
            return Ok(out);
        };
        let map = ebpf
            .map("PROC_COUNTS")
            .ok_or(CollectorError::Missing("map PROC_COUNTS"))?;
        let counts: PerCpuHashMap<_, u32, ProcCount> = PerCpuHashMap::try_from(map)?;
        for entry in counts.iter() {
            let Ok((pid, per_cpu)) = entry else { continue };
            let events = per_cpu.iter().map(|c| c.events).sum::<u64>();
            let comm = per_cpu
                .iter()
                .find(|c| c.comm[0] != 0)
                .map(|c| decode::comm(&c.comm).into())
                .unwrap_or_default();
            out.insert(pid, (events, comm));
        }
        Ok(out)
    }

    /// Aggregate mode's totals since attach, summed over CPUs: every kept
    /// event by [`portwatch_common::counts`] slot, and connects per
    /// destination. Empty once stopped.
    pub fn totals(&self) -> Result<counts::Totals, CollectorError> {
        use aya::maps::PerCpuHashMap;
        use portwatch_common::{counts::SLOTS, DestCount, DestKey};
        let mut out = counts::Totals::default();
        let Some(ebpf) = self.ebpf.as_ref() else {
            return Ok(out);
        };
        let map = ebpf
            .map("COUNTS")
            .ok_or(CollectorError::Missing("map COUNTS"))?;
        let slots: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        out.slots = (0..SLOTS)
            .map(|i| slots.get(&i, 0).map(|v| v.iter().sum::<u64>()))
            .collect::<Result<_, _>>()?;
        let map = ebpf
            .map("DEST_COUNTS")
            .ok_or(CollectorError::Missing("map DEST_COUNTS"))?;
        let dests: PerCpuHashMap<_, DestKey, DestCount> = PerCpuHashMap::try_from(map)?;
        for entry in dests.iter() {
            // An entry deleted while the walk passed it: nothing to count.
            let Ok((key, per_cpu)) = entry else { continue };
            let mut t = counts::DestTotal::default();
            for c in per_cpu.iter() {
                t.connects += c.connects;
                t.established += c.established;
                if c.comm[0] != 0 {
                    t.comm = c.comm;
                    t.cgroup_id = c.cgroup_id;
                }
            }
            out.dests.push((key, t));
        }
        Ok(out)
    }

    /// Deletes `DEST_COUNTS` entries (of processes that exited, already
    /// counted), so that the table does not fill up.
    pub fn forget_dests(
        &mut self,
        keys: &[portwatch_common::DestKey],
    ) -> Result<(), CollectorError> {
        use aya::maps::PerCpuHashMap;
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Ok(());
        };
        let map = ebpf
            .map_mut("DEST_COUNTS")
            .ok_or(CollectorError::Missing("map DEST_COUNTS"))?;
        let mut dests: PerCpuHashMap<_, portwatch_common::DestKey, portwatch_common::DestCount> =
            PerCpuHashMap::try_from(map)?;
        for k in keys {
            // Already gone is fine.
            let _ = dests.remove(k);
        }
        Ok(())
    }

    /// Tells the kernel side about listeners that predate the trace, so that
    /// the connections they accept are attributed from their first event
    /// (and `--pid` keeps them). Entries are marked as seeded (count 0): a
    /// listen() the trace sees on the same key replaces them.
    pub fn seed_listeners(
        &mut self,
        listeners: &[crate::system::snapshot::SeedListener],
    ) -> Result<usize, CollectorError> {
        use portwatch_common::{ListenKey, Listener, Owner, AF_INET, AF_INET6};
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Ok(0);
        };
        let map = ebpf
            .map_mut("LISTENERS")
            .ok_or(CollectorError::Missing("map LISTENERS"))?;
        let mut map: BpfHashMap<_, ListenKey, Listener> = BpfHashMap::try_from(map)?;
        let mut n = 0;
        for l in listeners {
            let Ok(netns) = u32::try_from(l.netns) else {
                continue;
            };
            let (family, addr) = match l.addr {
                std::net::IpAddr::V4(a) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&a.octets());
                    (AF_INET, b)
                }
                std::net::IpAddr::V6(a) => (AF_INET6, a.octets()),
            };
            let key = ListenKey {
                netns,
                family,
                port: l.port,
                addr,
            };
            let mut owner = Owner::zeroed();
            if let Some(o) = &l.owner {
                owner.tgid = o.pid;
                owner.tid = o.pid;
                owner.uid = o.uid;
                let comm = o.comm.as_bytes();
                let len = comm.len().min(owner.comm.len() - 1);
                owner.comm[..len].copy_from_slice(&comm[..len]);
            }
            let value = Listener {
                owner,
                count: 0,
                ambiguous: u32::from(l.owner.is_none()),
            };
            map.insert(key, value, 0)?;
            n += 1;
        }
        Ok(n)
    }

    /// Detaches the programs, then drains what the ring still holds, so that
    /// nothing observed before the stop is lost. Returns what the kernel
    /// counted (aggregate mode), read once nothing can count any more.
    pub async fn stop(mut self) -> Result<KernelCounts, CollectorError> {
        if let Some(ebpf) = self.ebpf.as_mut() {
            for (_, p) in ebpf.programs_mut() {
                probe::unload_program(p);
            }
        }
        let counts = KernelCounts {
            procs: self.proc_counts().unwrap_or_default(),
            totals: self.totals().unwrap_or_default(),
        };
        drop(self.ebpf.take());
        let _ = self.stop.send(true);
        if let Some(h) = self.reader.take() {
            h.await.unwrap_or(Ok(()))?;
        }
        Ok(counts)
    }
}

/// Test-only delays of the reader's first drain.
struct Stall {
    time: Option<Duration>,
    until: Option<std::path::PathBuf>,
}

/// Where the kernel counts events it could not deliver.
struct Losses {
    /// Per-CPU count of failed ring-buffer reserves.
    ring: PerCpuArray<MapData, u64>,
    /// Every loaded program, for its recursion misses.
    progs: Vec<ProgramFd>,
}

impl Losses {
    /// (ring buffer full, recursion misses) so far.
    fn totals(&self) -> (u64, u64) {
        let ring: u64 = self
            .ring
            .get(&0, 0)
            .map(|v| v.iter().copied().sum())
            .unwrap_or(0);
        (ring, self.progs.iter().map(recursion_misses).sum::<u64>())
    }
}

/// How many times the kernel skipped `prog` because a BPF program was
/// already running on that CPU (`bpf_prog_info.recursion_misses`, Linux
/// 5.12+; 0 where the kernel does not count).
fn recursion_misses(prog: &ProgramFd) -> u64 {
    use aya_obj::generated::bpf_prog_info;
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain old data; all zeroes is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: prog.as_fd().as_raw_fd() as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut bpf_prog_info as u64,
    };
    // SAFETY: attr points at a live InfoAttr whose `info` points at a live
    // bpf_prog_info of `info_len` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc == 0 {
        info.recursion_misses
    } else {
        0
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    mut ring: AsyncFd<RingBuf<MapData>>,
    ring_events: std::sync::Arc<std::sync::atomic::AtomicU64>,
    losses: Losses,
    tx: mpsc::Sender<Batch>,
    mut stop: watch::Receiver<bool>,
    stall: Stall,
    lost_poll: Duration,
    drain_every: Duration,
) -> Result<(), CollectorError> {
    let mut decoder = Decoder::new(Clock::new());
    let mut seen = (0u64, 0u64);
    let mut decode_errors = 0u64;
    let count = |n: u64| ring_events.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    if let Some(d) = stall.time {
        tokio::time::sleep(d).await;
    }
    if let Some(path) = &stall.until {
        while !path.exists() && !*stop.borrow() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut tick = tokio::time::interval(lost_poll);
    let mut drain_tick = tokio::time::interval(drain_every);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            r = ring.readable_mut() => {
                let mut guard = r?;
                match drain(guard.get_inner_mut(), &decoder, &tx, &mut decode_errors, &count).await {
                    Drained::Closed => return Ok(()),
                    // Leave it marked readable: the next turn drains on,
                    // after other tasks have had theirs.
                    Drained::More => {}
                    Drained::Empty => guard.clear_ready(),
                }
                false
            }
            _ = drain_tick.tick() => {
                loop {
                    match drain(ring.get_mut(), &decoder, &tx, &mut decode_errors, &count).await {
                        Drained::Closed => return Ok(()),
                        Drained::More => tokio::task::yield_now().await,
                        Drained::Empty => break,
                    }
                }
                false
            }
            _ = tick.tick() => {
                decoder.clock.refresh();
                false
            }
            _ = stop.changed() => true,
        };
        let (ring_lost, recursion) = losses.totals();
        let mut msgs = Vec::new();
        for (now, before, reason) in [
            (ring_lost, &mut seen.0, LostReason::RingBuffer),
            (recursion, &mut seen.1, LostReason::Recursion),
        ] {
            if now > *before {
                msgs.push(SourceMsg::Lost {
                    time: crate::timefmt::now_ns(),
                    count: now - *before,
                    reason,
                });
                *before = now;
            }
        }
        if !msgs.is_empty() && tx.send(msgs).await.is_err() {
            return Ok(());
        }
        if stopping {
            while let Drained::More =
                drain(ring.get_mut(), &decoder, &tx, &mut decode_errors, &count).await
            {}
            if decode_errors > 0 {
                log::warn!("{decode_errors} events could not be decoded and were skipped");
            }
            return Ok(());
        }
    }
}

enum Drained {
    /// The ring is empty.
    Empty,
    /// DRAIN_CAP events taken; more wait.
    More,
    /// The pipeline is gone.
    Closed,
}

/// Takes up to DRAIN_CAP events from the ring and sends them in batches.
async fn drain(
    ring: &mut RingBuf<MapData>,
    decoder: &Decoder,
    tx: &mpsc::Sender<Batch>,
    decode_errors: &mut u64,
    count: &impl Fn(u64) -> u64,
) -> Drained {
    let mut batch: Batch = Vec::new();
    for _ in 0..DRAIN_CAP {
        let Some(item) = ring.next() else {
            return send(tx, batch, Drained::Empty).await;
        };
        let decoded = decode::parse(&item).and_then(|raw: RawEvent| decoder.decode(&raw));
        drop(item);
        count(1);
        match decoded {
            Ok((ev, hints)) => {
                if batch.capacity() == 0 {
                    batch.reserve_exact(BATCH);
                }
                batch.push(SourceMsg::Event(ev, hints));
                if batch.len() == BATCH {
                    // Back-pressure: a slow consumer fills the ring, and the
                    // kernel counts what it cannot store instead of us
                    // dropping it here.
                    if tx.send(std::mem::take(&mut batch)).await.is_err() {
                        return Drained::Closed;
                    }
                }
            }
            Err(e) => {
                if *decode_errors == 0 {
                    log::warn!("skipping an undecodable event: {e}");
                }
                *decode_errors += 1;
            }
        }
    }
    send(tx, batch, Drained::More).await
}

async fn send(tx: &mpsc::Sender<Batch>, batch: Batch, then: Drained) -> Drained {
    if !batch.is_empty() && tx.send(batch).await.is_err() {
        return Drained::Closed;
    }
    then
}
