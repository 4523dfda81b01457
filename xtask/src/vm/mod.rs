//! `cargo xtask vm-test`: the kernel tests inside qemu guests running stock
//! Debian kernels, so that the fentry/fexit and kprobe variants, which the
//! development kernel refuses, run for real.
//!
//! Per kernel: `apt-get download` the image package (cached under
//! `target/vm/kernels/<release>/`: the ELF vmlinux pulled out of the bzImage,
//! plus the few modules the guest needs, decompressed), then build an
//! uncompressed initramfs of busybox, `xtask/vm/init` and a generated
//! `/cmd.sh`, and boot the vmlinux directly (PVH entry) under qemu's TCG. The
//! guest mounts the host's `/` read-only over 9p and chroots into it, so the
//! test binary, portwatch, python3, ss, ip and glibc are the host's own.
//! Guest output comes back over a virtio console; a host-side timeout kills a
//! hung guest.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, Ctx};

/// Kernels run when no `--kernel` is given: bullseye's 5.10 (an older stable
/// series with the ring buffer and BTF), bookworm's default 6.1 and the 6.12
/// series bookworm also carries (`linux-image-6.12-amd64`).
pub const DEFAULT_KERNELS: &[&str] = &["5.10", "6.1", "6.12"];

mod apt;
mod boot;
mod guest;
mod kernel;

use apt::Apt;
use guest::{guest_panicked, run_guest};

/// Which hooks portwatch may use in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Hooks {
    /// Whatever portwatch picks (fexit/fentry where they load).
    Auto,
    /// fexit/fentry disabled (PORTWATCH_HOOKS=kprobe,tracepoint), so that
    /// the kprobe variants serve.
    Kprobe,
    /// Not a hook mode: systemd as PID 1 boots the hardened recorder unit,
    /// and a client takes port 1433 at boot (see boot.rs). Run by default
    /// on the last kernel; `--hooks boot` runs only it.
    Boot,
}

impl Hooks {
    fn name(self) -> &'static str {
        match self {
            Hooks::Auto => "auto",
            Hooks::Kprobe => "kprobe",
            Hooks::Boot => "boot",
        }
    }

    /// PORTWATCH_HOOKS for the guest, if any.
    fn env(self) -> Option<&'static str> {
        match self {
            Hooks::Auto | Hooks::Boot => None,
            Hooks::Kprobe => Some("kprobe,tracepoint"),
        }
    }
}

/// What must attach, per kernel series and hook mode: the value of
/// PORTWATCH_EXPECT_MECHANISMS, which the attached-line kernel test checks
/// (each `kind=prefix` must prefix that kind's mechanism). Found by running
/// the matrix; a kernel not listed runs without expectations.
const EXPECTED: &[(&str, Hooks, &str)] = &[
    (
        "5.10",
        Hooks::Auto,
        "bind=fexit,connect=fexit,timewait=fentry",
    ),
    (
        "5.10",
        Hooks::Kprobe,
        "bind=kprobe,connect=kprobe,timewait=kprobe",
    ),
    (
        "6.1",
        Hooks::Auto,
        "bind=fexit,connect=fexit,timewait=fentry",
    ),
    (
        "6.12",
        Hooks::Auto,
        "bind=fexit,connect=fexit,timewait=fentry",
    ),
    (
        "6.1",
        Hooks::Kprobe,
        "bind=kprobe,connect=kprobe,timewait=kprobe",
    ),
    (
        "6.12",
        Hooks::Kprobe,
        "bind=kprobe,connect=kprobe,timewait=kprobe",
    ),
];

fn expected(release: &str, hooks: Hooks) -> Option<&'static str> {
    let series = series_of(release);
    EXPECTED
        .iter()
        .find(|(s, h, _)| *s == series && *h == hooks)
        .map(|(_, _, e)| *e)
}

/// "6.1.0-56-amd64" -> "6.1"; "6.12.117+deb12-amd64" -> "6.12".
fn series_of(release: &str) -> String {
    release.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// The kernel tests the guests run unless told otherwise: what depends on
/// the kernel and the hooks it offers (which mechanism attaches; bind,
/// connect and TIME_WAIT seen through it; namespaces read through BTF; the
/// in-kernel aggregation maps). Every test also runs on the host in
/// `cargo xtask test`; under software emulation a test takes 12-30 s, so
/// the whole suite on every guest (about 13 min each) would not fit CI's 30
/// minutes. `--all-tests` runs everything.
pub const MATRIX_TESTS: &[&str] = &[
    "trace::attached_line_names_the_mechanism_for_each_kind_of_event",
    "trace::bind_conflict_names_failing_process_and_holder_ipv6",
    "trace::exhausted_port_range_reports_eaddrnotavail_ipv4",
    "trace::timewait_is_charged_to_the_client_that_closes_first_ipv4",
    "trace::timewait_entered_after_a_late_peer_fin_is_charged_to_the_server",
    "trace::udp_connect_is_not_reported_as_a_tcp_connect",
    "trace::summary_only_counts_in_the_kernel_and_agrees_with_the_full_trace",
    "netns::a_failed_bind_names_the_holder_in_the_binders_own_namespace",
    "live::top_counts_each_connect_once_when_the_range_runs_out",
];

/// Guests booted at once. Two at a time take about as long per pair as one
/// alone per guest on the 2-core host (tests slow from ~12 s to ~25 s), but
/// the boot guest, mostly waiting on systemd, overlaps the others.
const PARALLEL_GUESTS: usize = 2;

pub struct Options {
    pub kernels: Vec<String>,
    pub hooks: Vec<Hooks>,
    pub timeout: Duration,
    /// Run the tests this many times per guest, stopping at a failure.
    pub repeat: u32,
    pub test_args: Vec<String>,
    /// Run every kernel test in each guest instead of [`MATRIX_TESTS`].
    pub all_tests: bool,
    /// Also boot the last kernel under systemd (the default run does).
    pub boot_last: bool,
}

/// One guest run's outcome.
pub struct Outcome {
    release: String,
    hooks: Hooks,
    attached: Option<String>,
    result: Option<String>,
    exit: Option<i32>,
    failure: Option<String>,
    wall: Duration,
    /// Lost events over the guest's traced runs: (ring buffer, recursion
    /// misses the kernel counted, inferred from broken chains).
    losses: Option<(u64, u64, u64)>,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.failure.is_none() && self.exit == Some(0)
    }
}

pub fn vm_test(ctx: &Ctx, opts: &Options) -> Result<bool> {
    if !util::is_root() {
        bail!("vm-test downloads kernels with apt-get and runs the kernel tests as root in the guests; run it as root");
    }
    let qemu = util::which("qemu-system-x86_64").context(
        "qemu-system-x86_64 is not installed; `apt-get install qemu-system-x86` (.ci/run does)",
    )?;
    for tool in ["xz", "zstd"] {
        if util::which(tool).is_none() {
            bail!(
                "{tool} is needed to unpack kernels and modules; `apt-get install xz-utils zstd`"
            );
        }
    }
    let target = util::target_dir(&ctx.root);
    let vm_dir = target.join("vm");

    let busybox = kernel::busybox(&Apt::default(), &vm_dir)?;
    let mut kernels = Vec::new();
    for spec in &opts.kernels {
        let apt = Apt::for_kernel(&vm_dir, spec)?;
        kernels.push(kernel::kernel(&apt, &vm_dir, spec)?);
    }
    let (portwatch, tests) = build(ctx, &target)?;

    let matrix_started = Instant::now();
    let mut jobs = std::collections::VecDeque::new();
    for (i, k) in kernels.iter().enumerate() {
        let mut runs = opts.hooks.clone();
        if opts.boot_last && i + 1 == kernels.len() && !runs.contains(&Hooks::Boot) {
            runs.push(Hooks::Boot);
        }
        for hooks in runs {
            // The default run tries the kprobe variants on the oldest and
            // the newest kernel only: the kernels between add little for the
            // 2 min a guest costs (6.1's passed them too when tried).
            let middle = i > 0 && i + 1 < kernels.len();
            if opts.boot_last && hooks == Hooks::Kprobe && middle {
                continue;
            }
            let job = (jobs.len(), k, hooks);
            // The boot guest is the longest: started first, it runs beside
            // the others rather than alone at the end.
            if hooks == Hooks::Boot {
                jobs.push_front(job);
            } else {
                jobs.push_back(job);
            }
        }
    }
    let jobs = std::sync::Mutex::new(jobs);
    let run_job = |k: &kernel::Kernel, hooks: Hooks| -> Result<Outcome> {
        let run = || {
            if hooks == Hooks::Boot {
                boot::run_boot_guest(&qemu, &vm_dir, &busybox, k, &portwatch, opts)
            } else {
                run_guest(&qemu, &vm_dir, &busybox, k, hooks, &portwatch, &tests, opts)
            }
        };
        let mut outcome = run()?;
        // qemu's multi-threaded TCG now and then trips over the kernel's
        // live code patching (an int3 oops in a patched function while a
        // tracepoint is toggled); that is the emulator, not the code under
        // test, so a guest whose kernel panicked gets one more boot.
        if !outcome.passed() && guest_panicked(&vm_dir, k, hooks) {
            eprintln!(
                "vm-test: {} ({}) kernel panicked in the emulator; booting it once more",
                k.release,
                hooks.name()
            );
            outcome = run()?;
        }
        Ok(outcome)
    };
    let mut outcomes: Vec<(usize, Outcome)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PARALLEL_GUESTS)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<(usize, Outcome)>> {
                    let mut done = Vec::new();
                    loop {
                        let next = jobs
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .pop_front();
                        let Some((n, k, hooks)) = next else {
                            return Ok(done);
                        };
                        done.push((n, run_job(k, hooks)?));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("a guest runner panicked"))??,
            );
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    outcomes.sort_by_key(|(n, _)| *n);
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();

    eprintln!(
        "\nvm-test: results ({:.0}s in all)",
        matrix_started.elapsed().as_secs_f64()
    );
    eprintln!(
        "  {:<24} {:<6} {:<16} {:<16} {:<10} {:<22} {:<26} {:>5}",
        "kernel",
        "hooks",
        "bind",
        "connect",
        "timewait",
        "tests",
        "lost ring/recursion/inferred",
        "time"
    );
    let mut passed = 0;
    for o in &outcomes {
        passed += usize::from(o.passed());
        let how = |what: &str| {
            o.attached
                .as_deref()
                .and_then(|l| mechanism(l, what))
                .unwrap_or_else(|| "?".into())
        };
        let tests = match (&o.result, o.passed()) {
            (Some(r), _) => counts(r),
            (None, _) => "no result".into(),
        };
        let losses = o
            .losses
            .map_or("?".into(), |(r, c, i)| format!("{r}/{c}/{i}"));
        eprintln!(
            "  {:<24} {:<6} {:<16} {:<16} {:<10} {:<22} {:<26} {:>4}s {}",
            o.release,
            o.hooks.name(),
            how("bind"),
            how("connect"),
            how("timewait"),
            tests,
            losses,
            o.wall.as_secs(),
            if o.passed() { "PASS" } else { "FAIL" }
        );
        if let Some(why) = &o.failure {
            eprintln!("      {why}");
        }
    }
    let failed = outcomes.len() - passed;
    eprintln!("vm-test: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The kind of hook serving `what` in a `portwatch: attached` line:
/// "fexit", "kprobe+kretprobe", "tracepoint", "sock_diag", ...
fn mechanism(line: &str, what: &str) -> Option<String> {
    let how = line
        .trim_start_matches("portwatch: attached ")
        .split(", ")
        .find_map(|m| m.strip_prefix(what)?.strip_prefix('='))?;
    Some(if how.contains("sock_diag") {
        "sock_diag".into()
    } else {
        how.split_whitespace().next().unwrap_or(how).to_string()
    })
}

/// "ok. 14 passed; 0 failed; 0 ignored; ..." -> "14 passed, 0 failed".
fn counts(result: &str) -> String {
    let parts: Vec<&str> = result
        .split(';')
        .map(|p| {
            p.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
        })
        .filter(|p| p.ends_with("passed") || p.ends_with("failed"))
        .collect();
    parts.join(", ")
}

/// Builds portwatch and the kernel-test binary; returns their paths.
fn build(ctx: &Ctx, target: &Path) -> Result<(PathBuf, PathBuf)> {
    util::run(
        &mut ctx.cargo(["build", "--package", "portwatch"]),
        "fix the build errors above",
    )?;
    let portwatch = target.join("debug").join("portwatch");
    if !portwatch.is_file() {
        bail!("build succeeded but {} is missing", portwatch.display());
    }
    let mut cmd = ctx.cargo([
        "test",
        "--package",
        "integration-tests",
        "--no-run",
        "--message-format=json",
    ]);
    cmd.stderr(Stdio::inherit());
    let out = util::output(&mut cmd).context("building the kernel tests failed")?;
    let tests = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "kernel")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo built no `kernel` test executable")?;
    Ok((portwatch, tests))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_expectations() {
        assert_eq!(series_of("6.1.0-56-amd64"), "6.1");
        assert_eq!(series_of("6.12.117+deb12-amd64"), "6.12");
        assert!(expected("6.12.117+deb12-amd64", Hooks::Auto).is_some());
        assert!(expected("5.10.0-46-amd64", Hooks::Kprobe).is_some());
        assert!(expected("4.19.0-1-amd64", Hooks::Auto).is_none());
    }

    #[test]
    fn result_parsing() {
        let line = "portwatch: attached state=tracepoint sock:inet_sock_set_state, \
                    timewait=state tracepoint + sock_diag confirmation, \
                    bind=kprobe+kretprobe inet_bind+inet6_bind, connect=fexit __inet_stream_connect";
        assert_eq!(mechanism(line, "bind").as_deref(), Some("kprobe+kretprobe"));
        assert_eq!(mechanism(line, "connect").as_deref(), Some("fexit"));
        assert_eq!(mechanism(line, "timewait").as_deref(), Some("sock_diag"));
        assert_eq!(
            counts("FAILED. 11 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 80.24s"),
            "11 passed, 1 failed"
        );
    }
}
