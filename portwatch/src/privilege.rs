//! Least privilege: once every probe is attached, `trace` and `record` keep
//! only the capabilities their lookups still use, in every set (effective,
//! permitted, inheritable, ambient, and the bounding set, so that nothing
//! it might exec can regain the rest), and set no_new_privs.
//!
//! Capabilities are per thread: this must run while the process has one
//! thread (before the start-up snapshot's blocking thread exists), so that
//! every thread created later inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// What the long-running subcommands still use after attaching, and why.
/// Everything else (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN for loading and
/// attaching, CAP_DAC_OVERRIDE, CAP_SYS_MODULE, CAP_SETUID, ...) goes.
/// CAP_SYS_ADMIN also lets the process use bpf() on the maps it holds
/// (bpf_capable()), which kernels before 6.5 require for every bpf() call
/// when unprivileged BPF is disabled: no separate CAP_BPF is needed.
pub const KEPT_AFTER_ATTACH: &[(Capability, &str)] = &[
    (
        Capability::CAP_SYS_ADMIN,
        "setns() into a container's network namespace, to ask sock_diag and /proc/sys/net there (TIME_WAIT confirmation, holders of a port, ephemeral pools)",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "open /proc/PID/ns/net and read the /proc/PID/fd links of other users' processes (socket owners)",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "list /proc/PID/fd of other users' processes",
    ),
];

/// What was kept, by kernel name (`cap_sys_admin`), for the log and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub kept: Vec<String>,
    /// Whether the bounding set could be reduced too (needs CAP_SETPCAP).
    pub bounding: bool,
}

/// Drops every capability but [`KEPT_AFTER_ATTACH`] from this thread, which
/// must be the process's only one.
pub fn drop_after_attach() -> Result<Dropped, String> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        return Err(format!(
            "{threads} threads run already; capabilities are per thread, so the others would keep theirs"
        ));
    }
    let err = |what: &str, e: caps::errors::CapsError| format!("{what}: {e}");
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("reading", e))?;
    let keep: CapsHashSet = KEPT_AFTER_ATTACH
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // next steps give up.
    let mut bounding = false;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::runtime::thread_all_supported() {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)
                    .map_err(|e| err("reducing the bounding set", e))?;
            }
        }
        bounding = true;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clearing the ambient set", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| err("clearing the inheritable set", e))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| err("setting the effective set", e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| err("setting the permitted set", e))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "setting no_new_privs: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut kept: Vec<String> = keep.iter().map(|c| c.to_string().to_lowercase()).collect();
    kept.sort();
    Ok(Dropped { kept, bounding })
}

/// Drops what is no longer needed after attaching, saying what was kept
/// (log level info) or, when it cannot, that it runs with everything.
pub fn drop_after_attach_or_warn() {
    match drop_after_attach() {
        Ok(d) => log::info!(
            "after attaching, keeping only {}{}",
            if d.kept.is_empty() {
                "no capabilities".to_owned()
            } else {
                d.kept.join(", ")
            },
            if d.bounding {
                ""
            } else {
                " (bounding set unchanged: no CAP_SETPCAP)"
            }
        ),
        Err(e) => {
            log::warn!("cannot drop capabilities after attaching ({e}); running with all of them")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child process (capabilities are per thread, and the test
    /// harness runs many): after the drop only the kept ones remain, in
    /// every set, and the bounding set says a later exec cannot regain
    /// the others.
    #[test]
    fn keeps_only_what_the_lookups_use() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: dropping capabilities needs root's to drop");
            return;
        }
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = drop_after_attach().is_ok_and(|d| {
                d.kept == ["cap_dac_read_search", "cap_sys_admin", "cap_sys_ptrace"] && d.bounding
            }) && caps::read(None, CapSet::Effective).is_ok_and(|e| e.len() == 3)
                && caps::read(None, CapSet::Permitted).is_ok_and(|p| p.len() == 3)
                && caps::read(None, CapSet::Bounding).is_ok_and(|b| b.len() == 3)
                && !caps::has_cap(None, CapSet::Effective, Capability::CAP_BPF).unwrap_or(true);
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's capabilities after the drop were not the three kept"
        );
    }
}
