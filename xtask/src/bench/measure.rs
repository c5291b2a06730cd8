//! One scenario's measurements in one round, each a run of `nm-loadgen` in the client pod.

use std::{net::IpAddr, path::Path, process::Command};

use anyhow::{Context as _, bail};
use nodemesh_testbed::tools::CpuHogs;
use serde_json::{Value, json};

use super::topology::{Scenario, Topology};

/// Sizes and durations, all from flags (defaults in docs/bench.md).
#[derive(Clone, Debug)]
pub struct Settings {
    pub seconds: f64,
    pub rr_size: usize,
    pub rr_conns: usize,
    pub crr_size: usize,
    pub crr_conns: usize,
}

impl Settings {
    pub fn to_json(&self) -> Value {
        json!({
            "seconds_per_measurement": self.seconds,
            "rr_message_bytes": self.rr_size,
            "rr_concurrency": self.rr_conns,
            "crr_message_bytes": self.crr_size,
            "crr_concurrency": self.crr_conns,
        })
    }
}

/// Every metric of one scenario in one round (the keys of results.json).
pub const METRICS: [&str; 12] = [
    "rr1_p50_us",
    "rr1_p99_us",
    "rr1_rps",
    "rr1_spin_p50_us",
    "rr1_spin_p99_us",
    "rr64_rps",
    "rr64_p50_us",
    "rr64_p99_us",
    "tput_gbps",
    "crr_cps",
    "agent_rss_kib",
    "agent_cpu_s",
];

pub fn run(
    topo: &Topology,
    scenario: &Scenario,
    settings: &Settings,
    bin_dir: &Path,
) -> anyhow::Result<Value> {
    topo.prepare(scenario)?;
    let loadgen = bin_dir.join("nm-loadgen");
    let pids = topo.proxy_pids(scenario.proxies);
    let cpu_before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<anyhow::Result<f64>>()?;
    let target = target(scenario.server, scenario.port);
    let secs = settings.seconds.to_string();
    let (rr_size, crr_size) = (settings.rr_size.to_string(), settings.crr_size.to_string());
    let (rr_conns, crr_conns) = (settings.rr_conns.to_string(), settings.crr_conns.to_string());

    let rr1 = load(
        topo,
        scenario,
        &loadgen,
        &["rr", "--target", &target, "--size", &rr_size, "--conns", "1", "--seconds", &secs],
    )?;
    let rr1_spin = {
        let _spinners = CpuHogs::start_idle()?;
        load(
            topo,
            scenario,
            &loadgen,
            &["rr", "--target", &target, "--size", &rr_size, "--conns", "1", "--seconds", &secs],
        )?
    };
    let rr64 = load(
        topo,
        scenario,
        &loadgen,
        &["rr", "--target", &target, "--size", &rr_size, "--conns", &rr_conns, "--seconds", &secs],
    )?;
    let tput = load(topo, scenario, &loadgen, &["stream", "--target", &target, "--seconds", &secs])?;
    let crr = load(
        topo,
        scenario,
        &loadgen,
        &["crr", "--target", &target, "--size", &crr_size, "--conns", &crr_conns, "--seconds", &secs],
    )?;

    let cpu_after: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<anyhow::Result<f64>>()?;
    let rss: u64 = pids.iter().map(|&p| rss_kib(p)).sum::<anyhow::Result<u64>>()?;
    Ok(json!({
        "rr1_p50_us": rr1["p50_us"],
        "rr1_p99_us": rr1["p99_us"],
        "rr1_rps": rr1["rate"],
        "rr1_spin_p50_us": rr1_spin["p50_us"],
        "rr1_spin_p99_us": rr1_spin["p99_us"],
        "rr64_rps": rr64["rate"],
        "rr64_p50_us": rr64["p50_us"],
        "rr64_p99_us": rr64["p99_us"],
        "tput_gbps": tput["gbps"],
        "crr_cps": crr["rate"],
        "agent_rss_kib": rss,
        "agent_cpu_s": ((cpu_after - cpu_before) * 100.0).round() / 100.0,
    }))
}

fn target(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn load(topo: &Topology, scenario: &Scenario, loadgen: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let mut cmd = Command::new(loadgen);
    cmd.args(args);
    let out = topo.client.output(cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{}: nm-loadgen {} failed: {}",
            scenario.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_str(stdout.trim()).with_context(|| format!("nm-loadgen printed {stdout:?}"))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("VmRSS of {pid}"))
}
