//! `cargo xtask bench`: every scenario measured in one run, interleaved round by round, as
//! ratios against the direct path measured alongside (docs/bench.md).

mod controlplane;
mod http;
mod measure;
mod mtls;
mod report;
mod services;
mod stress;
mod topology;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use serde_json::Value;

pub use measure::Settings;

/// Other work (in CPUs) above which a run is flagged as taken on a busy machine.
const BUSY_MACHINE_CPUS: f64 = 0.2;
/// The `--only` name of the control-plane benchmark.
const CONTROL_PLANE: &str = "controlplane";
/// The `--only` name of the splice stress run.
const SPLICE_STRESS: &str = "splice_stress";

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// One short round on the debug build; checks the harness, asserts no numbers.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (the report shows medians).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Request and response size for rr1/rr64 (bytes).
    #[arg(long, default_value_t = 1024)]
    pub rr_size: usize,
    /// Connections for rr64.
    #[arg(long, default_value_t = 64)]
    pub rr_conns: usize,
    /// Request and response size for the connection-rate test (bytes).
    #[arg(long, default_value_t = 64)]
    pub crr_size: usize,
    /// Concurrent clients for the connection-rate test.
    #[arg(long, default_value_t = 4)]
    pub crr_conns: usize,
    /// Only these scenarios (comma-separated; for profiling; `controlplane` is the
    /// control-plane benchmark, `splice_stress` the splice stress run). The report then
    /// covers only them, so docs/bench.md is left alone.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Print both agents' `nodemesh status` (kernel counters included) at the end.
    #[arg(long)]
    pub show_status: bool,
    /// Extra agent configuration (YAML lines), for experiments.
    #[arg(long, default_value = "")]
    pub agent_config: String,
    /// Measure the binaries in this directory (`nodemesh`, `nm-loadgen`, `nm-xds-load`)
    /// instead of building them: to compare two builds on one machine.
    #[arg(long)]
    pub bin_dir: Option<std::path::PathBuf>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let (profile, rounds, seconds) =
        if args.quick { ("debug", 1, 0.3) } else { ("release", args.rounds.max(1), args.seconds) };
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            let mut build =
                vec!["build", "--quiet", "-p", "nodemesh", "-p", "nm-loadgen", "-p", "nm-xds-load"];
            if !args.quick {
                build.push("--release");
            }
            crate::sh("cargo", &build)?;
            root.join("target").join(profile)
        }
    };
    let settings = Settings {
        seconds,
        rr_size: args.rr_size,
        rr_conns: args.rr_conns,
        crr_size: args.crr_size,
        crr_conns: args.crr_conns,
    };
    nodemesh_testbed::sweep_stale();
    let wants = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut raw = report::Raw::new();
    let mut order: Vec<&str> = Vec::new();
    let special = |o: &String| {
        o == CONTROL_PLANE
            || o == SPLICE_STRESS
            || o == http::SCENARIO
            || services::SCENARIOS.contains(&o.as_str())
    };
    let data_path_wanted = args.only.is_empty() || args.only.iter().any(|o| !special(o));
    let mut splice_stress = None;
    let mut mtls = None;
    let mut routing = None;
    let mut http_results = None;
    let services_wanted = services::SCENARIOS.iter().any(|s| wants(s));
    let http_wanted = wants(http::SCENARIO);
    if data_path_wanted || wants(SPLICE_STRESS) || services_wanted || http_wanted {
        let mut topo = topology::Topology::start(&bin_dir, &args.agent_config)
            .context("building the benchmark cluster")?;
        if data_path_wanted {
            let scenarios = topo.scenarios().into_iter().filter(|s| wants(s.name)).collect();
            order = data_path(args, &topo, scenarios, &settings, rounds, &mut raw, &bin_dir)?;
        }
        if wants(SPLICE_STRESS) {
            let scale = if args.quick { &stress::Scale::QUICK } else { &stress::Scale::FULL };
            let started = Instant::now();
            let result = stress::run(&topo, &bin_dir, scale).context("the splice stress run")?;
            println!("splice_stress: {result} ({:.0}s)", started.elapsed().as_secs_f64());
            splice_stress = Some(result);
        }
        if wants(mtls::SCENARIO) || services_wanted || http_wanted {
            // Last: the agents restart against a control plane with a CA.
            topo.enable_identities(&bin_dir).context("turning identities on")?;
        }
        if wants(mtls::SCENARIO) {
            // Both, whatever --only says: the ratios need the direct path of the same phase.
            let scenarios = topo.identity_scenarios();
            for name in data_path(args, &topo, scenarios, &settings, rounds, &mut raw, &bin_dir)? {
                if !order.contains(&name) {
                    order.push(name);
                }
            }
            let mut handshakes = Vec::new();
            for _ in 0..rounds {
                handshakes.push(mtls::handshakes_per_second(&topo, settings.seconds)?);
            }
            println!("handshakes/s: {handshakes:?}");
            mtls = Some(mtls::summary(report::median(&mut handshakes)));
        }
        if services_wanted {
            let started = Instant::now();
            let result =
                services::run(&topo, &settings, rounds, &bin_dir).context("the service benchmark")?;
            println!("services ({:.0}s): {result}", started.elapsed().as_secs_f64());
            routing = Some(result);
        }
        if http_wanted {
            let started = Instant::now();
            let result = http::run(&topo, &settings, rounds, &bin_dir).context("the HTTP benchmark")?;
            println!("http ({:.0}s): {result}", started.elapsed().as_secs_f64());
            http_results = Some(result);
        }
    }
    let control_plane = if wants(CONTROL_PLANE) {
        let scale = if args.quick { &controlplane::Scale::QUICK } else { &controlplane::Scale::FULL };
        let started = Instant::now();
        let result = controlplane::run(&bin_dir, scale).context("the control-plane benchmark")?;
        println!("controlplane: {result} ({:.0}s)", started.elapsed().as_secs_f64());
        Some(result)
    } else {
        None
    };
    anyhow::ensure!(!data_path_wanted || !order.is_empty(), "no scenario matches --only {:?}", args.only);
    let mut results = report::results(&raw, &order, rounds, &report::machine(), settings.to_json());
    if let Some(cp) = control_plane {
        results["controlplane"] = cp;
    }
    if let Some(stress) = splice_stress {
        results[SPLICE_STRESS] = stress;
    }
    if let Some(mtls) = mtls {
        results["mtls"] = mtls;
    }
    if let Some(routing) = routing {
        results["services"] = routing;
    }
    if let Some(http) = http_results {
        results["http"] = http;
    }
    let out_dir = root.join("target").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let partial = !args.only.is_empty();
    let file = out_dir.join(match (args.quick, partial) {
        (true, _) => "results-quick.json",
        (false, true) => "results-partial.json",
        (false, false) => "results.json",
    });
    std::fs::write(&file, serde_json::to_string_pretty(&results)?)?;
    check_schema(&results, &order, wants(CONTROL_PLANE), wants(SPLICE_STRESS), services_wanted)?;
    if http_wanted {
        for name in ["http_direct", "http_mesh", "http_sidecar", "http_xnode_direct", "http_xnode_mesh"] {
            for metric in http::METRICS {
                results["http"][name][metric]
                    .as_f64()
                    .with_context(|| format!("results.json lacks http.{name}.{metric}"))?;
            }
        }
    }
    println!("wrote {}", file.display());
    if !args.quick && !partial {
        report::write_docs(&results, &order, &root.join("docs"), &today())?;
        println!("wrote docs/bench.md and docs/bench.svg");
    }
    Ok(())
}

/// The data-path scenarios, interleaved round by round; returns their order.
fn data_path(
    args: &BenchArgs,
    topo: &topology::Topology,
    scenarios: Vec<topology::Scenario>,
    settings: &Settings,
    rounds: usize,
    raw: &mut report::Raw,
    bin_dir: &Path,
) -> anyhow::Result<Vec<&'static str>> {
    if scenarios.is_empty() {
        return Ok(Vec::new());
    }
    let order: Vec<&'static str> = scenarios.iter().map(|s| s.name).collect();
    let started = Instant::now();
    for round in 0..rounds {
        // Rotate the order so no scenario always runs first (or right after a cold start).
        let mut line = format!("round {}/{rounds}:", round + 1);
        for i in 0..scenarios.len() {
            let scenario = &scenarios[(i + round) % scenarios.len()];
            let sample = measure::run(topo, scenario, settings, bin_dir).with_context(|| {
                // What the agents saw (a splice audit mismatch, a reset) goes with the error.
                let logs = [("node1", &topo.agent1), ("node2", &topo.agent2)]
                    .map(|(node, agent)| format!("--- {node} agent log ---\n{}", agent.log_tail(30)));
                format!("scenario {}\n{}", scenario.name, logs.join("\n"))
            })?;
            line.push_str(&format!(
                " {} {:.0}µs/{:.0}rps/{:.1}Gbps/{:.0}cps (other work {:.1} CPUs);",
                scenario.name,
                sample["rr1_spin_p50_us"].as_f64().unwrap_or(0.0),
                sample["rr64_rps"].as_f64().unwrap_or(0.0),
                sample["tput_gbps"].as_f64().unwrap_or(0.0),
                sample["crr_cps"].as_f64().unwrap_or(0.0),
                sample["background_cpus"].as_f64().unwrap_or(0.0),
            ));
            raw.entry(scenario.name.to_owned()).or_default().push(sample);
        }
        println!("{line} ({:.0}s)", started.elapsed().as_secs_f64());
    }
    let busiest = raw.values().flatten().filter_map(|s| s["background_cpus"].as_f64()).fold(0.0, f64::max);
    if busiest > BUSY_MACHINE_CPUS {
        println!(
            "warning: other work kept up to {busiest:.1} CPUs busy between measurements; rates on a \
             busy machine measure its scheduler more than the path (docs/bench.md, Method)"
        );
    }
    if args.show_status {
        for agent in [&topo.agent1, &topo.agent2] {
            println!("{}", agent.cli(&["status"])?);
        }
    }
    Ok(order)
}

/// The schema docs/bench.md promises: every scenario with every metric, as numbers.
fn check_schema(
    results: &Value,
    order: &[&str],
    control_plane: bool,
    stress: bool,
    services: bool,
) -> anyhow::Result<()> {
    if services {
        for name in ["service_direct", "service_pod", "service", "service_rr", "service_slow_endpoint"] {
            for metric in services::METRICS {
                results["services"][name][metric]
                    .as_f64()
                    .with_context(|| format!("results.json lacks services.{name}.{metric}"))?;
            }
        }
    }
    if stress {
        for metric in stress::METRICS {
            results[SPLICE_STRESS][metric]
                .as_f64()
                .with_context(|| format!("results.json lacks {SPLICE_STRESS}.{metric}"))?;
        }
    }
    if control_plane {
        for metric in controlplane::METRICS {
            results["controlplane"][metric]
                .as_f64()
                .with_context(|| format!("results.json lacks controlplane.{metric}"))?;
        }
    }
    for name in order {
        for metric in measure::METRICS {
            results["scenarios"][name][metric]
                .as_f64()
                .with_context(|| format!("results.json lacks {name}.{metric}"))?;
        }
    }
    anyhow::ensure!(
        results["rounds"].as_u64().is_some() && results["machine"].is_string(),
        "results.json header"
    );
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
