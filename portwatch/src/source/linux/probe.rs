//! Probing what the running kernel accepts, and attaching the cheapest hook
//! per kind of event: fexit/fentry, then kprobes, then tracepoints.

use std::path::Path;

use aya::maps::MapType;
use aya::programs::{
    CgroupAttachMode, CgroupSock, CgroupSockAddr, FEntry, FExit, KProbe, Program, ProgramError,
    ProgramType, TracePoint,
};
use aya::sys::{is_map_supported, is_program_supported};
use aya::{Btf, Ebpf, EbpfLoader};

use super::{CollectorError, OBJECT, TRACEFS};
use crate::source::{EventHooks, HookAttempt, HookKind, HookTable, Mechanism};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capabilities of this process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Capabilities {
    pub euid: u32,
    pub effective: u64,
}

impl Capabilities {
    fn has(&self, cap: u32) -> bool {
        self.effective & (1u64 << cap) != 0
    }

    pub fn is_root(&self) -> bool {
        self.euid == 0
    }

    pub fn can_load_bpf(&self) -> bool {
        self.has(CAP_SYS_ADMIN) || (self.has(CAP_BPF) && self.has(CAP_PERFMON))
    }
}

pub fn capabilities() -> Capabilities {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let effective = procfs::process::Process::myself()
        .and_then(|p| p.status())
        .map_or(0, |s| s.capeff);
    Capabilities { euid, effective }
}

pub fn tracefs_mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// aya attaches tracepoints through tracefs, which some systems (this CI host
/// among them) do not mount at boot. Mount it when we may.
pub fn ensure_tracefs() -> Result<(), CollectorError> {
    if tracefs_mounted() {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(CollectorError::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .is_dir()
}

fn tracepoint(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<(), String> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load().map_err(|e| load_failed(prog, &e))?;
    p.attach(category, name)
        .map_err(|e| format!("attach {category}:{name}: {}", error_chain(&e)))?;
    Ok(())
}

fn fexit(ebpf: &mut Ebpf, btf: &Btf, prog: &str, func: &str) -> Result<(), String> {
    let p: &mut FExit = program(ebpf, prog)?;
    p.load(func, btf).map_err(|e| load_failed(prog, &e))?;
    p.attach()
        .map_err(|e| format!("attach fexit {func}: {}", error_chain(&e)))?;
    Ok(())
}

fn fentry(ebpf: &mut Ebpf, btf: &Btf, prog: &str, func: &str) -> Result<(), String> {
    let p: &mut FEntry = program(ebpf, prog)?;
    p.load(func, btf).map_err(|e| load_failed(prog, &e))?;
    p.attach()
        .map_err(|e| format!("attach fentry {func}: {}", error_chain(&e)))?;
    Ok(())
}

/// Loads `prog` once and attaches it to each of `funcs`.
fn kprobe(ebpf: &mut Ebpf, prog: &str, funcs: &[&str]) -> Result<(), String> {
    let p: &mut KProbe = program(ebpf, prog)?;
    p.load().map_err(|e| load_failed(prog, &e))?;
    for f in funcs {
        p.attach(*f, 0)
            .map_err(|e| format!("attach kprobe {f}: {}", error_chain(&e)))?;
    }
    Ok(())
}

/// Loads each cgroup program and attaches it to the cgroup v2 root, where it
/// sees every process on the machine. aya attaches through a BPF link
/// (Linux 5.7+), which the kernel always attaches in multi mode: programs
/// that other software (systemd) attached there keep running. The link's
/// flags must be 0 (`Single` here): the kernel refuses BPF_F_ALLOW_MULTI on
/// a link with EINVAL.
fn cgroup(ebpf: &mut Ebpf, addr_progs: &[&str], sock_progs: &[&str]) -> Result<(), String> {
    let root = crate::system::cgroup2_mount()
        .ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_owned())?;
    let dir = std::fs::File::open(&root).map_err(|e| format!("open {}: {e}", root.display()))?;
    for prog in addr_progs {
        let p: &mut CgroupSockAddr = program(ebpf, prog)?;
        p.load().map_err(|e| load_failed(prog, &e))?;
        p.attach(&dir, CgroupAttachMode::Single)
            .map_err(|e| format!("attach {prog} to {}: {}", root.display(), error_chain(&e)))?;
    }
    for prog in sock_progs {
        let p: &mut CgroupSock = program(ebpf, prog)?;
        p.load().map_err(|e| load_failed(prog, &e))?;
        p.attach(&dir, CgroupAttachMode::Single)
            .map_err(|e| format!("attach {prog} to {}: {}", root.display(), error_chain(&e)))?;
    }
    Ok(())
}

/// Undoes a partly attached variant so that a fallback does not double-report.
fn unload(ebpf: &mut Ebpf, progs: &[&str]) {
    for name in progs {
        if let Some(p) = ebpf.program_mut(name) {
            unload_program(p);
        }
    }
}

/// Detaches and unloads one program, whatever its kind; one that is not
/// loaded is left as it is.
pub(super) fn unload_program(p: &mut Program) {
    let _ = match p {
        Program::KProbe(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::CgroupSockAddr(p) => p.unload(),
        Program::CgroupSock(p) => p.unload(),
        _ => Ok(()),
    };
}

/// The program `prog` of the object, as the kind it was built as.
fn program<'a, T>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing"))?;
    p.try_into().map_err(|e: ProgramError| e.to_string())
}

fn load_failed(prog: &str, e: &dyn std::error::Error) -> String {
    format!("load {prog}: {}", error_chain(e))
}

type AttachFn<'a> = Box<dyn Fn(&mut Ebpf) -> Result<(), String> + 'a>;

/// One way of serving a kind of event.
struct Variant<'a> {
    how: String,
    kind: HookKind,
    /// The programs it loads, to unload when it fails or after probing.
    progs: &'a [&'a str],
    attach: AttachFn<'a>,
}

/// The variants for one kind of event, cheapest first.
struct Plan<'a> {
    what: &'static str,
    /// For the error when nothing attaches.
    failure: &'static str,
    variants: Vec<Variant<'a>>,
    /// Used when no variant attaches; None means tracing cannot run.
    fallback: Option<(&'static str, HookKind)>,
}

/// The variants for one syscall-level event, cheapest first.
struct CallHooks {
    what: &'static str,
    /// Kernel functions, and the fexit program for each (same order).
    funcs: &'static [&'static str],
    fexit_progs: &'static [&'static str],
    /// Entry and return probe, each attached to every function.
    kprobe_progs: &'static [&'static str],
    /// Tracepoint programs, named after the syscalls tracepoints they attach to.
    syscall_tps: &'static [&'static str],
}

const CALL_HOOKS: [CallHooks; 2] = [
    CallHooks {
        what: "bind",
        funcs: &["inet_bind", "inet6_bind"],
        fexit_progs: &["fexit_inet_bind", "fexit_inet6_bind"],
        kprobe_progs: &["kprobe_inet_bind", "kretprobe_inet_bind"],
        syscall_tps: &["sys_enter_bind", "sys_exit_bind"],
    },
    CallHooks {
        what: "connect",
        funcs: &["__inet_stream_connect"],
        fexit_progs: &["fexit_inet_stream_connect"],
        kprobe_progs: &[
            "kprobe_inet_stream_connect",
            "kretprobe_inet_stream_connect",
        ],
        syscall_tps: &["sys_enter_connect", "sys_exit_connect"],
    },
];

/// Hook families `PORTWATCH_HOOKS` lets portwatch try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowedHooks {
    /// fentry and fexit.
    pub fexit: bool,
    pub kprobe: bool,
    /// cgroup sock_addr/sock programs (bind).
    pub cgroup: bool,
    /// The syscall tracepoints (the state tracepoint is always used).
    pub tracepoint: bool,
}

/// The variable that narrows the hook choice, for diagnosis and for testing
/// the fallbacks on kernels where a cheaper hook would load.
pub const HOOKS_ENV: &str = "PORTWATCH_HOOKS";

impl AllowedHooks {
    pub const ALL: AllowedHooks = AllowedHooks {
        fexit: true,
        kprobe: true,
        cgroup: true,
        tracepoint: true,
    };

    /// Parses a comma-separated list of `fexit` (also `fentry`), `kprobe`,
    /// `cgroup`, `tracepoint`; empty means all.
    pub fn parse(list: &str) -> Result<Self, String> {
        if list.trim().is_empty() {
            return Ok(Self::ALL);
        }
        let mut a = AllowedHooks {
            fexit: false,
            kprobe: false,
            cgroup: false,
            tracepoint: false,
        };
        for word in list.split(',').map(str::trim) {
            match word {
                "fexit" | "fentry" => a.fexit = true,
                "kprobe" => a.kprobe = true,
                "cgroup" => a.cgroup = true,
                "tracepoint" => a.tracepoint = true,
                other => {
                    return Err(format!(
                        "unknown hook kind `{other}` (expected fexit, kprobe, cgroup, tracepoint)"
                    ))
                }
            }
        }
        Ok(a)
    }

    pub fn from_env() -> Result<Self, CollectorError> {
        match std::env::var(HOOKS_ENV) {
            Ok(v) => Self::parse(&v)
                .map_err(|e| CollectorError::BadHooks(format!("{HOOKS_ENV}={v}: {e}"))),
            Err(_) => Ok(Self::ALL),
        }
    }

    fn permits(&self, kind: HookKind) -> bool {
        match kind {
            HookKind::Fentry | HookKind::Fexit => self.fexit,
            HookKind::Kprobe => self.kprobe,
            HookKind::SyscallTracepoints => self.tracepoint,
            HookKind::CgroupSockAddr | HookKind::CgroupSock => self.cgroup,
            HookKind::Tracepoint => true,
        }
    }
}

/// Kernel BTF, which fentry/fexit need; the error text otherwise. Parsing
/// it costs about 14 MiB at its peak, so it is skipped where the kernel
/// refuses tracing programs outright.
fn kernel_btf() -> Result<Btf, String> {
    if tracing_refused() {
        return Err(
            "the BPF_PROG_LOAD syscall returned Operation not permitted for a tracing program (probed without parsing BTF)"
                .into(),
        );
    }
    Btf::from_sys_fs().map_err(|e| format!("kernel BTF unavailable (/sys/kernel/btf/vmlinux): {e}"))
}

/// Whether the kernel refuses BPF_PROG_TYPE_TRACING (fentry/fexit) outright:
/// a two-instruction fentry program with a made-up target is loaded; a
/// kernel that allows tracing refuses the target (EINVAL and the like),
/// one that forbids it answers EPERM before looking.
fn tracing_refused() -> bool {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_TRACING: u32 = 26;
    const BPF_TRACE_FENTRY: u32 = 24;
    // mov r0, 0; exit
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD part: prog_type @0, insn_cnt @4, insns
    // @8, license @16, expected_attach_type @68, attach_btf_id @108.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_TRACING.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&BPF_TRACE_FENTRY.to_ne_bytes());
    attr[108..112].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr of the size given, pointing at live
    // instructions and license.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    if fd >= 0 {
        // SAFETY: a descriptor this call just returned.
        unsafe { libc::close(fd as i32) };
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The one place that decides which hooks serve which events, and in what
/// order they are tried. `trace` ([`attach_all`]) and `doctor`
/// ([`probe_hooks`]) both walk these plans, so doctor reports exactly what
/// trace would attach.
fn plans(btf: &Result<Btf, String>) -> Vec<Plan<'_>> {
    let mut plans = Vec::new();
    plans.push(Plan {
        what: "state",
        failure: "the TCP state tracepoint",
        variants: vec![Variant {
            how: "tracepoint sock:inet_sock_set_state".into(),
            kind: HookKind::Tracepoint,
            progs: &["inet_sock_set_state"],
            attach: Box::new(|e: &mut Ebpf| {
                tracepoint(e, "inet_sock_set_state", "sock", "inet_sock_set_state")
            }),
        }],
        fallback: None,
    });

    plans.push(Plan {
        what: "timewait",
        failure: "timewait",
        variants: vec![
            Variant {
                how: "fentry tcp_time_wait".into(),
                kind: HookKind::Fentry,
                progs: &["fentry_tcp_time_wait"],
                attach: Box::new(move |e: &mut Ebpf| {
                    let btf = btf.as_ref().map_err(Clone::clone)?;
                    fentry(e, btf, "fentry_tcp_time_wait", "tcp_time_wait")
                }),
            },
            Variant {
                how: "kprobe tcp_time_wait".into(),
                kind: HookKind::Kprobe,
                progs: &["kprobe_tcp_time_wait"],
                attach: Box::new(|e: &mut Ebpf| {
                    kprobe(e, "kprobe_tcp_time_wait", &["tcp_time_wait"])
                }),
            },
        ],
        fallback: Some((
            "state tracepoint + sock_diag confirmation",
            HookKind::Tracepoint,
        )),
    });

    for call in CALL_HOOKS {
        let mut variants = vec![
            Variant {
                how: format!("fexit {}", call.funcs.join("+")),
                kind: HookKind::Fexit,
                progs: call.fexit_progs,
                attach: Box::new(move |e: &mut Ebpf| {
                    let btf = btf.as_ref().map_err(Clone::clone)?;
                    call.fexit_progs
                        .iter()
                        .zip(call.funcs)
                        .try_for_each(|(p, f)| fexit(e, btf, p, f))
                }),
            },
            Variant {
                how: format!("kprobe+kretprobe {}", call.funcs.join("+")),
                kind: HookKind::Kprobe,
                progs: call.kprobe_progs,
                attach: Box::new(move |e: &mut Ebpf| {
                    call.kprobe_progs
                        .iter()
                        .try_for_each(|p| kprobe(e, p, call.funcs))
                }),
            },
        ];
        // Neither fexit nor kprobes: hooks that cost other system calls
        // nothing, before the syscall tracepoints that tax them all.
        match call.what {
            "bind" => variants.push(Variant {
                how: "cgroup bind4+bind6+post_bind4+post_bind6 (errno inferred)".into(),
                kind: HookKind::CgroupSockAddr,
                progs: &["cg_bind4", "cg_bind6", "cg_post_bind4", "cg_post_bind6"],
                attach: Box::new(|e: &mut Ebpf| {
                    cgroup(
                        e,
                        &["cg_bind4", "cg_bind6"],
                        &["cg_post_bind4", "cg_post_bind6"],
                    )
                }),
            }),
            "connect" => variants.push(Variant {
                how: "state tracepoint (outcomes inferred)".into(),
                kind: HookKind::Tracepoint,
                progs: &[],
                attach: Box::new(|_: &mut Ebpf| Ok(())),
            }),
            _ => {}
        }
        variants.push(Variant {
            how: format!("tracepoint syscalls:{}", call.syscall_tps.join("+")),
            kind: HookKind::SyscallTracepoints,
            progs: call.syscall_tps,
            attach: Box::new(move |e: &mut Ebpf| {
                call.syscall_tps
                    .iter()
                    .try_for_each(|tp| tracepoint(e, tp, "syscalls", tp))
            }),
        });
        plans.push(Plan {
            what: call.what,
            failure: call.what,
            variants,
            fallback: None,
        });
    }
    plans
}

/// How [`run_plan`] treats a variant that attached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Keep it attached and stop: tracing.
    Attach,
    /// Detach and unload it, and go on to the next: probing.
    Probe,
}

/// Tries a plan's variants in order and returns every outcome and the
/// choice: the first variant that attached, else the plan's fallback.
fn run_plan(ebpf: &mut Ebpf, plan: Plan<'_>, mode: Mode) -> EventHooks {
    let mut attempts = Vec::new();
    for v in plan.variants {
        let result = (v.attach)(ebpf);
        let loads = result.is_ok();
        if !loads || mode == Mode::Probe {
            unload(ebpf, v.progs);
        }
        attempts.push(HookAttempt {
            how: v.how,
            mechanism: v.kind,
            loads,
            reason: result.err(),
        });
        if loads && mode == Mode::Attach {
            break;
        }
    }
    let (chosen, mechanism) = match attempts.iter().find(|a| a.loads) {
        Some(a) => (Some(a.how.clone()), Some(a.mechanism)),
        None => match plan.fallback {
            Some((how, kind)) => (Some(how.to_owned()), Some(kind)),
            None => (None, None),
        },
    };
    EventHooks {
        event: plan.what,
        chosen,
        mechanism,
        attempts,
    }
}

/// Attaches every hook, choosing per kind of event by what loads here and
/// what `allowed` permits.
pub fn attach_all(
    ebpf: &mut Ebpf,
    allowed: AllowedHooks,
) -> Result<Vec<Mechanism>, CollectorError> {
    let btf = if allowed.fexit {
        kernel_btf()
    } else {
        Err(format!("fentry/fexit not allowed by {HOOKS_ENV}"))
    };
    let mut out = Vec::new();
    for mut plan in plans(&btf) {
        plan.variants.retain(|v| allowed.permits(v.kind));
        let failure = plan.failure;
        let hooks = run_plan(ebpf, plan, Mode::Attach);
        let Some(how) = hooks.chosen else {
            let detail = hooks
                .attempts
                .iter()
                .map(|a| format!("{}: {}", a.how, a.reason.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(CollectorError::Attach {
                what: failure,
                detail,
            });
        };
        out.push(Mechanism {
            what: hooks.event,
            how,
        });
    }
    Ok(out)
}

/// Whether a program type loads (a trivial program, never attached).
fn program_type(kind: HookKind, ty: ProgramType, how: &str) -> HookAttempt {
    let (loads, reason) = match is_program_supported(ty) {
        Ok(true) => (true, None),
        Ok(false) => (
            false,
            Some("this kernel does not know the program type".into()),
        ),
        Err(e) => (false, Some(error_chain(&e))),
    };
    HookAttempt {
        how: how.into(),
        mechanism: kind,
        loads,
        reason,
    }
}

/// An error with its causes (aya puts the useful part, such as the errno or
/// the missing file, in the source), without an empty verifier log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let part = inner.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        src = inner.source();
    }
    let s = s.trim_end();
    s.strip_suffix("Verifier output:")
        .unwrap_or(s)
        .trim_end_matches(['.', ' '])
        .to_owned()
}

/// Probes what `trace` would attach: loads the embedded eBPF object, walks
/// the same plans as [`attach_all`] but tries every variant, detaching and
/// unloading each after it attached, and checks whether the cgroup socket
/// program types load (portwatch does not use them yet). Nothing stays
/// attached when this returns. Mounts tracefs if needed, as `trace` does.
pub fn probe_hooks() -> Result<HookTable, CollectorError> {
    if !capabilities().can_load_bpf() {
        return Err(CollectorError::NotPrivileged);
    }
    ensure_tracefs()?;
    // The same narrowing as trace, so that doctor says what trace would do.
    let allowed = AllowedHooks::from_env()?;
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    let btf = kernel_btf();
    let events = plans(&btf)
        .into_iter()
        .map(|mut plan| {
            plan.variants.retain(|v| allowed.permits(v.kind));
            run_plan(&mut ebpf, plan, Mode::Probe)
        })
        .collect();
    drop(ebpf);
    let extra = vec![
        program_type(
            HookKind::CgroupSockAddr,
            ProgramType::CgroupSockAddr,
            "BPF_PROG_TYPE_CGROUP_SOCK_ADDR (bind4/bind6, connect4/connect6)",
        ),
        program_type(
            HookKind::CgroupSock,
            ProgramType::CgroupSock,
            "BPF_PROG_TYPE_CGROUP_SOCK (post_bind4/post_bind6)",
        ),
    ];
    Ok(HookTable {
        events,
        extra,
        netns: Some(super::offsets::kernel_isolated().describe()),
    })
}

/// Whether `BPF_MAP_TYPE_RINGBUF` maps can be created (Linux 5.8+); the
/// collector needs one.
pub fn ring_buffer_supported() -> Result<bool, String> {
    is_map_supported(MapType::RingBuf).map_err(|e| error_chain(&e))
}
