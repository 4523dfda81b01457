//! In-kernel cost per BPF program, from the kernel's run-time statistics.

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{Context as _, Result};

use super::{tracer::Tracer, Env, Mode};
use crate::util;

/// One BPF program's run-time statistics.
#[derive(Clone, Debug)]
pub struct ProgCost {
    pub tracer: Mode,
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Programs a process holds open, from /proc/PID/fdinfo: (id, runs, ns).
fn bpf_progs_of(pid: u32) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(cnt), Some(ns)) =
            (field("prog_id:"), field("run_cnt:"), field("run_time_ns:"))
        {
            if !out.iter().any(|(i, _, _)| *i == id) {
                out.push((id, cnt, ns));
            }
        }
    }
    out
}

/// Program names by id, from `bpftool prog show -j` when bpftool is there.
fn prog_names() -> BTreeMap<u64, String> {
    let Some(bpftool) = util::which("bpftool") else {
        return BTreeMap::new();
    };
    let Ok(json) = util::output(Command::new(bpftool).args(["prog", "show", "-j"])) else {
        return BTreeMap::new();
    };
    let Ok(serde_json::Value::Array(progs)) = serde_json::from_str(&json) else {
        return BTreeMap::new();
    };
    progs
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .collect()
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Runs one client-closes churn per tracer with kernel.bpf_stats_enabled=1
/// and reads each program's run_time_ns / run_cnt while it is attached.
pub fn kernel_costs(env: &Env, modes: &[Mode]) -> Result<Vec<ProgCost>> {
    let before = fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    fs::write(BPF_STATS, "1").context("cannot enable kernel.bpf_stats_enabled")?;
    let result = (|| {
        let mut costs = Vec::new();
        for &mode in modes.iter().filter(|m| **m != Mode::None) {
            let tracer = Tracer::start(env, mode, "kcost")?.context("tracer")?;
            let load = util::output(
                env.netns
                    .cmd(&env.pwload)
                    .args(["churn", "--closer", "client"])
                    .args(["--threads", &env.args.threads.to_string()])
                    .args(["--seconds", &env.args.seconds.to_string()]),
            );
            let progs = bpf_progs_of(tracer.pid());
            let names = prog_names();
            tracer.stop()?;
            load?;
            for (id, run_cnt, run_time_ns) in progs {
                costs.push(ProgCost {
                    tracer: mode,
                    name: names.get(&id).cloned().unwrap_or(format!("prog {id}")),
                    run_cnt,
                    run_time_ns,
                });
            }
        }
        Ok(costs)
    })();
    let _ = fs::write(BPF_STATS, before.trim());
    result
}
