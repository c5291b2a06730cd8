//! Resource limits: a flood on the ports reachable from the node's network takes nothing from
//! the data path or the admin API; a pod's connections are capped; idle connections end when
//! an idle timeout is set; and the agent's log is plain text when it is not a terminal.

use std::{net::IpAddr, time::Duration};

use nodemesh_testbed::{
    AgentOptions,
    scenario::{BULK_PORT, SingleNode},
    tools,
};

const METRICS: u16 = 15020;

/// 200 idle connections from another host to the metrics port: the port serves at most its
/// cap at once and closes the rest at once (counted), the silent ones go after the header
/// timeout, and meanwhile proxied traffic and the admin API are unaffected.
#[test]
fn a_flood_of_idle_connections_on_the_metrics_port_takes_nothing_from_the_data_path() {
    let s = SingleNode::start("adminflood", &AgentOptions::default()).expect("cluster");
    let node = IpAddr::from(s.node.uplink_ipv4());
    let mut flood = tools::conns(node, METRICS, 200, 7.0, false);
    let out_file = s.cluster.work_dir().join("flood.json");
    flood.stdout(std::fs::File::create(&out_file).expect("out"));
    let pid = s.ext.spawn(flood).expect("flood");
    std::thread::sleep(Duration::from_secs(1));

    let started = std::time::Instant::now();
    s.agent.status().expect("the admin API answers during the flood");
    eprintln!("admin answered in {:?} during the flood", started.elapsed());
    let out = s
        .client
        .output(tools::bulk_client(IpAddr::from(s.ext.ipv4), BULK_PORT, 100_000, 100_000))
        .expect("run");
    tools::json_result("proxied traffic during the flood", &out).expect("byte-exact");

    s.ext.wait(pid, Duration::from_secs(30)).expect("flood ends");
    let r: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out_file).expect("out").trim()).expect("json");
    eprintln!("flood: {r}");
    assert_eq!(r["still_open"], 0, "idle connections outlived the header timeout: {r}");
    let refused = s.agent.http_get(&format!("http://127.0.0.1:{METRICS}/metrics")).expect("metrics");
    let line = refused
        .lines()
        .find(|l| l.starts_with("nodemesh_admin_refused_connections_total{port=\"metrics\"}"))
        .expect("the refusal counter");
    let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number");
    assert!(n >= 150.0, "connections past the cap were not refused: {line}");

    let log = std::fs::read_to_string(&s.agent.log_path).expect("log");
    assert!(!log.contains('\u{1b}'), "the agent's log has terminal escape codes");
}

/// With `max_connections_per_pod: 3`, a pod's fourth connection at once is reset and counted;
/// the three go on.
#[test]
fn a_pod_over_its_connection_cap_is_refused() {
    let options = AgentOptions { extra_config: "max_connections_per_pod: 3\n".into(), ..Default::default() };
    let s = SingleNode::start("podcap", &options).expect("cluster");
    let out = s.client.output(tools::conns(IpAddr::from(s.ext.ipv4), BULK_PORT, 5, 0.5, true)).expect("run");
    let r = tools::json_result("five connections", &out).expect("result");
    // The two refused ones are reset; whether the client sees that already at connect (a
    // non-blocking connect that polls after the reset arrived) or at its first read is timing.
    let refused = r["reset_early"].as_u64().unwrap_or(0) + r["failed"].as_u64().unwrap_or(0);
    assert_eq!((r["greeted"].as_u64(), refused), (Some(3), 2), "{r}");
    let status = s.agent.status().expect("status");
    assert_eq!(status["proxy"]["refused"]["pod_limit"], 2, "{}", status["proxy"]);
}

/// With `idle_timeout: 1000`, a proxied connection that moves nothing for a second is reset,
/// copied and spliced alike.
#[test]
fn an_idle_connection_is_reset_when_the_timeout_is_set() {
    for splice in [false, true] {
        let options =
            AgentOptions { splice, extra_config: "idle_timeout: 1000\n".into(), ..Default::default() };
        let s = SingleNode::start("idle", &options).expect("cluster");
        let out =
            s.client.output(tools::conns(IpAddr::from(s.ext.ipv4), BULK_PORT, 1, 3.0, true)).expect("run");
        let r = tools::json_result("an idle connection", &out).expect("result");
        assert_eq!(
            (r["greeted"].as_u64(), r["closed_by_server"].as_u64()),
            (Some(1), Some(1)),
            "splice {splice}: {r}"
        );
    }
}
