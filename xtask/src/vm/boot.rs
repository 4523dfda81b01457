//! The boot test: one guest boots systemd as PID 1 (on a writable overlay
//! over the read-only host root) with the hardened recorder unit enabled,
//! as `portwatch install-service` renders it. During boot a client unit's
//! connection is handed 1433 as its ephemeral port (the guest's range is
//! narrowed to 1433-1433 to make it certain), and a "database" unit then
//! fails to bind 1433, retrying until the client lets go. A check unit then
//! asks `portwatch history --port 1433 --boot 0 --first`, which must name
//! the client's unit and process, and `portwatch doctor`, which must flag
//! 1433 inside the ephemeral range; it reports `boot-test:` lines and the
//! exit status on the virtio console and powers the guest off.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use super::guest::{base_initramfs, boot, Boot, Booted};
use super::kernel::Kernel;
use super::{series_of, Hooks, Options, Outcome};

/// Where the guest's init copies portwatch for the unit: the build folder
/// may be under /tmp (a CI clone), which the unit's PrivateTmp= hides.
const INSTALLED: &str = "/usr/local/sbin/portwatch";

/// The recorder unit exactly as `install-service` would write it.
fn recorder_unit(portwatch: &Path) -> Result<String> {
    let out = Command::new(portwatch)
        .args(["install-service", "--dry-run", "--binary", INSTALLED])
        .args(["--journal", "/var/lib/portwatch"])
        .output()
        .context("running portwatch install-service --dry-run")?;
    if !out.status.success() {
        bail!(
            "portwatch install-service --dry-run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let unit: String = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("would run"))
        .map(|l| format!("{l}\n"))
        .collect();
    if !unit.contains("ExecStart=") {
        bail!("install-service --dry-run printed no unit:\n{text}");
    }
    Ok(unit)
}

/// A service of the story: no sandbox of its own, ordered by `extra`.
fn story_unit(description: &str, extra: &str, exec: &str) -> String {
    format!(
        "[Unit]\nDescription={description}\nStartLimitIntervalSec=0\n{extra}\n\n[Service]\nExecStart={exec}\n"
    )
}

/// Tells systemd that a Type=notify service is ready.
const NOTIFY_PY: &str = r#"
def ready():
    import os, socket
    path = os.environ["NOTIFY_SOCKET"]
    if path.startswith("@"):
        path = "\0" + path[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"READY=1", path)
"#;

const UPSTREAM_PY: &str = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8080)); s.listen(16)
ready()
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
"#;

/// Connects out (the kernel hands it 1433, the only ephemeral port), says
/// it is ready, holds the connection long enough for the database to fail,
/// then lets go.
const CLIENT_PY: &str = r#"
import os, socket, time
open("/run/pw-client.pid", "w").write(str(os.getpid()))
c = socket.create_connection(("127.0.0.1", 8080))
open("/run/pw-client.port", "w").write(str(c.getsockname()[1]))
ready()
time.sleep(8)
c.close()
"#;

const DATABASE_PY: &str = r#"
import socket, sys, time
s = socket.socket()
try:
    s.bind(("0.0.0.0", 1433))
except OSError as e:
    print(f"database: cannot bind 1433: {e}", flush=True)
    sys.exit(1)
s.listen(16)
print("database: listening on 1433", flush=True)
while True:
    time.sleep(3600)
"#;

/// Runs after the story, with its output on the virtio console.
fn check_sh(portwatch: &Path) -> String {
    format!(
        r#"#!/bin/bash
exec >/dev/hvc0 2>&1
PW={pw}
rc=0
fail() {{ echo "boot-test: FAIL: $*"; rc=1; }}
echo "portwatch-vm: kernel $(uname -r); PID 1 is $(cat /proc/1/comm)"
echo "boot-test: port range $(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' '-')"
systemctl is-active --quiet portwatch-record.service || fail "the recorder is not running: $(systemctl status portwatch-record.service --no-pager 2>&1 | tail -5)"
for _ in $(seq 1 240); do ss -ltnH 'sport = :1433' | grep -q . && break; sleep 0.5; done
ss -ltnH 'sport = :1433' | grep -q . || fail "the database never listened on 1433"
[ "$(cat /run/pw-client.port 2>/dev/null)" = 1433 ] || fail "the client was not handed 1433 (got $(cat /run/pw-client.port 2>/dev/null))"
restarts=$(systemctl show -p NRestarts --value pw-database.service)
echo "boot-test: the database failed to bind 1433 and was restarted $restarts times"
[ "${{restarts:-0}}" -ge 1 ] || fail "the database did not fail to bind 1433 first"
echo "boot-test: \$ portwatch history --port 1433 --boot 0 --first"
"$PW" history --port 1433 --boot 0 --first >/run/first.txt 2>&1 || fail "history --first failed"
sed 's/^/boot-test:   /' /run/first.txt
client=$(cat /run/pw-client.pid)
grep -q "by pid $client (python3" /run/first.txt || fail "history does not name the client process (pid $client)"
grep -q " in pw-client.service: ephemeral port of an outgoing connection to 127.0.0.1:8080" /run/first.txt || fail "history does not name the client's unit"
echo "boot-test: \$ portwatch doctor"
# Only the tracepoint hooks probed: the port checks are what is tested, and
# probing every hook takes a minute under emulation.
PORTWATCH_HOOKS=tracepoint "$PW" doctor --color never >/run/doctor.txt 2>&1
grep -i -A1 "1433" /run/doctor.txt | sed 's/^/boot-test:   /'
grep -q "port 1433 (tcp, python3 (pid [0-9]*)) is inside the ephemeral range 1433-1433 and not reserved" /run/doctor.txt || fail "doctor does not flag 1433 inside the ephemeral range"
main=$(systemctl show -p MainPID --value portwatch-record.service)
echo "boot-test: the recorder (pid $main): $(grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/$main/status 2>/dev/null | tr '\t\n' ' ')"
echo "boot-test: $(systemd-analyze security portwatch-record.service 2>/dev/null | tail -1)"
echo "boot-test: recorder start: $(systemctl show -p ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic --value portwatch-record.service | tr '\n' ' ')"
systemctl --failed --no-legend --no-pager | sed 's/^/boot-test: failed unit: /'
echo "portwatch-vm: exit $rc"
sync
systemctl poweroff --force --force
"#,
        pw = super::guest::sh_quote(&portwatch.to_string_lossy())
    )
}

pub fn run_boot_guest(
    qemu: &Path,
    vm_dir: &Path,
    busybox: &Path,
    k: &Kernel,
    portwatch: &Path,
    opts: &Options,
) -> Result<Outcome> {
    for tool in ["/lib/systemd/systemd", "/usr/bin/python3"] {
        if !Path::new(tool).exists() {
            bail!("the boot test boots the host's {tool}, which is missing: `apt-get install systemd python3`");
        }
    }
    let run_dir = vm_dir.join("runs").join(format!("{}-boot", k.release));
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;
    let py = |body: &str| format!("{NOTIFY_PY}{body}");
    let mut cpio = base_initramfs(busybox, k)?;
    let units = "overlay/etc/systemd/system";
    for d in [
        "overlay",
        "overlay/etc",
        "overlay/etc/pw",
        "overlay/etc/sysctl.d",
        "overlay/etc/systemd",
        units,
        "overlay/etc/systemd/system/sysinit.target.wants",
    ] {
        cpio.dir(d);
    }
    cpio.file(
        "overlay/etc/sysctl.d/90-pw-boot.conf",
        0o644,
        b"# Only 1433 is ephemeral: the client's connection must take it.\nnet.ipv4.ip_local_port_range = 1433 1433\n",
    );
    for (name, body) in [
        ("upstream.py", py(UPSTREAM_PY)),
        ("client.py", py(CLIENT_PY)),
        ("database.py", DATABASE_PY.to_owned()),
        ("check.sh", check_sh(portwatch)),
    ] {
        cpio.file(&format!("overlay/etc/pw/{name}"), 0o755, body.as_bytes());
    }
    // The init copies this file to INSTALLED before systemd starts.
    cpio.file(
        "overlay/etc/pw/binary",
        0o644,
        portwatch.to_string_lossy().as_bytes(),
    );
    let recorder = recorder_unit(portwatch)?;
    cpio.file(
        &format!("{units}/portwatch-record.service"),
        0o644,
        recorder.as_bytes(),
    );
    cpio.symlink(
        &format!("{units}/sysinit.target.wants/portwatch-record.service"),
        "../portwatch-record.service",
    );
    // The one change to the unit: qemu's software emulation attaches some
    // fifty times slower than a real machine (about 30 s), too close to the
    // unit's own bound.
    cpio.dir(&format!("{units}/portwatch-record.service.d"));
    cpio.file(
        &format!("{units}/portwatch-record.service.d/emulated.conf"),
        0o644,
        b"[Service]\nTimeoutStartSec=5min\n",
    );
    // Masked: tmpfiles would walk (and clean) the host's /tmp and /var over
    // 9p under emulation for minutes, and nothing here needs it or a clock
    // from the network.
    for unit in [
        "systemd-tmpfiles-setup.service",
        "systemd-timesyncd.service",
    ] {
        cpio.symlink(&format!("{units}/{unit}"), "/dev/null");
    }
    let story = [
        (
            "pw-upstream.service",
            story_unit(
                "the service the client talks to",
                "",
                "/usr/bin/python3 /etc/pw/upstream.py",
            ) + "Type=notify\n",
        ),
        (
            "pw-client.service",
            story_unit(
                "a client connecting out at boot",
                "After=pw-upstream.service\nRequires=pw-upstream.service",
                "/usr/bin/python3 /etc/pw/client.py",
            ) + "Type=notify\n",
        ),
        (
            "pw-database.service",
            story_unit(
                "a database that wants port 1433",
                "After=pw-client.service",
                "/usr/bin/python3 /etc/pw/database.py",
            ) + "Restart=on-failure\nRestartSec=2s\n",
        ),
        (
            "pw-check.service",
            story_unit(
                "the boot test's checks",
                "After=pw-database.service",
                "/bin/bash /etc/pw/check.sh",
            ) + "Type=oneshot\n",
        ),
        (
            "pw-boot.target",
            "[Unit]\nDescription=the boot test\nRequires=basic.target\nAfter=basic.target\n\
             Wants=pw-upstream.service pw-client.service pw-database.service pw-check.service\n"
                .to_owned(),
        ),
    ];
    for (name, text) in &story {
        cpio.file(&format!("{units}/{name}"), 0o644, text.as_bytes());
    }
    let initramfs = run_dir.join("initramfs.cpio");
    fs::write(&initramfs, cpio.finish())?;
    let Booted {
        output,
        status,
        timed_out,
        wall,
    } = boot(&Boot {
        qemu,
        run_dir: &run_dir,
        kernel: k,
        initramfs: &initramfs,
        append:
            "console=ttyS0 quiet panic=-1 systemd.unit=pw-boot.target systemd.show_status=error",
        timeout: opts.timeout,
        prefix: format!("[{} boot] ", series_of(&k.release)),
    })?;
    let exit: Option<i32> = output
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("portwatch-vm: exit "))
        .and_then(|c| c.trim().parse().ok());
    let failures: Vec<&str> = output
        .iter()
        .filter_map(|l| l.strip_prefix("boot-test: FAIL: "))
        .collect();
    let failure = if timed_out {
        Some(format!(
            "guest killed after the {}s timeout; console: {}",
            opts.timeout.as_secs(),
            run_dir.join("console.log").display()
        ))
    } else if exit.is_none() {
        Some(format!(
            "the guest stopped without reporting (qemu {status}); console: {}",
            run_dir.join("console.log").display()
        ))
    } else if !failures.is_empty() {
        Some(failures.join("; "))
    } else if exit != Some(0) {
        Some(format!("checks exited {}", exit.unwrap_or(-1)))
    } else {
        None
    };
    Ok(Outcome {
        release: k.release.clone(),
        hooks: Hooks::Boot,
        attached: None,
        result: Some(if failure.is_none() {
            "ok. 1 passed; 0 failed".into()
        } else {
            "FAILED. 0 passed; 1 failed".into()
        }),
        exit,
        failure,
        wall,
        losses: None,
    })
}
