//! Service routing's cost and its balancer under a slow endpoint, in the identity phase
//! (agents fed by the control plane, mutual TLS between nodes). Three endpoints on node 2
//! (`server-2`, `server-3`, `server-4`, label `app: bench`) behind four Services:
//!
//! | scenario | target | balancer |
//! |---|---|---|
//! | `service` | VIP → 9100 on the three | P2C (the default) |
//! | `service_rr` | VIP → 9100 on the three | round robin (a DestinationRule) |
//! | `service_slow_endpoint` | VIP → 9106, where `server-4` answers 5 ms late | P2C |
//! | `service_slow_endpoint_rr` | the same | round robin |
//!
//! beside `service_pod` (the mesh to `server-2`'s own address), `service_one` (a Service
//! whose one endpoint is `server-2`: the same path, plus the service stage) and
//! `service_direct` (direct to `server-2`, no mesh). Each is a run of `nm-loadgen crr` (a new connection per
//! request: each request is balanced), interleaved round by round.

use std::{fmt::Write as _, net::IpAddr, path::Path, process::Command, time::Duration};

use anyhow::Context as _;
use nodemesh_testbed::wait_for;
use serde_json::{Value, json};

use super::{
    measure::Settings,
    report::interleaved,
    topology::{DIRECT_PORT, MESH_PORT, Topology},
};

/// `--only` names that run this phase.
pub const SCENARIOS: [&str; 2] = ["service", "service_slow_endpoint"];
/// The metrics of each scenario.
pub const METRICS: [&str; 3] = ["crr_p50_us", "crr_p99_us", "crr_cps"];

const SERVICES: &str = "\
---
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: mesh}
spec: {clusterIP: 10.96.0.100, selector: {app: bench}, ports: [{name: tcp, port: 80, targetPort: 9100}]}
---
apiVersion: v1
kind: Service
metadata: {name: bench-rr, namespace: mesh}
spec: {clusterIP: 10.96.0.101, selector: {app: bench}, ports: [{name: tcp, port: 80, targetPort: 9100}]}
---
apiVersion: v1
kind: Service
metadata: {name: bench-slow, namespace: mesh}
spec: {clusterIP: 10.96.0.102, selector: {app: bench}, ports: [{name: tcp, port: 80, targetPort: 9106}]}
---
apiVersion: v1
kind: Service
metadata: {name: bench-slow-rr, namespace: mesh}
spec: {clusterIP: 10.96.0.103, selector: {app: bench}, ports: [{name: tcp, port: 80, targetPort: 9106}]}
---
apiVersion: v1
kind: Service
metadata: {name: bench-one, namespace: mesh}
spec: {clusterIP: 10.96.0.104, selector: {app: bench, bench-one: \"yes\"}, ports: [{name: tcp, port: 80, targetPort: 9100}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench-rr, namespace: mesh}
spec: {host: bench-rr, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench-slow-rr, namespace: mesh}
spec: {host: bench-slow-rr, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
";

/// The measurements, each `(name, address, port)`.
fn targets(topo: &Topology) -> [(&'static str, IpAddr, u16); 7] {
    let vip = |last: u8| IpAddr::from([10, 96, 0, last]);
    let server2 = topo.remote_server();
    [
        ("service_direct", server2, DIRECT_PORT),
        ("service_pod", server2, MESH_PORT),
        ("service_one", vip(104), 80),
        ("service", vip(100), 80),
        ("service_rr", vip(101), 80),
        ("service_slow_endpoint", vip(102), 80),
        ("service_slow_endpoint_rr", vip(103), 80),
    ]
}

/// Publishes the Services and measures every scenario, `rounds` times; their medians.
pub fn run(topo: &Topology, settings: &Settings, rounds: usize, bin_dir: &Path) -> anyhow::Result<Value> {
    let cp = topo.control_plane.as_ref().context("identities are not on")?;
    cp.write("bench-services.yaml", SERVICES)?;
    wait_for("the bench services on node 1", Duration::from_secs(15), || {
        let dump = topo.agent1.http_get("http://127.0.0.1:15000/config_dump").unwrap_or_default();
        ["bench-rr", "bench-slow-rr"]
            .iter()
            .all(|s| dump.contains(&format!("mesh/{s}.mesh.svc.cluster.local")))
            && dump.matches("\"Kubernetes//Pod/mesh/server-").count() >= 3
    })?;
    let scenarios: Vec<(&'static str, (IpAddr, u16))> =
        targets(topo).iter().map(|(n, host, port)| (*n, (*host, *port))).collect();
    let mut out = interleaved(
        "services",
        rounds,
        &scenarios,
        &METRICS,
        |(host, port)| crr(topo, bin_dir, settings, host, port),
        |s| {
            format!(
                "{:.0}/{:.0}µs",
                s["crr_p50_us"].as_f64().unwrap_or(0.0),
                s["crr_p99_us"].as_f64().unwrap_or(0.0)
            )
        },
    )?;
    // Where the slow service's connections went, by the balancer's own counts.
    let status = topo.agent1.status()?;
    for service in ["bench-slow", "bench-slow-rr"] {
        let host = format!("mesh/{service}.mesh.svc.cluster.local");
        let state =
            status["services"].as_array().and_then(|s| s.iter().find(|s| s["service"] == host.as_str()));
        let picks = |pod: &str| -> u64 {
            state
                .and_then(|s| s["endpoints"].as_array())
                .and_then(|e| e.iter().find(|e| e["pod"] == pod))
                .and_then(|e| e["picks"].as_u64())
                .unwrap_or(0)
        };
        let total: u64 = ["mesh/server-2", "mesh/server-3", "mesh/server-4"].iter().map(|p| picks(p)).sum();
        let key = if service == "bench-slow" { "service_slow_endpoint" } else { "service_slow_endpoint_rr" };
        out[key]["slow_share"] =
            json!(((picks("mesh/server-4") as f64 / total.max(1) as f64) * 1000.0).round() / 1000.0);
    }
    Ok(out)
}

fn crr(
    topo: &Topology,
    bin_dir: &Path,
    settings: &Settings,
    host: IpAddr,
    port: u16,
) -> anyhow::Result<Value> {
    let mut cmd = Command::new(bin_dir.join("nm-loadgen"));
    cmd.args([
        "crr",
        "--target",
        &std::net::SocketAddr::new(host, port).to_string(),
        "--size",
        &settings.crr_size.to_string(),
        "--conns",
        &settings.crr_conns.to_string(),
        "--seconds",
        &settings.seconds.to_string(),
    ]);
    let out = topo.client.output(cmd)?;
    let result: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("nm-loadgen crr printed {:?}", String::from_utf8_lossy(&out.stderr)))?;
    anyhow::ensure!(out.status.success(), "nm-loadgen crr failed: {result}");
    Ok(json!({
        "crr_p50_us": result["p50_us"],
        "crr_p99_us": result["p99_us"],
        "crr_cps": result["rate"],
    }))
}

/// The goals the routing issue set, and the numbers behind them.
pub fn markdown(services: &Value) -> String {
    let get = |s: &str, m: &str| services[s][m].as_f64().unwrap_or(f64::NAN);
    let check = |ok: bool| if ok { "met" } else { "**not met**" };
    let mut md = String::from(
        "## Service routing\n\nA new connection per request (`nm-loadgen crr`, 64-byte request and response), so \
         every request is balanced; three endpoints on node 2, the client on node 1, mutual TLS between the \
         agents. `service_pod` is the same mesh path to one endpoint's own address; `service_direct` the \
         direct path to it. In `service_slow_endpoint*` one of the three answers 5 ms late.\n\n\
         | scenario | p50 | p99 | connections/s | p50 vs direct | slow endpoint's share |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for name in [
        "service_direct",
        "service_pod",
        "service_one",
        "service",
        "service_rr",
        "service_slow_endpoint",
        "service_slow_endpoint_rr",
    ] {
        let share =
            services[name]["slow_share"].as_f64().map_or("".into(), |s| format!("{:.0} %", s * 100.0));
        let _ = writeln!(
            md,
            "| `{name}` | {:.0} µs | {:.0} µs | {:.0} | {:.2}× | {share} |",
            get(name, "crr_p50_us"),
            get(name, "crr_p99_us"),
            get(name, "crr_cps"),
            get(name, "crr_p50_us") / get("service_direct", "crr_p50_us"),
        );
    }
    let cost = get("service", "crr_p50_us") / get("service_pod", "crr_p50_us");
    let stage = get("service_one", "crr_p50_us") / get("service_pod", "crr_p50_us");
    let slow = get("service_slow_endpoint", "crr_p99_us") / get("service", "crr_p99_us");
    let slow_rr = get("service_slow_endpoint_rr", "crr_p99_us") / get("service_rr", "crr_p99_us");
    let _ = writeln!(
        md,
        "\n| goal | measured | |\n|---|---:|---|\n\
         | the service path's p50 ≤ 1.05× the pod-address mesh path's | {cost:.2}× (one endpoint: {stage:.2}×) | {} |\n\
         | with one slow endpoint, P2C's p99 ≤ 1.5× the all-fast case | {slow:.2}× (round robin: {slow_rr:.2}×) | {} |\n",
        check(cost <= 1.05),
        check(slow <= 1.5),
    );
    md
}
