//! Kernels for the VM matrix: which Debian package carries a series, the
//! ELF vmlinux inside its bzImage, and the few modules the guest loads.

use std::{
    collections::{BTreeSet, HashSet},
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{bail, Context as _, Result};

use super::apt::Apt;
use crate::util;

/// Modules the guest loads (with their dependencies), when not built in:
/// virtio PCI, the virtio console for output, 9p for the host's root, and
/// the sock_diag modules `ss` and portwatch's TIME_WAIT check query, and
/// overlay for the boot test's writable root.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "overlay",
];

/// A kernel ready to boot.
pub struct Kernel {
    pub release: String,
    pub vmlinux: PathBuf,
    /// Directory of decompressed modules plus `order`.
    pub modules: PathBuf,
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

pub fn kernel(apt: &Apt, vm_dir: &Path, spec: &str) -> Result<Kernel> {
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
    // A cache made for another module list is made again.
    let complete = format!("{pkg}\nmodules: {}\n", MODULES.join(" "));
    if fs::read_to_string(dir.join("complete")).is_ok_and(|c| c == complete) {
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
    fs::write(dir.join("complete"), complete)?;
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

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
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
pub fn busybox(apt: &Apt, vm_dir: &Path) -> Result<PathBuf> {
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
