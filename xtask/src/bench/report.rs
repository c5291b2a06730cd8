//! Medians over rounds, `target/bench/results.json`, `docs/bench.md` and `docs/bench.svg`.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde_json::{Map, Value, json};

use super::measure::METRICS;

/// Scenario → per-round samples.
pub type Raw = BTreeMap<String, Vec<Value>>;

/// Measures each of `scenarios` (name, target) `rounds` times, the order rotated each round
/// so that none always runs first, printing a line per round with `summary` of each sample;
/// the median of each of `metrics` per scenario, by name.
pub fn interleaved<T: Copy>(
    phase: &str,
    rounds: usize,
    scenarios: &[(&'static str, T)],
    metrics: &[&str],
    mut measure: impl FnMut(T) -> anyhow::Result<Value>,
    summary: impl Fn(&Value) -> String,
) -> anyhow::Result<Value> {
    use anyhow::Context as _;
    let mut samples: Vec<(&str, Vec<Value>)> = scenarios.iter().map(|(n, _)| (*n, Vec::new())).collect();
    for round in 0..rounds {
        let mut line = format!("{phase} round {}/{rounds}:", round + 1);
        for i in 0..scenarios.len() {
            let (name, target) = scenarios[(i + round) % scenarios.len()];
            let sample = measure(target).with_context(|| format!("scenario {name}"))?;
            let _ = write!(line, " {name} {};", summary(&sample));
            if let Some((_, list)) = samples.iter_mut().find(|(n, _)| *n == name) {
                list.push(sample);
            }
        }
        println!("{line}");
    }
    let mut out = serde_json::json!({});
    for (name, list) in &samples {
        let mut scenario = serde_json::json!({});
        for metric in metrics {
            let mut values: Vec<f64> = list.iter().filter_map(|s| s[*metric].as_f64()).collect();
            scenario[*metric] = serde_json::json!((median(&mut values) * 10.0).round() / 10.0);
        }
        out[*name] = scenario;
    }
    Ok(out)
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The results document (schema in docs/bench.md).
pub fn results(raw: &Raw, order: &[&str], rounds: usize, machine: &str, settings: Value) -> Value {
    let mut scenarios = Map::new();
    for name in order {
        let samples = &raw[*name];
        let mut medians = Map::new();
        for metric in METRICS {
            let mut values: Vec<f64> = samples.iter().filter_map(|s| s[metric].as_f64()).collect();
            medians.insert(metric.into(), json!((median(&mut values) * 1000.0).round() / 1000.0));
        }
        scenarios.insert((*name).into(), Value::Object(medians));
    }
    json!({
        "scenarios": scenarios,
        "rounds": rounds,
        "machine": machine,
        "settings": settings,
        "raw": raw,
    })
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 20);
    format!("{cpus} vCPU {cpu}, {mem_gib} GiB, Linux {}", kernel.trim())
}

/// (metric, label, higher is better)
const TABLE: [(&str, &str, bool); 11] = [
    ("rr1_p50_us", "rr1 p50", false),
    ("rr1_p99_us", "rr1 p99", false),
    ("rr1_spin_p50_us", "rr1 p50 (awake)", false),
    ("rr1_spin_p99_us", "rr1 p99 (awake)", false),
    ("rr64_rps", "rr64 rps", true),
    ("rr64_p99_us", "rr64 p99", false),
    ("rr64_cpu_us", "rr64 CPU/req", false),
    ("rr64_threads_rps", "rr64 rps (threads)", true),
    ("tput_gbps", "throughput", true),
    ("crr_cps", "conn/s", true),
    ("agent_cpu_s", "proxy CPU s", false),
];

fn baseline(name: &str) -> &'static str {
    if name.starts_with("xnode") { "xnode_direct" } else { "direct" }
}

fn get(results: &Value, scenario: &str, metric: &str) -> f64 {
    results["scenarios"][scenario][metric].as_f64().unwrap_or(0.0)
}

fn ratio(results: &Value, scenario: &str, metric: &str) -> Option<f64> {
    let base = get(results, baseline(scenario), metric);
    (base > 0.0).then(|| get(results, scenario, metric) / base)
}

/// Writes docs/bench.md and docs/bench.svg from the results.
pub fn write_docs(results: &Value, order: &[&str], docs: &Path, date: &str) -> anyhow::Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench` on {date}; every number below is from that one run \
         (`target/bench/results.json`). Machine: {}. Medians of {} rounds. Other work on the \
         machine before each measurement: {}.\n",
        results["machine"].as_str().unwrap_or(""),
        results["rounds"],
        background(results)
    );
    let _ = writeln!(md, "![latency and throughput per scenario](bench.svg)\n");
    md.push_str(&ratio_table(results, order));
    md.push_str(&targets(results));
    if !results["mtls"].is_null() {
        md.push_str(&super::mtls::markdown(results));
    }
    if !results["services"].is_null() {
        md.push_str(&super::services::markdown(&results["services"]));
    }
    if !results["http"].is_null() {
        md.push_str(&super::http::markdown(&results["http"]));
    }
    md.push_str(&absolute_table(results, order));
    if !results["controlplane"].is_null() {
        md.push_str(&super::controlplane::markdown(&results["controlplane"]));
    }
    if !results["splice_stress"].is_null() {
        md.push_str(&super::stress::markdown(&results["splice_stress"]));
    }
    md.push_str(METHOD);
    md.push_str(super::controlplane::METHOD);
    std::fs::write(docs.join("bench.md"), md)?;
    std::fs::write(docs.join("bench.svg"), svg(results, order))?;
    Ok(())
}

/// The median and the largest of the background probes, over every scenario and round.
fn background(results: &Value) -> String {
    let mut all: Vec<f64> = results["raw"]
        .as_object()
        .map(|raw| {
            raw.values()
                .filter_map(Value::as_array)
                .flatten()
                .filter_map(|s| s["background_cpus"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    let max = all.iter().copied().fold(0.0, f64::max);
    format!("{:.2} CPUs busy (median; at most {max:.2})", median(&mut all))
}

fn ratio_table(results: &Value, order: &[&str]) -> String {
    let mut md = String::from(
        "## Ratios against the direct path\n\nSame-node scenarios against `direct`, cross-node ones against \
         `xnode_direct`, measured in the same run. Latency and CPU: lower is better; rates: higher is better.\n\n",
    );
    let _ = write!(md, "| scenario |");
    for (_, label, _) in TABLE {
        let _ = write!(md, " {label} |");
    }
    let _ = write!(md, "\n|---|");
    for _ in TABLE {
        md.push_str("---:|");
    }
    md.push('\n');
    for name in order {
        let _ = write!(md, "| `{name}` |");
        for (metric, _, _) in TABLE {
            match (metric, ratio(results, name, metric)) {
                ("agent_cpu_s", _) => {
                    let _ = write!(md, " {:.1} |", get(results, name, metric));
                }
                (_, Some(r)) => {
                    let _ = write!(md, " {r:.2}× |");
                }
                (_, None) => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md.push_str("\n(proxy CPU s: seconds of CPU the agent, or the sidecar, used during the scenario's measurements.)\n\n");
    md
}

fn targets(results: &Value) -> String {
    let r = |s: &str, m: &str| ratio(results, s, m).unwrap_or(f64::NAN);
    let v = |s: &str, m: &str| get(results, s, m);
    let check = |ok: bool| if ok { "met" } else { "**not met**" };
    // Lower p50 latency both with idle vCPUs and with vCPUs kept awake: a difference inside
    // the idle figure's noise alone does not count as a win.
    let faster = |a: &str, b: &str| {
        v(a, "rr1_p50_us") < v(b, "rr1_p50_us") && v(a, "rr1_spin_p50_us") < v(b, "rr1_spin_p50_us")
    };
    let mut md = String::from("## Targets\n\n| target | measured | |\n|---|---:|---|\n");
    let rows: Vec<(String, String, bool)> = vec![
        (
            "mesh p50 at concurrency 1 ≤ 1.10× direct".into(),
            format!("{:.2}× ({:.2}× awake)", r("mesh", "rr1_p50_us"), r("mesh", "rr1_spin_p50_us")),
            r("mesh", "rr1_p50_us") <= 1.10,
        ),
        (
            "mesh p99 at concurrency 1 ≤ 1.10× direct".into(),
            format!("{:.2}× ({:.2}× awake)", r("mesh", "rr1_p99_us"), r("mesh", "rr1_spin_p99_us")),
            r("mesh", "rr1_p99_us") <= 1.10,
        ),
        (
            "mesh throughput ≥ 0.9× direct".into(),
            format!("{:.2}×", r("mesh", "tput_gbps")),
            r("mesh", "tput_gbps") >= 0.9,
        ),
        (
            "mesh connection rate ≥ 0.8× direct".into(),
            format!("{:.2}×", r("mesh", "crr_cps")),
            r("mesh", "crr_cps") >= 0.8,
        ),
        (
            "mesh beats sidecar: latency (p50, idle and awake)".into(),
            format!(
                "{:.1} vs {:.1} µs; {:.1} vs {:.1} µs awake",
                v("mesh", "rr1_p50_us"),
                v("sidecar", "rr1_p50_us"),
                v("mesh", "rr1_spin_p50_us"),
                v("sidecar", "rr1_spin_p50_us")
            ),
            faster("mesh", "sidecar"),
        ),
        (
            "mesh beats sidecar: throughput".into(),
            format!("{:.2} vs {:.2} Gbps", v("mesh", "tput_gbps"), v("sidecar", "tput_gbps")),
            v("mesh", "tput_gbps") > v("sidecar", "tput_gbps"),
        ),
        (
            "mesh beats sidecar: connection rate".into(),
            format!("{:.0} vs {:.0} /s", v("mesh", "crr_cps"), v("sidecar", "crr_cps")),
            v("mesh", "crr_cps") > v("sidecar", "crr_cps"),
        ),
        (
            "mesh beats mesh_nosockmap on latency (p50, idle and awake)".into(),
            format!(
                "{:.1} vs {:.1} µs; {:.1} vs {:.1} µs awake",
                v("mesh", "rr1_p50_us"),
                v("mesh_nosockmap", "rr1_p50_us"),
                v("mesh", "rr1_spin_p50_us"),
                v("mesh_nosockmap", "rr1_spin_p50_us")
            ),
            faster("mesh", "mesh_nosockmap"),
        ),
    ];
    for (target, measured, ok) in rows {
        let _ = writeln!(md, "| {target} | {measured} | {} |", check(ok));
    }
    md.push('\n');
    md
}

fn absolute_table(results: &Value, order: &[&str]) -> String {
    let mut md = String::from(
        "## Absolute values\n\n| scenario | rr1 p50 µs | rr1 p99 µs | rr1 p50 µs (awake) | rr1 p99 µs (awake) | rr64 rps | rr64 p99 µs | rr64 CPU µs/req | rr64 rps (threads) | Gbps | conn/s | proxy RSS KiB | proxy CPU s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for name in order {
        let v = |m: &str| get(results, name, m);
        let _ = writeln!(
            md,
            "| `{name}` | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} | {:.2} | {:.0} | {:.0} | {:.1} |",
            v("rr1_p50_us"),
            v("rr1_p99_us"),
            v("rr1_spin_p50_us"),
            v("rr1_spin_p99_us"),
            v("rr64_rps"),
            v("rr64_p99_us"),
            v("rr64_cpu_us"),
            v("rr64_threads_rps"),
            v("tput_gbps"),
            v("crr_cps"),
            v("agent_rss_kib"),
            v("agent_cpu_s"),
        );
    }
    md.push('\n');
    md
}

/// Two bar charts: latency at concurrency 1 (idle and awake vCPUs) and throughput.
fn svg(results: &Value, order: &[&str]) -> String {
    let (w, h, top, bottom, left) = (900.0, 360.0, 40.0, 70.0, 60.0);
    let panel = (w - left * 2.0) / 2.0;
    let plot_h = h - top - bottom;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let panels: [(&str, &[(&str, &str)]); 2] = [
        (
            "request/response latency p50, concurrency 1 (µs)",
            &[("rr1_p50_us", "#4e79a7"), ("rr1_spin_p50_us", "#a0cbe8")],
        ),
        ("single-stream throughput (Gbps)", &[("tput_gbps", "#59a14f")]),
    ];
    for (p, (title, series)) in panels.iter().enumerate() {
        let x0 = left + p as f64 * (panel + left);
        let max = order
            .iter()
            .flat_map(|n| series.iter().map(move |(m, _)| get(results, n, m)))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let _ = writeln!(s, "<text x=\"{x0}\" y=\"20\" font-size=\"13\">{title}</text>");
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>",
            top + plot_h,
            x0 + panel,
            top + plot_h
        );
        let group = panel / order.len() as f64;
        let bar = (group * 0.7) / series.len() as f64;
        for (i, name) in order.iter().enumerate() {
            let gx = x0 + i as f64 * group + group * 0.15;
            for (j, (metric, color)) in series.iter().enumerate() {
                let v = get(results, name, metric);
                let bh = v / max * plot_h;
                let bx = gx + j as f64 * bar;
                let _ = writeln!(
                    s,
                    "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{color}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{v:.1}</text>",
                    top + plot_h - bh,
                    bar - 1.0,
                    bx + bar / 2.0,
                    top + plot_h - bh - 3.0
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" transform=\"rotate(-35 {:.1} {:.1})\">{name}</text>",
                gx + group * 0.35,
                top + plot_h + 14.0,
                gx + group * 0.35,
                top + plot_h + 14.0
            );
        }
    }
    let _ = writeln!(
        s,
        "<rect x=\"{left}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#4e79a7\"/><text x=\"{}\" y=\"{}\">idle vCPUs</text>\
         <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#a0cbe8\"/><text x=\"{}\" y=\"{}\">vCPUs kept awake</text>",
        h - 14.0,
        left + 14.0,
        h - 5.0,
        left + 100.0,
        h - 14.0,
        left + 114.0,
        h - 5.0
    );
    s.push_str("</svg>\n");
    s
}

const METHOD: &str = r#"## Method

`cargo xtask bench` (as root) builds release binaries (fat LTO, one codegen unit) of the agent
and of `nm-loadgen`, or takes them from `--bin-dir` to compare two builds, then builds one fake
cluster (docs/testing.md): two nodes, agents on both, one client pod and a
server pod on each node, all enrolled. Each round runs every scenario in turn (rounds rotate
the order, so drift on the machine hits every scenario alike), and the tables show the median of
the rounds.

Every scenario uses the **same client pod and server pods**; only the path differs, chosen by
the destination port and one pod label. (Two pod pairs running identical code differed by
10 µs at concurrency 1 here, more than some effects measured, so comparing pairs would
mislead.)

| scenario | path |
|---|---|
| `direct` | port 9101, excluded from interception both ways: veth, bridge, veth |
| `mesh` | port 9100: connect4 → the agent's listener in the client pod → upstream from inside the server pod; handed to the kernel splice after the agent's default 16 KiB |
| `mesh_nosockmap` | the same, with the pods' `nodemesh.io/splice` label flipped to `disabled` (every sockmap path off): the proxy copies |
| `sidecar` | port 9102, excluded from interception; an nftables REDIRECT in the client pod sends it to `nodemesh sidecar`, a process in that pod (outside its cgroup) running the same forwarding code |
| `xnode_direct` | port 9101 on the server pod of node 2 |
| `xnode_mesh_plaintext` | port 9100 on node 2, agents without identities: the client's agent connects out from the client pod; node 2's agent steers it in with sk_lookup; both legs cross the network, so with the default `splice_network_legs: false` both agents copy (docs/acceleration.md) |
| `xnode_mesh` | the same, measured last, after both agents restart against a control plane with a CA: the agents carry it in HBONE (HTTP/2 CONNECT over mutual TLS 1.3) on a pooled connection to node 2's port 15008 |

The load comes from `nm-loadgen` (`loadgen/`, no code shared with the proxy), run inside the
client pod (its network namespace and cgroup, so the pod's hooks apply), against
`nm-loadgen server` in the server pod. Each server pod runs it twice per port: with one
blocking thread per connection on 9100–9102, and event-driven (`--async`, tokio) on 9103–9105
(9104 and 9105 are excluded from interception like 9101 and 9102).

- **rr1**: one persistent connection, 1 KiB request, 1 KiB response, one at a time; p50, p99
  and requests/s. Measured twice: as is, and with both vCPUs kept awake by two `SCHED_IDLE`
  busy loops ("awake"). These VMs halt idle vCPUs, so at concurrency 1 the idle figure is
  dominated by wake-ups and spreads up to 3× between runs; the awake figure is tight.
- **rr64**: 64 persistent connections at once, one 1 KiB request in flight on each, from an
  event-driven client (`nm-loadgen rr --async`: 64 tasks on a tokio runtime with one worker
  per vCPU) to the event-driven server, as most apps a mesh carries are built (tokio, Go,
  Netty, nginx); requests/s, p50, p99. **rr64 CPU/req**: CPU time the whole path spent per
  request during that run (the client and server pods' cgroups, the proxy, the kernel's
  worker threads, where the splice's forwarding runs), in µs. Every connection has moved its
  16 KiB and is spliced within its first 16 requests. **rr64 rps (threads)**: the same load
  from one blocking thread per connection against the thread-per-connection server, the
  benchmark's rr64 until 2026-12-01. Its threads (64 client, 160 server) cost more CPU per
  request than the event-driven pair, and on a machine shared with other work they win more
  of the CPU than the kernel's workers that forward the splice, which pushes the mesh's
  ratio down to 0.3× (docs/performance.md).
- **throughput**: one connection sending 128 KiB writes for the whole measurement; the server
  counts what arrived.
- **conn/s**: 4 clients in a loop of connect, one 64-byte request and response, close. The
  client pod has `tcp_tw_reuse=1` and ports 1024–65535, as load testers set them; without that
  the direct path runs out of ports to TIME_WAIT within seconds (loopback, the mesh's first
  leg, is exempt by default), which once made the mesh look faster than direct.
- **proxy RSS / CPU**: the agent's (both agents' for `xnode_mesh*`; the sidecar's for
  `sidecar`) resident memory at the end of the scenario, and CPU seconds used during it.

Client, proxy and server share two vCPUs, so rates and throughput mostly measure CPU spent
per byte and per request, **on an otherwise idle machine**. Before each scenario's
measurements the benchmark samples `/proc/stat` for a second with nothing of its own running:
"other work", in CPUs busy, per sample in results.json, summarised at the top of this page,
printed with each round, and a warning at the end when it exceeded 0.2 CPUs. With other work
running, the scheduler decides the rates: it shares CPU per thread, so a load with many
threads keeps most of the machine while the kernel's two per-CPU workers, which do the
splice's forwarding, get a thread's share each; rr64 through the mesh then fell to 0.3×
direct with the thread-per-connection load (docs/performance.md). Do not quote rates from
such a run; the CPU per request still holds.

Flags (defaults): `--rounds 3`, `--seconds 3` per measurement, `--rr-size 1024`,
`--rr-conns 64`, `--crr-size 64`, `--crr-conns 4`. `--quick` runs one short round on the debug
build and writes `target/bench/results-quick.json` only (part of `cargo xtask test`, so the
harness never rots; it asserts no numbers).

### results.json

```json
{"scenarios": {"<name>": {"rr1_p50_us", "rr1_p99_us", "rr1_rps", "rr1_spin_p50_us",
  "rr1_spin_p99_us", "rr64_rps", "rr64_p50_us", "rr64_p99_us", "rr64_cpu_us",
  "rr64_threads_rps", "tput_gbps", "tput_cpu_s_per_gb", "crr_cps", "agent_rss_kib",
  "agent_cpu_s", "background_cpus"}},
 "mtls": {"handshakes_per_s"},
 "controlplane": {"agents", "workloads", "services", "resources_per_agent", "full_sync_s",
  "agent_sync_p50_s", "propagation_p50_ms", "propagation_p99_ms", "propagation_max_ms",
  "changes", "cp_rss_kib", "cp_peak_rss_kib", "real_agent_sync_s", "agent_rss_before_kib",
  "agent_rss_after_kib", "agent_rss_growth_kib", "bytes_received"},
 "rounds": N, "machine": "...", "settings": {...}, "raw": {"<name>": [per-round values]}}
```
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
