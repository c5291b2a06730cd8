//! One scenario's measurements in one round, each a run of `nm-loadgen` in the client pod.

use std::{net::IpAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use nodemesh_testbed::tools::CpuHogs;
use serde_json::{Value, json};

use super::topology::{ASYNC_OFFSET, Scenario, Topology};

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
pub const METRICS: [&str; 16] = [
    "rr1_p50_us",
    "rr1_p99_us",
    "rr1_rps",
    "rr1_spin_p50_us",
    "rr1_spin_p99_us",
    "rr64_rps",
    "rr64_p50_us",
    "rr64_p99_us",
    "rr64_cpu_us",
    "rr64_threads_rps",
    "tput_gbps",
    "tput_cpu_s_per_gb",
    "crr_cps",
    "agent_rss_kib",
    "agent_cpu_s",
    "background_cpus",
];

pub fn run(
    topo: &Topology,
    scenario: &Scenario,
    settings: &Settings,
    bin_dir: &Path,
) -> anyhow::Result<Value> {
    topo.prepare(scenario)?;
    // What the rest of the machine is doing, with nothing of ours running.
    let background = busy_cpus(Duration::from_secs(1))?;
    let loadgen = bin_dir.join("nm-loadgen");
    let pids = topo.proxy_pids(scenario.proxies);
    let cpu_before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<anyhow::Result<f64>>()?;
    let event_target = target(scenario.server, scenario.port + ASYNC_OFFSET);
    let target = target(scenario.server, scenario.port);
    let secs = settings.seconds.to_string();
    let (rr_size, crr_size) = (settings.rr_size.to_string(), settings.crr_size.to_string());
    let (rr_conns, crr_conns) = (settings.rr_conns.to_string(), settings.crr_conns.to_string());

    let rr1_args = ["rr", "--target", &target, "--size", &rr_size, "--conns", "1", "--seconds", &secs];
    let rr1 = load(topo, scenario, &loadgen, &rr1_args)?;
    let rr1_spin = {
        let _spinners = CpuHogs::start_idle()?;
        load(topo, scenario, &loadgen, &rr1_args)?
    };
    // Concurrency 64 as event-driven apps make it (client and server on tokio), with the CPU
    // the whole path spent per request; then as one blocking thread per connection makes it.
    let path_before = path_cpu_seconds(topo, scenario)?;
    let rr64 = load(
        topo,
        scenario,
        &loadgen,
        &[
            "rr",
            "--async",
            "--target",
            &event_target,
            "--size",
            &rr_size,
            "--conns",
            &rr_conns,
            "--seconds",
            &secs,
        ],
    )?;
    let path_cpu = path_cpu_seconds(topo, scenario)? - path_before;
    let rr64_threads = load(
        topo,
        scenario,
        &loadgen,
        &["rr", "--target", &target, "--size", &rr_size, "--conns", &rr_conns, "--seconds", &secs],
    )?;
    let tput_cpu_before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<anyhow::Result<f64>>()?;
    let tput = load(topo, scenario, &loadgen, &["stream", "--target", &target, "--seconds", &secs])?;
    let tput_cpu: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<anyhow::Result<f64>>()? - tput_cpu_before;
    let tput_gb = tput["gbps"].as_f64().unwrap_or(0.0) * settings.seconds / 8.0;
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
        "rr64_cpu_us": (path_cpu * 1e6 / rr64["count"].as_f64().unwrap_or(0.0).max(1.0) * 10.0).round() / 10.0,
        "rr64_threads_rps": rr64_threads["rate"],
        "background_cpus": (background * 100.0).round() / 100.0,
        "tput_gbps": tput["gbps"],
        // The proxies' CPU seconds per gigabyte moved by the throughput test.
        "tput_cpu_s_per_gb": if tput_gb > 0.0 { (tput_cpu / tput_gb * 1000.0).round() / 1000.0 } else { 0.0 },
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

/// CPU time / wall time: how many of the machine's CPUs were busy over `window` (from
/// /proc/stat: all but idle and iowait).
pub fn busy_cpus(window: Duration) -> anyhow::Result<f64> {
    fn sample() -> anyhow::Result<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("/proc/stat is empty")?;
        let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
        anyhow::ensure!(ticks.len() >= 5, "/proc/stat: {line}");
        let idle = ticks[3] + ticks[4];
        Ok((ticks.iter().sum::<u64>() - idle, idle))
    }
    let (busy0, idle0) = sample()?;
    std::thread::sleep(window);
    let (busy1, idle1) = sample()?;
    let (busy, idle) = ((busy1 - busy0) as f64, (idle1 - idle0) as f64);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    Ok(if busy + idle > 0.0 { cpus * busy / (busy + idle) } else { 0.0 })
}

/// CPU seconds used so far by everything that carries the scenario's load: the client pod
/// and the scenario's server pod (their cgroups: every process of theirs, with the softirq
/// work done in their syscalls), the scenario's proxies, and the kernel's worker threads
/// (where the splice's psock work runs, and softirqs deferred under load).
fn path_cpu_seconds(topo: &Topology, scenario: &Scenario) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for dir in [&topo.client.cgroup_dir, topo.server_cgroup(scenario.server)] {
        let stat = std::fs::read_to_string(dir.join("cpu.stat"))?;
        let usec: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("usage_usec in {}", dir.display()))?;
        total += usec as f64 / 1e6;
    }
    for pid in topo.proxy_pids(scenario.proxies) {
        total += cpu_seconds(pid)?;
    }
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("kworker") || comm.starts_with("ksoftirqd") {
            // A worker may exit between the listing and the read.
            total += cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    Ok(total)
}
