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
    collections::{BTreeSet, HashSet},
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::util::{self, Ctx};

/// Kernels run when no `--kernel` is given: bookworm's default 6.1 and the
/// 6.12 series bookworm also carries (`linux-image-6.12-amd64`).
pub const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12"];

const INIT: &str = include_str!("../vm/init");

/// Modules the guest loads (with their dependencies), when not built in:
/// virtio PCI, the virtio console for output, 9p for the host's root, and
/// the sock_diag modules `ss` and portwatch's TIME_WAIT check query.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
];

/// Which hooks portwatch may use in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Hooks {
    /// Whatever portwatch picks (fexit/fentry where they load).
    Auto,
    /// fexit/fentry disabled (PORTWATCH_HOOKS=kprobe,tracepoint), so that
    /// the kprobe variants serve.
    Kprobe,
}

impl Hooks {
    fn name(self) -> &'static str {
        match self {
            Hooks::Auto => "auto",
            Hooks::Kprobe => "kprobe",
        }
    }

    /// PORTWATCH_HOOKS for the guest, if any.
    fn env(self) -> Option<&'static str> {
        match self {
            Hooks::Auto => None,
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

pub struct Options {
    pub kernels: Vec<String>,
    pub hooks: Vec<Hooks>,
    pub timeout: Duration,
    /// Run the tests this many times per guest, stopping at a failure.
    pub repeat: u32,
    pub test_args: Vec<String>,
}

/// One guest run's outcome.
struct Outcome {
    release: String,
    hooks: Hooks,
    attached: Option<String>,
    result: Option<String>,
    exit: Option<i32>,
    failure: Option<String>,
    wall: Duration,
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
    let apt = Apt::default();

    let busybox = busybox(&apt, &vm_dir)?;
    let mut kernels = Vec::new();
    for spec in &opts.kernels {
        kernels.push(kernel(&apt, &vm_dir, spec)?);
    }
    let (portwatch, tests) = build(ctx, &target)?;

    let matrix_started = Instant::now();
    let mut outcomes = Vec::new();
    for k in &kernels {
        for &hooks in &opts.hooks {
            let mut outcome =
                run_guest(&qemu, &vm_dir, &busybox, k, hooks, &portwatch, &tests, opts)?;
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
                outcome = run_guest(&qemu, &vm_dir, &busybox, k, hooks, &portwatch, &tests, opts)?;
            }
            outcomes.push(outcome);
        }
    }

    eprintln!(
        "\nvm-test: results ({:.0}s in all)",
        matrix_started.elapsed().as_secs_f64()
    );
    eprintln!(
        "  {:<24} {:<6} {:<16} {:<16} {:<10} {:<22} {:>5}",
        "kernel", "hooks", "bind", "connect", "timewait", "tests", "time"
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
        eprintln!(
            "  {:<24} {:<6} {:<16} {:<16} {:<10} {:<22} {:>4}s {}",
            o.release,
            o.hooks.name(),
            how("bind"),
            how("connect"),
            how("timewait"),
            tests,
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

/// apt-get/apt-cache, with one `apt-get update` allowed per xtask run when a
/// lookup or download fails (stale or missing package lists).
#[derive(Default)]
struct Apt {
    updated: std::cell::Cell<bool>,
}

impl Apt {
    fn update_once(&self) -> bool {
        if self.updated.replace(true) {
            return false;
        }
        eprintln!("vm-test: refreshing package lists (apt-get update)");
        let ok = util::output(
            Command::new("apt-get")
                .args(["update", "-q"])
                .stdin(Stdio::null()),
        )
        .map_err(|e| eprintln!("vm-test: apt-get update failed: {e:#}"))
        .is_ok();
        ok
    }

    /// The `Depends:` field of a package's candidate version, or None when
    /// apt does not know it. `refresh`: try `apt-get update` when it does not
    /// (for packages that must exist).
    fn depends(&self, pkg: &str, refresh: bool) -> Option<String> {
        for _ in 0..2 {
            let out =
                util::output(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]));
            if let Ok(text) = out {
                if let Some(deps) = text.lines().find_map(|l| l.strip_prefix("Depends:")) {
                    return Some(deps.trim().to_string());
                }
                if !text.trim().is_empty() {
                    return Some(String::new());
                }
            }
            if !refresh || !self.update_once() {
                break;
            }
        }
        None
    }

    /// `apt-get download pkg` into `dir`; retries once after refreshing the
    /// package lists. Returns the .deb.
    fn download(&self, pkg: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut last_err = None;
        for attempt in 0..2 {
            if attempt > 0 {
                eprintln!("vm-test: downloading {pkg} failed; retrying once");
                self.update_once();
                thread::sleep(Duration::from_secs(2));
            }
            eprintln!("vm-test: downloading {pkg}");
            let result = util::output(
                Command::new("apt-get")
                    .args(["download", "-q", pkg])
                    .current_dir(dir)
                    .stdin(Stdio::null()),
            );
            match result {
                Ok(_) => {
                    let prefix = format!("{pkg}_");
                    for entry in fs::read_dir(dir)? {
                        let path = entry?.path();
                        let name = path.file_name().unwrap_or_default().to_string_lossy();
                        if name.starts_with(&prefix) && name.ends_with(".deb") {
                            return Ok(path);
                        }
                    }
                    last_err = Some(anyhow!("apt-get download left no {prefix}*.deb"));
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("unknown error"))).with_context(|| {
            format!(
                "cannot download {pkg} (tried twice); check that Debian's archive is reachable \
                 and that `apt-cache policy {pkg}` shows a candidate"
            )
        })
    }
}

/// A kernel ready to boot.
struct Kernel {
    release: String,
    vmlinux: PathBuf,
    /// Directory of decompressed modules plus `order`.
    modules: PathBuf,
}

/// Resolves `spec` to an image package: `6.12` -> `linux-image-6.12-amd64`'s
/// dependency; `6.1` -> `linux-image-amd64`'s when that is a 6.1 kernel;
/// `6.1.0-56` or `6.12.117+deb12` -> `linux-image-<spec>-amd64`.
fn image_package(apt: &Apt, spec: &str) -> Result<String> {
    let first_image = |deps: &str| {
        deps.split(',')
            .map(|d| d.split_whitespace().next().unwrap_or(""))
            .find(|d| d.starts_with("linux-image-") && d.ends_with("-amd64"))
            .map(str::to_string)
    };
    // linux-image-amd64 always exists: when apt does not know it, the
    // package lists are missing or stale.
    let default_image = apt
        .depends("linux-image-amd64", true)
        .and_then(|d| first_image(&d));
    let named = format!("linux-image-{spec}-amd64");
    if let Some(deps) = apt.depends(&named, false) {
        // A meta package depends on the image; an image package does not.
        return Ok(first_image(&deps).unwrap_or(named));
    }
    if let Some(image) = default_image {
        if image.starts_with(&format!("linux-image-{spec}.")) {
            return Ok(image);
        }
    }
    bail!(
        "no Debian kernel package for `{spec}`: neither {named} nor linux-image-amd64's \
         dependency matches; see `apt-cache search linux-image-{spec}`"
    )
}

fn kernel(apt: &Apt, vm_dir: &Path, spec: &str) -> Result<Kernel> {
    let kernels = vm_dir.join("kernels");
    let pkg = match image_package(apt, spec) {
        Ok(pkg) => pkg,
        Err(e) => {
            // Offline: fall back to a cached kernel of that series.
            if let Some(cached) = cached_kernel(&kernels, spec) {
                eprintln!("vm-test: {e:#}; using the cached {}", cached.release);
                return Ok(cached);
            }
            return Err(e);
        }
    };
    let release = pkg.strip_prefix("linux-image-").unwrap_or(&pkg).to_string();
    let dir = kernels.join(&release);
    let k = Kernel {
        release: release.clone(),
        vmlinux: dir.join("vmlinux"),
        modules: dir.join("modules"),
    };
    if dir.join("complete").is_file() {
        eprintln!("vm-test: kernel {release} cached ({})", dir.display());
        return Ok(k);
    }

    let _ = fs::remove_dir_all(&dir);
    let work = kernels.join(format!(".{release}.tmp"));
    let _ = fs::remove_dir_all(&work);
    let deb = apt.download(&pkg, &work)?;
    let tree = work.join("tree");
    util::run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
        "cannot unpack the kernel package",
    )?;
    fs::create_dir_all(&k.modules)?;
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    let bz = fs::read(&vmlinuz).with_context(|| format!("cannot read {}", vmlinuz.display()))?;
    let elf = extract_vmlinux(&bz)
        .with_context(|| format!("cannot find the ELF vmlinux inside {}", vmlinuz.display()))?;
    fs::write(&k.vmlinux, elf)?;
    let order = collect_modules(&tree.join("lib/modules").join(&release), &k.modules)?;
    fs::write(k.modules.join("order"), order.join("\n") + "\n")?;
    fs::write(dir.join("complete"), format!("{pkg}\n"))?;
    fs::remove_dir_all(&work).ok();
    eprintln!(
        "vm-test: kernel {release} ready (modules: {})",
        if order.is_empty() {
            "none needed".to_string()
        } else {
            order.join(" ")
        }
    );
    Ok(k)
}

fn cached_kernel(kernels: &Path, spec: &str) -> Option<Kernel> {
    let mut found: Vec<String> = fs::read_dir(kernels)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|r| {
            (r.starts_with(&format!("{spec}.")) || r.starts_with(&format!("{spec}-")))
                && kernels.join(r).join("complete").is_file()
        })
        .collect();
    found.sort();
    let release = found.pop()?;
    let dir = kernels.join(&release);
    Some(Kernel {
        release,
        vmlinux: dir.join("vmlinux"),
        modules: dir.join("modules"),
    })
}

/// The uncompressed kernel inside a bzImage, found the way the kernel's
/// scripts/extract-vmlinux does: try each compressed-stream signature and
/// keep the first decompression that yields an ELF file.
fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    const FORMATS: &[(&[u8], &str, &[&str])] = &[
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dcq"]),
        (b"\xfd7zXZ\x00", "xz", &["-dcq", "--single-stream"]),
        (b"\x1f\x8b\x08", "gzip", &["-dcq"]),
    ];
    for (magic, tool, args) in FORMATS {
        let mut start = 0;
        while let Some(pos) = find(&bz[start..], magic).map(|p| p + start) {
            start = pos + 1;
            // Trailing data after the stream makes the tools complain; what
            // they wrote before that is what counts.
            if let Ok(out) = pipe_through(tool, args, &bz[pos..]) {
                if out.starts_with(b"\x7fELF") {
                    return Ok(out);
                }
            }
        }
    }
    bail!("no zstd, xz or gzip stream in it decompresses to an ELF file")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Runs `tool args` with `input` on stdin and returns its stdout, whatever
/// its exit status.
fn pipe_through(tool: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {tool}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_end(&mut out)?;
    let _ = child.wait();
    let _ = writer.join();
    Ok(out)
}

/// Copies MODULES and their dependencies (from each module's `depends=`
/// modinfo), decompressed, into `dest`; returns them in load order. Modules
/// the kernel has built in (modules.builtin) are skipped.
fn collect_modules(moddir: &Path, dest: &Path) -> Result<Vec<String>> {
    let builtin: HashSet<String> = fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l).file_name())
        .map(|f| norm(f.to_string_lossy().trim_end_matches(".ko")))
        .collect();
    let mut files = std::collections::HashMap::new();
    index_modules(&moddir.join("kernel"), &mut files)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for m in MODULES {
        add_module(&norm(m), &builtin, &files, dest, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn norm(name: &str) -> String {
    name.replace('-', "_")
}

fn index_modules(dir: &Path, files: &mut std::collections::HashMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
            continue;
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        for ext in [".ko", ".ko.xz", ".ko.zst"] {
            if let Some(stem) = name.strip_suffix(ext) {
                files.insert(norm(stem), path.clone());
            }
        }
    }
    Ok(())
}

fn add_module(
    name: &str,
    builtin: &HashSet<String>,
    files: &std::collections::HashMap<String, PathBuf>,
    dest: &Path,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<()> {
    if !seen.insert(name.to_string()) || builtin.contains(name) {
        return Ok(());
    }
    let Some(src) = files.get(name) else {
        bail!("module {name} is neither built in nor shipped by this kernel package");
    };
    let bytes = match src.extension().and_then(|e| e.to_str()) {
        Some("xz") => pipe_through("xz", &["-dcq"], &fs::read(src)?)?,
        Some("zst") => pipe_through("zstd", &["-dcq"], &fs::read(src)?)?,
        _ => fs::read(src)?,
    };
    if !bytes.starts_with(b"\x7fELF") {
        bail!("cannot decompress {}", src.display());
    }
    // modinfo strings are NUL-separated `key=value` entries.
    let deps = bytes
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    for dep in deps.split(',').filter(|d| !d.is_empty()) {
        add_module(&norm(dep), builtin, files, dest, seen, order)?;
    }
    fs::write(dest.join(format!("{name}.ko")), bytes)?;
    order.push(name.to_string());
    Ok(())
}

/// A static busybox for the initramfs, from Debian's busybox-static package.
fn busybox(apt: &Apt, vm_dir: &Path) -> Result<PathBuf> {
    let bin = vm_dir.join("busybox");
    if bin.is_file() {
        return Ok(bin);
    }
    let work = vm_dir.join(".busybox.tmp");
    let _ = fs::remove_dir_all(&work);
    let deb = apt.download("busybox-static", &work)?;
    let tree = work.join("tree");
    util::run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
        "cannot unpack busybox-static",
    )?;
    fs::copy(tree.join("bin/busybox"), &bin).context("busybox-static has no bin/busybox")?;
    fs::remove_dir_all(&work).ok();
    Ok(bin)
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

/// Single-quotes `s` for the guest's bash.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether the guest's console shows a kernel panic.
fn guest_panicked(vm_dir: &Path, k: &Kernel, hooks: Hooks) -> bool {
    let console = vm_dir
        .join("runs")
        .join(format!("{}-{}", k.release, hooks.name()))
        .join("console.log");
    fs::read_to_string(console).is_ok_and(|c| c.contains("Kernel panic"))
}

#[allow(clippy::too_many_arguments)]
fn run_guest(
    qemu: &Path,
    vm_dir: &Path,
    busybox: &Path,
    k: &Kernel,
    hooks: Hooks,
    portwatch: &Path,
    tests: &Path,
    opts: &Options,
) -> Result<Outcome> {
    let run_dir = vm_dir
        .join("runs")
        .join(format!("{}-{}", k.release, hooks.name()));
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;

    let mut script = String::from(
        "set -u\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export HOME=/run/tmp TMPDIR=/run/tmp\n",
    );
    script += &format!(
        "export PORTWATCH_BIN={}\n",
        sh_quote(&portwatch.to_string_lossy())
    );
    if let Some(h) = hooks.env() {
        script += &format!("export PORTWATCH_HOOKS={h}\n");
    }
    if let Some(e) = expected(&k.release, hooks) {
        script += &format!("export PORTWATCH_EXPECT_MECHANISMS={e}\n");
    }
    script += "cd /run/tmp\necho \"portwatch-vm: kernel $(uname -r)\"\n";
    // Which hook serves what, as portwatch reports it.
    script += "\"$PORTWATCH_BIN\" trace --duration 1 2>&1 >/dev/null | grep '^portwatch:'\n";
    let mut test_cmd = vec![
        sh_quote(&tests.to_string_lossy()),
        "--test-threads=1".into(),
        "--color=never".into(),
    ];
    test_cmd.extend(opts.test_args.iter().map(|a| sh_quote(a)));
    // A guest-side deadline, ahead of the host's, so that a hung test shows
    // what it waits on (every user thread's kernel stack) before the guest
    // is killed. `--repeat` runs the tests until the first failure.
    let guest_secs = opts.timeout.as_secs().saturating_sub(60).max(30);
    script += &format!(
        r#"hung() {{
  echo "portwatch-vm: tests still running after {guest_secs}s; user processes:"
  ps -eLo pid,tid,ppid,stat,wchan:32,etime,args --ppid 2 -N ww
  for t in /proc/[0-9]*/task/[0-9]*; do
    [ "$(cat $t/../../stat 2>/dev/null | cut -d' ' -f4)" = 2 ] && continue
    [ -r $t/stack ] || continue
    echo "--- $t $(cat $t/comm 2>/dev/null)"; cat $t/stack 2>/dev/null
  done
}}
( sleep {guest_secs}; hung; pkill -TERM -P $$ -f -- --test-threads ) &
watchdog=$!
rc=0
for i in $(seq 1 {repeat}); do
  [ {repeat} -gt 1 ] && echo "portwatch-vm: round $i of {repeat}"
  {cmd} || {{ rc=$?; break; }}
done
kill $watchdog 2>/dev/null
exit $rc
"#,
        repeat = opts.repeat.max(1),
        cmd = test_cmd.join(" ")
    );

    let initramfs = run_dir.join("initramfs.cpio");
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "mod", "proc", "sys", "newroot"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &fs::read(busybox)?);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("cmd.sh", 0o755, script.as_bytes());
    for entry in fs::read_dir(&k.modules)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        cpio.file(&format!("mod/{name}"), 0o644, &fs::read(&path)?);
    }
    fs::write(&initramfs, cpio.finish())?;

    let out_log = run_dir.join("output.log");
    let console_log = run_dir.join("console.log");
    let qemu_log = run_dir.join("qemu.log");
    fs::write(&out_log, b"")?;
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-M", "q35"])
        .args(["-smp", "2", "-m", "1G", "-nodefaults", "-display", "none"])
        .arg("-no-reboot")
        .arg("-serial")
        .arg(format!("file:{}", console_log.display()))
        .arg("-kernel")
        .arg(&k.vmlinux)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .args(["-device", "virtio-serial-pci", "-chardev"])
        .arg(format!("file,id=out,path={}", out_log.display()))
        .args(["-device", "virtconsole,chardev=out"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&qemu_log)?)
        .stderr(fs::File::create(run_dir.join("qemu.err"))?);
    eprintln!(
        "\nvm-test: booting {} (hooks {}), logs in {}",
        k.release,
        hooks.name(),
        run_dir.display()
    );
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", qemu.display()))?;

    // Echo the guest's output as it arrives, until qemu exits or time is up.
    let prefix = format!("[{} {}] ", series_of(&k.release), hooks.name());
    let mut reader = fs::File::open(&out_log)?;
    let mut pending = Vec::new();
    let mut output = Vec::new();
    let mut echo = |reader: &mut fs::File, pending: &mut Vec<u8>, flush: bool| -> Result<()> {
        let mut buf = Vec::new();
        reader.read_to_end(&mut buf)?;
        pending.extend_from_slice(&buf);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            eprintln!("{prefix}{line}");
            output.push(line);
        }
        if flush && !pending.is_empty() {
            let line = String::from_utf8_lossy(pending).trim_end().to_string();
            pending.clear();
            eprintln!("{prefix}{line}");
            output.push(line);
        }
        Ok(())
    };
    let mut timed_out = false;
    let status = loop {
        echo(&mut reader, &mut pending, false)?;
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > opts.timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(200));
    };
    echo(&mut reader, &mut pending, true)?;
    let wall = started.elapsed();

    let attached = output
        .iter()
        .find(|l| l.starts_with("portwatch: attached"))
        .cloned();
    let result = output
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("test result: "))
        .map(str::to_string);
    let exit = output
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("portwatch-vm: exit "))
        .and_then(|c| c.trim().parse().ok());
    let failure = if timed_out {
        Some(format!(
            "guest killed after the {}s timeout; kernel log: {}",
            opts.timeout.as_secs(),
            console_log.display()
        ))
    } else if exit.is_none() {
        let tail = fs::read_to_string(&console_log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(15).collect();
        let err = fs::read_to_string(run_dir.join("qemu.err")).unwrap_or_default();
        Some(format!(
            "guest stopped without reporting an exit status (qemu {status}); {}kernel log tail:\n{}",
            if err.trim().is_empty() {
                String::new()
            } else {
                format!("qemu said: {}; ", err.trim())
            },
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    } else if exit != Some(0) {
        Some(format!("tests exited {}", exit.unwrap_or(-1)))
    } else {
        None
    };
    Ok(Outcome {
        release: k.release.clone(),
        hooks,
        attached,
        result,
        exit,
        failure,
        wall,
    })
}

/// An uncompressed newc cpio archive, as the kernel unpacks an initramfs.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, body: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), body);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_expectations() {
        assert_eq!(series_of("6.1.0-56-amd64"), "6.1");
        assert_eq!(series_of("6.12.117+deb12-amd64"), "6.12");
        assert!(expected("6.12.117+deb12-amd64", Hooks::Auto).is_some());
        assert!(expected("5.10.0-30-amd64", Hooks::Auto).is_none());
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let data = c.finish();
        assert_eq!(data.len() % 4, 0);
        assert!(data.starts_with(b"070701"));
        assert!(find(&data, b"TRAILER!!!").is_some());
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

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
