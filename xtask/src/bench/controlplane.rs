//! The control-plane benchmark: the reference control plane (a real `nodemesh controlplane`
//! process) serving a large mesh to many simulated agents (`nm-xds-load`, one process of
//! delta ADS streams) and to one real agent on a fake node.
//!
//! Measured: the time until every simulated agent holds the full state, the control plane's
//! memory, the propagation of single changes to every agent, and how much the real agent's
//! memory grows for that state.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nodemesh_testbed::{AgentOptions, Cluster, enter_netns};
use serde_json::{Value, json};

use super::measure::rss_kib;

/// What results.json's "controlplane" object holds (all numbers).
pub const METRICS: &[&str] = &[
    "agents",
    "workloads",
    "services",
    "resources_per_agent",
    "full_sync_s",
    "agent_sync_p50_s",
    "propagation_p50_ms",
    "propagation_p99_ms",
    "propagation_max_ms",
    "changes",
    "cp_rss_kib",
    "cp_peak_rss_kib",
    "real_agent_sync_s",
    "agent_rss_before_kib",
    "agent_rss_after_kib",
    "agent_rss_growth_kib",
];

const SETTLE: Duration = Duration::from_secs(3);

pub struct Scale {
    pub workloads: usize,
    pub services: usize,
    pub namespaces: usize,
    pub nodes: usize,
    pub agents: usize,
    pub changes: usize,
}

impl Scale {
    pub const FULL: Self =
        Self { workloads: 10_000, services: 1_000, namespaces: 10, nodes: 100, agents: 100, changes: 20 };
    /// Checks the harness only.
    pub const QUICK: Self =
        Self { workloads: 1_000, services: 100, namespaces: 5, nodes: 10, agents: 10, changes: 3 };
}

pub fn run(bin_dir: &Path, scale: &Scale) -> anyhow::Result<Value> {
    let load = bin_dir.join("nm-xds-load");
    let cluster = Cluster::new("cpbench")?;
    let node = cluster.add_node("node1", 1)?;
    let mut cp = cluster.add_control_plane()?;
    cp.binary = bin_dir.join("nodemesh");
    let status = Command::new(&load)
        .arg("generate")
        .arg("--dir")
        .arg(&cp.config_dir)
        .args(["--workloads", &scale.workloads.to_string(), "--services", &scale.services.to_string()])
        .args(["--namespaces", &scale.namespaces.to_string(), "--nodes", &scale.nodes.to_string()])
        .status()
        .context("nm-xds-load generate")?;
    anyhow::ensure!(status.success(), "nm-xds-load generate failed");
    let resources = scale.workloads + scale.services;

    // The real agent starts first, with the control plane not yet up: its memory then is the
    // baseline the state's cost is measured against.
    let options = AgentOptions {
        binary: Some(bin_dir.join("nodemesh")),
        xds_address: Some(cp.xds_address()),
        log: "warn".into(),
        ..Default::default()
    };
    let agent = node.start_agent(&options)?;
    // Both readings wait for the agent to settle: what it freed after loading its programs
    // (or after applying the state) goes back to the kernel within a second.
    std::thread::sleep(SETTLE);
    let agent_before = rss_kib(agent.pid())?;

    cp.start()?;
    let cp_pid = cp.pid().context("control plane pid")?;
    let out = cluster.work_dir().join("xds-load.json");
    let mut cmd = enter_netns(Command::new(&load), &cp.netns_path())?;
    cmd.args(["run", "--server", "http://127.0.0.1:15010"])
        .args(["--agents", &scale.agents.to_string(), "--expect", &resources.to_string()])
        .args(["--changes", &scale.changes.to_string(), "--cp-pid", &cp_pid.to_string()])
        .arg("--dir")
        .arg(&cp.config_dir)
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut simulated = cmd.spawn().context("nm-xds-load run")?;

    // Meanwhile the real agent takes the same state (plus the changes, as they come).
    // (Checked every 100 ms, not tighter: each check is a CLI process on the same two vCPUs.)
    let agent_sync_s = loop {
        let held = agent.status().map_or(0, |s| s["sync"]["counts"]["addresses"].as_u64().unwrap_or(0));
        if held >= resources as u64 {
            break started.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the real agent holds {held} of {resources} addresses after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let exit = simulated.wait()?;
    anyhow::ensure!(exit.success(), "nm-xds-load run failed");
    // Settled: the last changes applied and persisted.
    std::thread::sleep(SETTLE);
    let agent_after = rss_kib(agent.pid())?;
    let text = std::fs::read_to_string(&out)?;
    let mut result: Value = serde_json::from_str(text.trim()).context("nm-xds-load output")?;
    let extra = json!({
        "workloads": scale.workloads,
        "services": scale.services,
        "real_agent_sync_s": (agent_sync_s * 1000.0).round() / 1000.0,
        "agent_rss_before_kib": agent_before,
        "agent_rss_after_kib": agent_after,
        "agent_rss_growth_kib": agent_after.saturating_sub(agent_before),
    });
    if let (Some(r), Some(e)) = (result.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    Ok(result)
}

/// The control-plane section of docs/bench.md.
pub fn markdown(r: &Value) -> String {
    let v = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mib = |k: &str| v(k) / 1024.0;
    let check = |ok: bool| if ok { "met" } else { "**not met**" };
    let mut md = format!(
        "## Control plane\n\n{} workloads and {} services in {} simulated agents' view \
         ({} Address resources each), plus one real agent on a fake node.\n\n\
         | target | measured | |\n|---|---:|---|\n",
        v("workloads"),
        v("services"),
        v("agents"),
        v("resources_per_agent"),
    );
    let rows = [
        ("full sync of every agent < 5 s", format!("{:.2} s", v("full_sync_s")), v("full_sync_s") < 5.0),
        (
            "propagation of one change to every agent, p99 < 100 ms",
            format!("{:.1} ms (p50 {:.1} ms)", v("propagation_p99_ms"), v("propagation_p50_ms")),
            v("propagation_p99_ms") < 100.0,
        ),
        (
            "one real agent's RSS growth for that state < 30 MiB",
            format!("{:.1} MiB", mib("agent_rss_growth_kib")),
            mib("agent_rss_growth_kib") < 30.0,
        ),
    ];
    for (target, measured, ok) in rows {
        md.push_str(&format!("| {target} | {measured} | {} |\n", check(ok)));
    }
    md.push_str(&format!(
        "\n| measure | value |\n|---|---:|\n\
         | time until every simulated agent holds the full state | {:.2} s (median agent {:.2} s) |\n\
         | time until the real agent holds it (while the simulated ones sync too) | {:.2} s |\n\
         | propagation p50 / p99 / max ({} changes × {} agents) | {:.1} / {:.1} / {:.1} ms |\n\
         | control plane RSS after the full sync / peak | {:.1} / {:.1} MiB |\n\
         | real agent RSS before / after / growth | {:.1} / {:.1} / {:.1} MiB |\n\
         | bytes of resources received by the simulated agents | {:.0} MB |\n\n",
        v("full_sync_s"),
        v("agent_sync_p50_s"),
        v("real_agent_sync_s"),
        v("changes"),
        v("agents"),
        v("propagation_p50_ms"),
        v("propagation_p99_ms"),
        v("propagation_max_ms"),
        mib("cp_rss_kib"),
        mib("cp_peak_rss_kib"),
        mib("agent_rss_before_kib"),
        mib("agent_rss_after_kib"),
        mib("agent_rss_growth_kib"),
        v("bytes_received") / 1e6,
    ));
    md
}

pub const METHOD: &str = r#"
### Control plane

`nm-xds-load generate` (`xdsload/`) writes the mesh into the control plane's input directory
as Kubernetes YAML: 10 namespaces, all intercepted, each with one file of pods and one of
services; pods spread over 100 node names and round-robin over their namespace's services.
Then a real `nodemesh controlplane` (release build) starts in its own network namespace, and:

- **full sync**: `nm-xds-load run` opens 100 delta ADS streams at once over loopback (one
  tokio process, one HTTP/2 connection per agent, each subscribing as its own node to
  Address and Authorization, ACKing every response) and reports when the last of them holds
  every Address resource. It counts names, not decoded messages, so the figure is the control
  plane's.
- **propagation**: 20 times, one new pod is written to the directory (atomically, as a
  controller would) and the time from the rename to each agent's receipt of that workload is
  taken: 2,000 samples, from inotify through the rebuild to the last stream.
- **control plane RSS**: VmRSS of the process after the full sync, and VmHWM (peak).
- **agent RSS**: one real `nodemesh agent` on a fake node is started first, pointed at the
  control plane before it runs; its VmRSS then is the baseline. It syncs the same state over
  the fabric alongside the simulated agents; the growth is its VmRSS three seconds after all
  changes, minus the baseline (also taken three seconds after start). The agent's allocator
  returns freed pages within a second, so both readings are of settled memory.

Both the control plane and the 100 simulated agents share the same two vCPUs.
"#;
