//! One guest run: an initramfs of busybox, `xtask/vm/init` and a generated
//! `/cmd.sh` that runs the kernel tests, booted under qemu's TCG with the
//! host's `/` shared read-only; its output and outcome.

use std::{
    fs,
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::kernel::Kernel;
use super::{expected, series_of, Hooks, Options, Outcome};

const INIT: &str = include_str!("../../vm/init");

/// Single-quotes `s` for the guest's bash.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether the guest's console shows a kernel panic.
pub fn guest_panicked(vm_dir: &Path, k: &Kernel, hooks: Hooks) -> bool {
    let console = vm_dir
        .join("runs")
        .join(format!("{}-{}", k.release, hooks.name()))
        .join("console.log");
    fs::read_to_string(console).is_ok_and(|c| c.contains("Kernel panic"))
}

#[allow(clippy::too_many_arguments)]
pub fn run_guest(
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
    // The kernel tests append each traced run's lost events by reason here.
    script += "export PORTWATCH_LOSS_LOG=/run/tmp/losses\n";
    // Every kernel test is expected to run in the guests: a skip fails.
    script += "export PORTWATCH_NO_SKIP=1\n";
    script += "cd /run/tmp\necho \"portwatch-vm: kernel $(uname -r)\"\n";
    // Which hook serves what, as portwatch reports it.
    script += "\"$PORTWATCH_BIN\" trace --duration 1 2>&1 >/dev/null | grep '^portwatch:'\n";
    let mut test_cmd = vec![
        sh_quote(&tests.to_string_lossy()),
        "--test-threads=1".into(),
        "--color=never".into(),
    ];
    if opts.test_args.is_empty() && !opts.all_tests {
        test_cmd.extend(super::MATRIX_TESTS.iter().map(|t| sh_quote(t)));
    }
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
awk '{{r+=$1; c+=$2; i+=$3}} END {{printf "portwatch-vm: losses %d %d %d\n", r, c, i}}' /run/tmp/losses 2>/dev/null
exit $rc
"#,
        repeat = opts.repeat.max(1),
        cmd = test_cmd.join(" ")
    );

    let initramfs = run_dir.join("initramfs.cpio");
    let mut cpio = base_initramfs(busybox, k)?;
    cpio.file("cmd.sh", 0o755, script.as_bytes());
    fs::write(&initramfs, cpio.finish())?;
    let booted = boot(&Boot {
        qemu,
        run_dir: &run_dir,
        kernel: k,
        initramfs: &initramfs,
        append: "console=ttyS0 quiet panic=-1",
        timeout: opts.timeout,
        prefix: format!("[{} {}] ", series_of(&k.release), hooks.name()),
    })?;
    let Booted {
        output,
        status,
        timed_out,
        wall,
    } = booted;
    let console_log = run_dir.join("console.log");
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
    let losses = output
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("portwatch-vm: losses "))
        .and_then(parse_losses);
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
        losses,
    })
}

/// The initramfs every guest starts from: busybox, the init script and the
/// kernel's modules; the caller adds what the guest runs.
pub fn base_initramfs(busybox: &Path, k: &Kernel) -> Result<Cpio> {
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "mod", "proc", "sys", "newroot"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &fs::read(busybox)?);
    cpio.file("init", 0o755, INIT.as_bytes());
    for entry in fs::read_dir(&k.modules)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        cpio.file(&format!("mod/{name}"), 0o644, &fs::read(&path)?);
    }
    Ok(cpio)
}

/// What a guest is booted with.
pub struct Boot<'a> {
    pub qemu: &'a Path,
    pub run_dir: &'a Path,
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    pub append: &'a str,
    pub timeout: Duration,
    /// Put before each line of the guest's output echoed here.
    pub prefix: String,
}

/// What a guest printed on its virtio console, and how qemu ended.
pub struct Booted {
    pub output: Vec<String>,
    pub status: std::process::ExitStatus,
    pub timed_out: bool,
    pub wall: Duration,
}

/// Boots a guest under qemu's TCG with the host's `/` shared read-only,
/// echoing its console output as it comes, until it powers off or the
/// timeout kills it.
pub fn boot(b: &Boot) -> Result<Booted> {
    let out_log = b.run_dir.join("output.log");
    let console_log = b.run_dir.join("console.log");
    let qemu_log = b.run_dir.join("qemu.log");
    fs::write(&out_log, b"")?;
    let mut cmd = Command::new(b.qemu);
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-M", "q35"])
        .args(["-smp", "2", "-m", "1G", "-nodefaults", "-display", "none"])
        .arg("-no-reboot")
        .arg("-serial")
        .arg(format!("file:{}", console_log.display()))
        .arg("-kernel")
        .arg(&b.kernel.vmlinux)
        .arg("-initrd")
        .arg(b.initramfs)
        .args(["-append", b.append])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .args(["-device", "virtio-serial-pci", "-chardev"])
        .arg(format!("file,id=out,path={}", out_log.display()))
        .args(["-device", "virtconsole,chardev=out"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&qemu_log)?)
        .stderr(fs::File::create(b.run_dir.join("qemu.err"))?);
    eprintln!(
        "\nvm-test: booting {} ({}), logs in {}",
        b.kernel.release,
        b.prefix.trim(),
        b.run_dir.display()
    );
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", b.qemu.display()))?;

    // Echo the guest's output as it arrives, until qemu exits or time is up.
    let prefix = &b.prefix;
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
        if started.elapsed() > b.timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(200));
    };
    echo(&mut reader, &mut pending, true)?;
    Ok(Booted {
        output,
        status,
        timed_out,
        wall: started.elapsed(),
    })
}

/// "RING RECURSION INFERRED" as the guest's awk prints them.
fn parse_losses(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// An uncompressed newc cpio archive, as the kernel unpacks an initramfs.
#[derive(Default)]
pub struct Cpio {
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

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, body: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), body);
    }

    /// A symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let data = c.finish();
        assert_eq!(data.len() % 4, 0);
        assert!(data.starts_with(b"070701"));
        assert!(super::super::kernel::find(&data, b"TRAILER!!!").is_some());
    }

    #[test]
    fn quoting_and_losses() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(parse_losses("0 3 12"), Some((0, 3, 12)));
        assert_eq!(parse_losses("0 x 12"), None);
    }
}
