//! The HTTP stage's cost, in the identity phase (agents fed by the control plane, mutual TLS
//! between nodes): `nm-loadgen http` (keep-alive HTTP/1.1 GETs, one in flight per
//! connection) at concurrency 1 and 64 against `nm-loadgen http-server`, by five paths:
//!
//! | scenario | target | path |
//! |---|---|---|
//! | `http_direct` | `server:9111` (excluded) | veth, bridge, veth |
//! | `http_mesh` | `bench-http` VIP:80 → `server:9110` | node 1's HTTP stage (route, pick, pooled upstream) |
//! | `http_sidecar` | `server:9112` (excluded) | nftables REDIRECT to `nodemesh sidecar --http` in the client pod |
//! | `http_xnode_direct` | `server-2:9111` | across the nodes, no mesh |
//! | `http_xnode_mesh` | `bench-http-x` VIP:80 → `server-2:9110` | node 1's HTTP stage, HBONE to node 2 |
//!
//! Both Services have an HTTPRoute (a header rule before the catch-all), so every request
//! is matched against routes, as a canary's would be.

use std::{fmt::Write as _, net::IpAddr, path::Path, process::Command, time::Duration};

use anyhow::Context as _;
use nodemesh_testbed::{tools, wait_for};
use serde_json::{Value, json};

use super::{
    measure::Settings,
    report::interleaved,
    topology::{HTTP_DIRECT_PORT, HTTP_PORT, HTTP_SIDECAR_PORT, Topology},
};

/// `--only` name of this phase.
pub const SCENARIO: &str = "http";
pub const METRICS: [&str; 6] = ["c1_p50_us", "c1_p99_us", "c1_rps", "c64_p50_us", "c64_p99_us", "c64_rps"];

const OBJECTS: &str = "\
---
apiVersion: v1
kind: Service
metadata: {name: bench-http, namespace: mesh}
spec: {clusterIP: 10.96.0.110, selector: {bench-http: local}, ports: [{name: http, port: 80, targetPort: 9110, appProtocol: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: bench-http-x, namespace: mesh}
spec: {clusterIP: 10.96.0.111, selector: {bench-http: remote}, ports: [{name: http, port: 80, targetPort: 9110, appProtocol: http}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench-http, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: bench-http, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: 'yes'}]}]
    backendRefs: [{name: bench-http, port: 80}]
  - backendRefs: [{name: bench-http, port: 80, weight: 100}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench-http-x, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: bench-http-x, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: 'yes'}]}]
    backendRefs: [{name: bench-http-x, port: 80}]
  - backendRefs: [{name: bench-http-x, port: 80, weight: 100}]
";

/// The measurements, each `(name, address, port)`.
fn targets(topo: &Topology) -> [(&'static str, IpAddr, u16); 5] {
    let [local, remote] = topo.server_pods().map(|p| IpAddr::from(p.ipv4));
    let vip = |last: u8| IpAddr::from([10, 96, 0, last]);
    [
        ("http_direct", local, HTTP_DIRECT_PORT),
        ("http_mesh", vip(110), 80),
        ("http_sidecar", local, HTTP_SIDECAR_PORT),
        ("http_xnode_direct", remote, HTTP_DIRECT_PORT),
        ("http_xnode_mesh", vip(111), 80),
    ]
}

/// Starts the servers and the Services, then measures every scenario
/// `rounds` times; their medians.
pub fn run(topo: &Topology, settings: &Settings, rounds: usize, bin_dir: &Path) -> anyhow::Result<Value> {
    let loadgen = bin_dir.join("nm-loadgen");
    for pod in topo.server_pods() {
        for port in [HTTP_PORT, HTTP_DIRECT_PORT, HTTP_SIDECAR_PORT] {
            let mut cmd = Command::new(&loadgen);
            cmd.args(["http-server", "--port", &port.to_string(), "--name", &pod.name]);
            pod.spawn(cmd)?;
        }
        for port in [HTTP_PORT, HTTP_DIRECT_PORT, HTTP_SIDECAR_PORT] {
            tools::wait_listening(&pod.netns_path(), port)?;
        }
    }
    let cp = topo.control_plane.as_ref().context("identities are not on")?;
    cp.write("bench-http.yaml", OBJECTS)?;
    wait_for("the HTTP routes and endpoints on node 1", Duration::from_secs(15), || {
        let dump = topo.agent1.http_get("http://127.0.0.1:15000/config_dump").unwrap_or_default();
        dump.contains("mesh/bench-http.mesh.svc.cluster.local") && dump.contains("mesh/bench-http-x")
    })?;
    // The first requests through each path: the routes and endpoints are in place.
    for (name, host, port) in targets(topo) {
        let warm = load(topo, bin_dir, host, port, 1, 0.2).with_context(|| format!("warming {name}"))?;
        anyhow::ensure!(warm["errors"] == 0, "{name}: {warm}");
    }
    let scenarios: Vec<(&'static str, (IpAddr, u16))> =
        targets(topo).iter().map(|(n, host, port)| (*n, (*host, *port))).collect();
    interleaved(
        "http",
        rounds,
        &scenarios,
        &METRICS,
        |(host, port)| {
            let one = load(topo, bin_dir, host, port, 1, settings.seconds)?;
            let many = load(topo, bin_dir, host, port, 64, settings.seconds)?;
            Ok(json!({
                "c1_p50_us": one["p50_us"], "c1_p99_us": one["p99_us"], "c1_rps": one["rate"],
                "c64_p50_us": many["p50_us"], "c64_p99_us": many["p99_us"], "c64_rps": many["rate"],
            }))
        },
        |s| {
            format!(
                "{:.0}µs/{:.0}rps",
                s["c1_p50_us"].as_f64().unwrap_or(0.0),
                s["c64_rps"].as_f64().unwrap_or(0.0)
            )
        },
    )
}

/// One `nm-loadgen http` run from the client pod: its JSON.
fn load(
    topo: &Topology,
    bin_dir: &Path,
    host: IpAddr,
    port: u16,
    conns: usize,
    seconds: f64,
) -> anyhow::Result<Value> {
    let mut cmd = Command::new(bin_dir.join("nm-loadgen"));
    cmd.args([
        "http",
        "--target",
        &std::net::SocketAddr::new(host, port).to_string(),
        "--conns",
        &conns.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--threads",
        "2",
    ]);
    let out = topo.client.output(cmd)?;
    let result: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("nm-loadgen http printed {:?}", String::from_utf8_lossy(&out.stderr)))?;
    anyhow::ensure!(out.status.success(), "nm-loadgen http failed: {result}");
    Ok(result)
}

/// The goals the HTTP issue set, and the numbers behind them.
pub fn markdown(http: &Value) -> String {
    let get = |s: &str, m: &str| http[s][m].as_f64().unwrap_or(f64::NAN);
    let check = |ok: bool| if ok { "met" } else { "**not met**" };
    let mut md = String::from(
        "## HTTP\n\nKeep-alive HTTP/1.1 GETs (`nm-loadgen http`, one request in flight per connection) against \
         `nm-loadgen http-server`, at concurrency 1 and 64, client on node 1. The mesh scenarios go to a \
         Service's address with an HTTPRoute attached (a header rule, then a weighted catch-all), so every \
         request is routed, balanced and sent on a pooled connection; `http_xnode_mesh` rides HBONE (mutual TLS) \
         to node 2. `http_sidecar` is an HTTP-terminating sidecar in the client pod (`nodemesh sidecar --http`: \
         the same header handling and pooling, no route table), reached by an nftables REDIRECT.\n\n\
         | scenario | p50 (c=1) | p99 (c=1) | req/s (c=1) | p50 (c=64) | p99 (c=64) | req/s (c=64) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for name in ["http_direct", "http_mesh", "http_sidecar", "http_xnode_direct", "http_xnode_mesh"] {
        let _ = writeln!(
            md,
            "| `{name}` | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.0} µs | {:.0} |",
            get(name, "c1_p50_us"),
            get(name, "c1_p99_us"),
            get(name, "c1_rps"),
            get(name, "c64_p50_us"),
            get(name, "c64_p99_us"),
            get(name, "c64_rps"),
        );
    }
    let p50 = get("http_mesh", "c1_p50_us") / get("http_direct", "c1_p50_us");
    let rps = get("http_mesh", "c64_rps") / get("http_direct", "c64_rps");
    let x_p50 = get("http_xnode_mesh", "c1_p50_us") / get("http_xnode_direct", "c1_p50_us");
    let x_rps = get("http_xnode_mesh", "c64_rps") / get("http_xnode_direct", "c64_rps");
    let side_p50 = get("http_sidecar", "c1_p50_us") / get("http_direct", "c1_p50_us");
    let side_rps = get("http_sidecar", "c64_rps") / get("http_direct", "c64_rps");
    let _ = writeln!(
        md,
        "\n| goal | measured | |\n|---|---:|---|\n\
         | p50 at c=1 ≤ 1.5× direct | {p50:.2}× (across nodes, HBONE: {x_p50:.2}×) | {} |\n\
         | req/s at c=64 ≥ 0.6× direct | {rps:.2}× (across nodes, HBONE: {x_rps:.2}×) | {} |\n\
         | better than the sidecar on both | sidecar {side_p50:.2}× p50, {side_rps:.2}× req/s | {} |\n",
        check(p50 <= 1.5),
        check(rps >= 0.6),
        check(p50 < side_p50 && rps > side_rps),
    );
    md
}
