//! Probing what the running kernel accepts, and attaching the cheapest hook
//! per kind of event: fexit/fentry, then kprobes, then tracepoints.

use std::path::Path;

use aya::programs::{FEntry, FExit, KProbe, TracePoint};
use aya::{Btf, Ebpf};

use super::{CollectorError, TRACEFS};
use crate::source::Mechanism;

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
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
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
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load().map_err(|e| format!("load {prog}: {e}"))?;
    p.attach(category, name)
        .map_err(|e| format!("attach {category}:{name}: {e}"))?;
    Ok(())
}

fn fexit(ebpf: &mut Ebpf, btf: &Btf, prog: &str, func: &str) -> Result<(), String> {
    let p: &mut FExit = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load(func, btf).map_err(|e| format!("load {prog}: {e}"))?;
    p.attach()
        .map_err(|e| format!("attach fexit {func}: {e}"))?;
    Ok(())
}

fn fentry(ebpf: &mut Ebpf, btf: &Btf, prog: &str, func: &str) -> Result<(), String> {
    let p: &mut FEntry = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load(func, btf).map_err(|e| format!("load {prog}: {e}"))?;
    p.attach()
        .map_err(|e| format!("attach fentry {func}: {e}"))?;
    Ok(())
}

/// Loads `prog` once and attaches it to each of `funcs`.
fn kprobe(ebpf: &mut Ebpf, prog: &str, funcs: &[&str]) -> Result<(), String> {
    let p: &mut KProbe = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load().map_err(|e| format!("load {prog}: {e}"))?;
    for f in funcs {
        p.attach(*f, 0)
            .map_err(|e| format!("attach kprobe {f}: {e}"))?;
    }
    Ok(())
}

/// Undoes a partly attached variant so that a fallback does not double-report.
fn unload(ebpf: &mut Ebpf, progs: &[&str]) {
    for name in progs {
        if let Some(p) = ebpf.program_mut(name) {
            let _ = match p {
                aya::programs::Program::KProbe(p) => p.unload(),
                aya::programs::Program::FExit(p) => p.unload(),
                aya::programs::Program::FEntry(p) => p.unload(),
                aya::programs::Program::TracePoint(p) => p.unload(),
                _ => Ok(()),
            };
        }
    }
}

type Attempt<'a> = (
    String,
    &'a [&'a str],
    Box<dyn Fn(&mut Ebpf) -> Result<(), String> + 'a>,
);

/// Tries each variant in order; returns the description of the one that
/// attached, or every variant's error.
fn first_that_attaches(ebpf: &mut Ebpf, attempts: Vec<Attempt<'_>>) -> Result<String, Vec<String>> {
    let mut errors = Vec::new();
    for (how, progs, attach) in attempts {
        match attach(ebpf) {
            Ok(()) => return Ok(how),
            Err(e) => {
                unload(ebpf, progs);
                errors.push(format!("{how}: {e}"));
            }
        }
    }
    Err(errors)
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
        tracepoint: true,
    };

    /// Parses a comma-separated list of `fexit` (also `fentry`), `kprobe`,
    /// `tracepoint`; empty means all.
    pub fn parse(list: &str) -> Result<Self, String> {
        if list.trim().is_empty() {
            return Ok(Self::ALL);
        }
        let mut a = AllowedHooks {
            fexit: false,
            kprobe: false,
            tracepoint: false,
        };
        for word in list.split(',').map(str::trim) {
            match word {
                "fexit" | "fentry" => a.fexit = true,
                "kprobe" => a.kprobe = true,
                "tracepoint" => a.tracepoint = true,
                other => {
                    return Err(format!(
                        "unknown hook kind `{other}` (expected fexit, kprobe, tracepoint)"
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
}

/// Attaches every hook, choosing per kind of event by what loads here and
/// what `allowed` permits.
pub fn attach_all(
    ebpf: &mut Ebpf,
    allowed: AllowedHooks,
) -> Result<Vec<Mechanism>, CollectorError> {
    let btf = if allowed.fexit {
        Btf::from_sys_fs().ok()
    } else {
        None
    };
    let btf = btf.as_ref();
    let mut out = Vec::new();

    tracepoint(ebpf, "inet_sock_set_state", "sock", "inet_sock_set_state").map_err(|detail| {
        CollectorError::Attach {
            what: "the TCP state tracepoint",
            detail,
        }
    })?;
    out.push(Mechanism {
        what: "state",
        how: "tracepoint sock:inet_sock_set_state".into(),
    });

    let mut tw: Vec<Attempt> = Vec::new();
    if let Some(btf) = btf {
        tw.push((
            "fentry tcp_time_wait".into(),
            &["fentry_tcp_time_wait"],
            Box::new(move |e: &mut Ebpf| fentry(e, btf, "fentry_tcp_time_wait", "tcp_time_wait")),
        ));
    }
    if allowed.kprobe {
        tw.push((
            "kprobe tcp_time_wait".into(),
            &["kprobe_tcp_time_wait"],
            Box::new(|e: &mut Ebpf| kprobe(e, "kprobe_tcp_time_wait", &["tcp_time_wait"])),
        ));
    }
    let how = first_that_attaches(ebpf, tw)
        .unwrap_or_else(|_| "state tracepoint + sock_diag confirmation".into());
    out.push(Mechanism {
        what: "timewait",
        how,
    });

    for call in CALL_HOOKS {
        let mut attempts: Vec<Attempt> = Vec::new();
        if let Some(btf) = btf {
            attempts.push((
                format!("fexit {}", call.funcs.join("+")),
                call.fexit_progs,
                Box::new(move |e: &mut Ebpf| {
                    call.fexit_progs
                        .iter()
                        .zip(call.funcs)
                        .try_for_each(|(p, f)| fexit(e, btf, p, f))
                }),
            ));
        }
        if allowed.kprobe {
            attempts.push((
                format!("kprobe+kretprobe {}", call.funcs.join("+")),
                call.kprobe_progs,
                Box::new(move |e: &mut Ebpf| {
                    call.kprobe_progs
                        .iter()
                        .try_for_each(|p| kprobe(e, p, call.funcs))
                }),
            ));
        }
        if allowed.tracepoint {
            attempts.push((
                format!("tracepoint syscalls:{}", call.syscall_tps.join("+")),
                call.syscall_tps,
                Box::new(move |e: &mut Ebpf| {
                    call.syscall_tps
                        .iter()
                        .try_for_each(|tp| tracepoint(e, tp, "syscalls", tp))
                }),
            ));
        }
        let how = first_that_attaches(ebpf, attempts).map_err(|errors| CollectorError::Attach {
            what: call.what,
            detail: if errors.is_empty() {
                format!("{HOOKS_ENV} allows no hook for it")
            } else {
                errors.join("; ")
            },
        })?;
        out.push(Mechanism {
            what: call.what,
            how,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::AllowedHooks;

    #[test]
    fn hooks_list_parses() {
        assert_eq!(AllowedHooks::parse("").unwrap(), AllowedHooks::ALL);
        let a = AllowedHooks::parse("kprobe, tracepoint").unwrap();
        assert!(!a.fexit && a.kprobe && a.tracepoint);
        assert!(AllowedHooks::parse("fentry").unwrap().fexit);
        assert!(AllowedHooks::parse("kprobes").is_err());
    }
}
