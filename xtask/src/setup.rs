//! `cargo xtask setup`: nightly rust-src, a cached bpf-linker built against
//! nightly's own libLLVM, and a mounted tracefs. Fast when already done.

use std::{
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::util;

/// bpf-linker release we build; it must offer an `llvm-<major>` feature for
/// nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker `BPF_LINKER_VERSION` has features for.
const BPF_LINKER_LLVM: std::ops::RangeInclusive<u32> = 21..=23;
const TRACEFS: &str = "/sys/kernel/tracing";

/// What later tasks need from setup.
pub struct Tools {
    /// Directory holding our `bpf-linker`; goes first on PATH.
    pub bin_dir: PathBuf,
}

pub fn setup(root: &Path) -> Result<Tools> {
    rust_src()?;
    let tools = bpf_linker(root)?;
    tracefs();
    Ok(tools)
}

/// Makes sure the nightly toolchain and its rust-src (for `-Z build-std`) are
/// installed.
fn rust_src() -> Result<()> {
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--toolchain", "nightly", "--installed"]);
    let out = list
        .output()
        .context("cannot run rustup; install it from https://rustup.rs (the eBPF build needs a nightly toolchain)")?;
    if !out.status.success() {
        eprintln!("setup: nightly toolchain missing, installing it with rust-src");
        return util::run(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            "could not install the nightly toolchain, which the eBPF build needs; \
             check network access and run that command by hand",
        );
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    if installed
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src-"))
    {
        eprintln!("setup: rust-src present (nightly)");
        return Ok(());
    }
    eprintln!("setup: adding rust-src to nightly");
    util::run(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "could not add rust-src to nightly (needed for -Z build-std=core); \
         check network access and run that command by hand",
    )
}

/// The LLVM shared library shipped with the nightly toolchain.
struct Llvm {
    path: PathBuf,
    name: String,
    major: u32,
}

fn nightly_llvm() -> Result<Llvm> {
    let sysroot = util::output(
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]),
    )
    .context("cannot find the nightly sysroot; is the nightly toolchain installed?")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let entries = fs::read_dir(&lib)
        .with_context(|| format!("cannot list the nightly sysroot's {}", lib.display()))?;
    // The real library is `libLLVM.so.<major>.<minor>-rust-<version>`; the
    // `libLLVM-<major>-rust-<version>.so` next to it is a linker script.
    let mut found = None;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", lib.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(major) = name.strip_prefix("libLLVM.so.").and_then(leading_number) else {
            continue;
        };
        let is_file = fs::metadata(entry.path())
            .map(|m| m.is_file())
            .unwrap_or(false);
        if is_file {
            found = Some(Llvm {
                path: entry.path(),
                name,
                major,
            });
            break;
        }
    }
    found.with_context(|| {
        format!(
            "no libLLVM.so.* in the nightly sysroot {}; bpf-linker needs nightly's LLVM \
             (try `rustup update nightly`)",
            lib.display()
        )
    })
}

fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Builds bpf-linker into `target/tools/bpf-linker` against nightly's libLLVM
/// unless the stamp there says that was already done.
fn bpf_linker(root: &Path) -> Result<Tools> {
    let llvm = nightly_llvm()?;
    if !BPF_LINKER_LLVM.contains(&llvm.major) {
        bail!(
            "nightly ships LLVM {} but bpf-linker {BPF_LINKER_VERSION} supports LLVM {}..={}; \
             bump BPF_LINKER_VERSION in xtask/src/setup.rs",
            llvm.major,
            BPF_LINKER_LLVM.start(),
            BPF_LINKER_LLVM.end()
        );
    }
    let tools = root.join("target").join("tools");
    let install_root = tools.join("bpf-linker");
    let bin_dir = install_root.join("bin");
    let bin = bin_dir.join("bpf-linker");
    let stamp_path = install_root.join("portwatch-stamp");
    let feature = format!("llvm-{}", llvm.major);
    let stamp = format!(
        "bpf-linker {BPF_LINKER_VERSION}\nfeatures {feature}\nllvm {}\n",
        llvm.path.display()
    );

    // bpf-linker links `-lLLVM` from `<prefix>/lib` and keeps that directory
    // as its RUNPATH, so the prefix must also hold the soname it loads.
    let prefix = tools.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    for link in ["libLLVM.so", llvm.name.as_str()] {
        ensure_symlink(&prefix_lib.join(link), &llvm.path)?;
    }

    let stamp_ok = fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    if stamp_ok && bin.is_file() && starts(&bin) {
        eprintln!(
            "setup: bpf-linker cached (LLVM {}, {})",
            llvm.name,
            rel(root, &bin_dir)
        );
        return Ok(Tools { bin_dir });
    }

    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} into {} (about a minute)",
        llvm.name,
        rel(root, &install_root)
    );
    match fs::remove_file(&stamp_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", stamp_path.display()));
        }
        _ => {}
    }
    let mut install = Command::new(util::cargo_program());
    install
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(&feature)
        .arg("--root")
        .arg(&install_root)
        .env("LLVM_PREFIX", &prefix)
        // Only to stop cargo warning that the install dir is not on PATH.
        .env("PATH", util::path_with(&bin_dir)?)
        .current_dir(root);
    util::run(
        &mut install,
        "could not build bpf-linker; check network access (crates.io) and that a C \
         compiler is installed, then run `cargo xtask setup` again",
    )?;
    if !starts(&bin) {
        bail!(
            "the bpf-linker just built at {} does not start; check that {} points at {}",
            bin.display(),
            prefix_lib.join(&llvm.name).display(),
            llvm.path.display()
        );
    }
    fs::write(&stamp_path, stamp)
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    eprintln!("setup: bpf-linker built (LLVM {})", llvm.name);
    Ok(Tools { bin_dir })
}

/// Points `link` at `target`, replacing whatever was there.
fn ensure_symlink(link: &Path, target: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    match fs::remove_file(link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot replace {}", link.display()));
        }
        _ => {}
    }
    symlink(target, link)
        .with_context(|| format!("cannot symlink {} -> {}", link.display(), target.display()))
}

/// Whether `bin --version` runs (i.e. its libLLVM loads).
fn starts(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Mounts tracefs (needed to attach tracepoints) when it is not mounted.
/// Only warns on failure: building does not need it, kernel tests report it.
fn tracefs() {
    let mounted = fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|l| {
            let mut fields = l.split_whitespace().skip(1);
            fields.next() == Some(TRACEFS) && fields.next() == Some("tracefs")
        })
    });
    let how = format!("mount -t tracefs tracefs {TRACEFS}");
    if mounted {
        eprintln!("setup: tracefs mounted at {TRACEFS}");
    } else if !util::is_root() {
        eprintln!("setup: tracefs not mounted; tracepoints need it, run `sudo {how}`");
    } else {
        let result =
            util::output(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]));
        match result {
            Ok(_) => eprintln!("setup: mounted tracefs at {TRACEFS}"),
            Err(e) => eprintln!(
                "setup: warning: could not mount tracefs ({e:#}); tracepoint attach will fail until `{how}` works"
            ),
        }
    }
}
