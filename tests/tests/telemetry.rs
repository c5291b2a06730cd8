//! Flow telemetry (issue 5): the flow table's byte counts against what real clients counted,
//! the kernel's view of the same flows (veth packets, TCP RTT and retransmits, drops), the
//! Prometheus output against promtool and against the flows, the CLI against a live agent,
//! and the bounds under 100,000 short connections.

use std::{net::IpAddr, time::Duration};

use anyhow::Context as _;
use nodemesh_testbed::{
    AgentOptions, require_root,
    scenario::{BULK_PORT, SingleNode},
    tools, wait_for,
};
use serde_json::{Value, json};

/// Runs the bulk client in `pod` against `host`; returns its JSON (with the byte counts the
/// client itself put on and took off its socket).
fn bulk(s: &SingleNode, from: &nodemesh_testbed::Pod, host: IpAddr, up: usize, down: usize) -> Value {
    let out = from.output(tools::bulk_client(host, BULK_PORT, up, down)).expect("bulk client");
    let result = tools::json_result("bulk client", &out).expect("bulk client result");
    assert_eq!(result["ok"], true, "{result}\n{}", s.agent.log_tail(20));
    result
}

/// The one closed flow that matches `pick`, once its network-facing socket is done too (the
/// kernel still sends what the proxy wrote after the proxy closes; the flow's kernel view
/// follows until the socket reaches TIME_WAIT or CLOSE).
fn closed_flow(s: &SingleNode, query: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let mut last = Vec::new();
    for _ in 0..100 {
        last = s.agent.flows(&format!("state=closed&{query}")).expect("flows");
        if let Some(f) = last.iter().find(|f| pick(f))
            && matches!(f["kernel"]["tcp"]["state"].as_str(), Some("TIME_WAIT" | "CLOSE"))
        {
            return f.clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no settled closed flow for {query}; flows: {last:#?}");
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("{pointer} missing in {v:#}"))
}

fn port_of(address: &Value) -> u16 {
    address.as_str().and_then(|a| a.rsplit(':').next()?.parse().ok()).expect("address with a port")
}

/// The TCP payload the kernel counted on the veth is what the proxy forwarded, plus whatever
/// the network-facing socket retransmitted (at most a segment of 1,500 bytes each).
fn assert_payload(flow: &Value, direction: &str, forwarded: &Value) {
    let payload = u64_at(flow, &format!("/kernel/veth/payload_{direction}"));
    let forwarded = forwarded.as_u64().expect("byte count");
    let retransmits = u64_at(flow, "/kernel/tcp/retransmits");
    assert!(
        (forwarded..=forwarded + 1500 * retransmits).contains(&payload),
        "{direction}: {payload} payload bytes on the veth for {forwarded} forwarded with {retransmits} retransmits: {flow:#}"
    );
}

/// Segments the external host's TCP stack retransmitted so far (its netns's `RetransSegs`).
fn external_retransmits(s: &SingleNode) -> u64 {
    let mut cat = std::process::Command::new("cat");
    cat.arg("/proc/net/snmp");
    let out = s.ext.output(cat).expect("snmp");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:")).map(|l| l.split_whitespace());
    let (names, values) = (tcp.next().expect("Tcp header"), tcp.next().expect("Tcp values"));
    names
        .zip(values)
        .find(|(n, _)| *n == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .expect("RetransSegs")
}

/// The payload the veth carried towards the pod, sent by the external host: exactly what the
/// proxy received, unless that host retransmitted (under load its timers can fire), then at
/// most a segment more for each of its retransmits.
fn assert_payload_from_external(flow: &Value, received: &Value, retransmitted: u64) {
    let payload = u64_at(flow, "/kernel/veth/payload_to_pod");
    let received = received.as_u64().expect("byte count");
    assert!(
        (received..=received + 1500 * retransmitted).contains(&payload),
        "to_pod: {payload} payload bytes for {received} received, the sender retransmitted {retransmitted}: {flow:#}"
    );
}

/// Kernel packet bytes are the payload plus per-packet IP and TCP headers: at least 40 bytes
/// (IPv4 20 + TCP 20) and at most 120 (options on either) per packet.
fn assert_within_header_overhead(flow: &Value, direction: &str) {
    let packets = u64_at(flow, &format!("/kernel/veth/packets_{direction}"));
    let bytes = u64_at(flow, &format!("/kernel/veth/bytes_{direction}"));
    let payload = u64_at(flow, &format!("/kernel/veth/payload_{direction}"));
    let overhead = bytes - payload;
    assert!(
        (40 * packets..=120 * packets).contains(&overhead),
        "{direction}: {bytes} IP bytes, {payload} payload, {packets} packets: {overhead} is not header overhead"
    );
}

fn exact_bytes_both_ways(splice: bool) {
    require_root();
    let s = SingleNode::start(
        if splice { "tm-bytes-sp" } else { "tm-bytes" },
        &AgentOptions { splice, ..Default::default() },
    )
    .expect("cluster");
    let ext = IpAddr::V4(s.ext.ipv4);
    let (up, down) = (3 << 20, 5 << 20);

    // Outbound: the enrolled client to a host outside the mesh, through the client's veth.
    let before = external_retransmits(&s);
    let result = bulk(&s, &s.client, ext, up, down);
    let local_port = result["local"][1].as_u64().expect("local port") as u16;
    let flow = closed_flow(&s, "pod=mesh/client", |f| {
        f["direction"] == "outbound" && port_of(&f["source"]["address"]) == local_port
    });
    assert_eq!(flow["verdict"], "allowed", "{flow:#}");
    assert_eq!(flow["bytes_sent"], result["bytes_sent"], "proxy bytes out: {flow:#}");
    assert_eq!(flow["bytes_received"], result["bytes_received"], "proxy bytes back: {flow:#}");
    assert_eq!(flow["spliced"], splice);
    assert_eq!(flow["source"]["namespace"], "mesh");
    assert_eq!(flow["source"]["workload"], "client");
    assert_eq!(flow["source"]["identity"], "spiffe://cluster.local/ns/mesh/sa/default");
    assert_eq!(flow["destination"]["address"], format!("{ext}:{BULK_PORT}"));
    // The wire: the upstream leg left through the client's veth; its TCP payload is exactly
    // what the proxy forwarded.
    assert_payload(&flow, "from_pod", &result["bytes_sent"]);
    assert_payload_from_external(&flow, &result["bytes_received"], external_retransmits(&s) - before);
    assert_within_header_overhead(&flow, "from_pod");
    assert_within_header_overhead(&flow, "to_pod");
    let tcp = &flow["kernel"]["tcp"];
    assert!(u64_at(tcp, "/srtt_us") > 0, "no RTT: {flow:#}");
    assert!(u64_at(tcp, "/state_changes") > 0, "no state change seen: {flow:#}");

    // Inbound: the external host to the enrolled server, in through the server's veth.
    let server = IpAddr::V4(s.server.ipv4);
    let before = external_retransmits(&s);
    let out = s.ext.output(tools::bulk_client(server, BULK_PORT, down, up)).expect("bulk client");
    let result = tools::json_result("bulk client", &out).expect("bulk result");
    assert_eq!(result["ok"], true, "{result}");
    let client_port = result["local"][1].as_u64().expect("local port") as u16;
    let flow = closed_flow(&s, "pod=mesh/server", |f| {
        f["direction"] == "inbound" && port_of(&f["source"]["address"]) == client_port
    });
    assert_eq!(flow["bytes_sent"], result["bytes_sent"], "{flow:#}");
    assert_eq!(flow["bytes_received"], result["bytes_received"], "{flow:#}");
    assert_eq!(flow["destination"]["workload"], "server");
    assert_eq!(flow["source"].get("workload"), None, "the external host is no workload: {flow:#}");
    assert_payload_from_external(&flow, &result["bytes_sent"], external_retransmits(&s) - before);
    assert_payload(&flow, "from_pod", &result["bytes_received"]);
    assert_within_header_overhead(&flow, "to_pod");
    assert!(u64_at(&flow, "/kernel/tcp/srtt_us") > 0, "{flow:#}");
}

#[test]
fn flow_bytes_equal_what_clients_sent_and_received_copy() {
    exact_bytes_both_ways(false);
}

#[test]
fn flow_bytes_equal_what_clients_sent_and_received_splice() {
    exact_bytes_both_ways(true);
}

#[test]
fn injected_loss_shows_up_as_retransmits_and_drops() {
    require_root();
    let s = SingleNode::start("tm-loss", &AgentOptions::default()).expect("cluster");
    let ext = IpAddr::V4(s.ext.ipv4);
    // The external host's side drops 5% of what the client pod sends to the bulk port (no
    // netem on this kernel): the proxy's upstream socket has to retransmit.
    let rules = format!(
        "table inet nmloss {{\n  chain input {{\n    type filter hook input priority 0;\n    \
         ip saddr {} tcp dport {BULK_PORT} numgen random mod 100 < 5 drop\n  }}\n}}\n",
        s.client.ipv4
    );
    let rules_file = s.cluster.work_dir().join("loss.nft");
    std::fs::write(&rules_file, rules).expect("writing rules");
    let mut nft = std::process::Command::new("nft");
    nft.arg("-f").arg(&rules_file);
    let out = s.ext.output(nft).expect("nft");
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));

    // Segments leave as GSO packets of ~44 KiB, so 4 MiB was ~95 packets: 1 run in ~130
    // would drop none of them. 16 MiB is ~380 packets; no drop among them: p ≈ 3e-9.
    let result = bulk(&s, &s.client, ext, 16 << 20, 1024);
    let local_port = result["local"][1].as_u64().expect("local port") as u16;
    let flow = closed_flow(&s, "pod=mesh/client", |f| port_of(&f["source"]["address"]) == local_port);
    assert_eq!(flow["bytes_sent"], result["bytes_sent"], "loss must not change what arrives: {flow:#}");
    assert!(u64_at(&flow, "/kernel/tcp/retransmits") > 0, "no retransmit recorded: {flow:#}");
    assert!(u64_at(&flow, "/kernel/veth/drops") > 0, "no drop recorded: {flow:#}");
    // The injected loss is among the reasons; the latest may be another, such as the
    // receiver's TCP_OLD_DATA for a retransmit of something that had arrived after all.
    let reasons = flow["kernel"]["veth"]["drop_reasons"].as_array().expect("drop_reasons");
    assert!(reasons.iter().any(|r| r == "NETFILTER_DROP"), "{flow:#}");
    assert!(reasons.contains(&flow["kernel"]["veth"]["last_drop_reason"]), "{flow:#}");

    // The CLI ranks it first by retransmits.
    let text = s.agent.cli(&["flows", "--top", "1", "--by", "retransmits"]).expect("nodemesh flows");
    assert!(text.contains("top by retransmits"), "{text}");
    assert!(text.contains(&format!("{ext}:{BULK_PORT}")), "{text}");
}

/// Parses `name{labels} value` lines of one family.
fn samples<'a>(text: &'a str, family: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_pass_promtool_and_match_the_flows() {
    require_root();
    let s = SingleNode::start("tm-metrics", &AgentOptions::default()).expect("cluster");
    // The client is a replica of a StatefulSet: metrics report the StatefulSet as its
    // workload and its app/version labels as its canonical service and revision.
    let generation =
        |s: &SingleNode| s.agent.status().ok().and_then(|st| st["enrollment"]["generation"].as_u64());
    let before = generation(&s).expect("enrollment generation in status");
    s.node
        .set_pod_owner(&s.client, "StatefulSet", "frontend", &[("app", "shop-frontend"), ("version", "v3")])
        .expect("owner");
    wait_for("the new enrollment", Duration::from_secs(5), || generation(&s) > Some(before))
        .expect("applied");
    let ext = IpAddr::V4(s.ext.ipv4);
    let mut sent = 0;
    let mut received = 0;
    for (up, down) in [(1000, 2000), (70_000, 10), (1, 1 << 20)] {
        let r = bulk(&s, &s.client, ext, up, down);
        sent += r["bytes_sent"].as_u64().expect("sent");
        received += r["bytes_received"].as_u64().expect("received");
    }
    // A refused connection: nothing listens on port 9 of the external host.
    // Its connect reaches the proxy, which then resets it.
    let mut refused_client = std::process::Command::new("python3");
    refused_client.args([
        "-c",
        &format!(
            "import socket\ns = socket.create_connection(('{ext}', 9))\ntry: s.recv(1)\nexcept OSError: pass"
        ),
    ]);
    s.client.output(refused_client).expect("refused client");
    let flows = s.agent.flows("state=closed&pod=mesh/client").expect("flows");
    let to_ext: Vec<&Value> =
        flows.iter().filter(|f| port_of(&f["destination"]["address"]) == BULK_PORT).collect();
    assert_eq!(to_ext.len(), 3, "{flows:#?}");
    assert_eq!(
        (&to_ext[0]["source"]["pod"], &to_ext[0]["source"]["workload"]),
        (&json!("client"), &json!("frontend"))
    );

    let text = s.agent.http_get("http://127.0.0.1:15020/metrics").expect("/metrics");
    let metrics_file = s.cluster.work_dir().join("metrics.txt");
    std::fs::write(&metrics_file, &text).expect("writing metrics");
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics_file).expect("metrics file"))
        .output()
        .expect("promtool (apt install prometheus; cargo xtask setup does)");
    assert!(
        check.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // The series of client → external host (no workload there: destination unknown).
    let series = |family: &str| -> f64 {
        samples(&text, family)
            .iter()
            .filter(|(s, _)| {
                s.contains("source_workload=\"frontend\"")
                    && s.contains("source_canonical_service=\"shop-frontend\"")
                    && s.contains("source_canonical_revision=\"v3\"")
                    && s.contains("destination_workload=\"unknown\"")
                    && s.contains("reporter=\"source\"")
            })
            .map(|(_, v)| v)
            .sum()
    };
    let refused = flows.iter().filter(|f| f["verdict"] == "failed").count() as f64;
    assert_eq!(refused, 1.0, "{flows:#?}");
    let failed_flow = flows.iter().find(|f| f["verdict"] == "failed").expect("failed flow");
    assert_eq!(failed_flow["reason"], "connection_refused", "{failed_flow:#}");
    assert_eq!(series("istio_tcp_connections_opened_total"), 3.0 + refused, "{text}");
    assert_eq!(series("istio_tcp_connections_closed_total"), 3.0 + refused);
    assert_eq!(series("istio_tcp_received_bytes_total"), sent as f64, "request bytes");
    assert_eq!(series("istio_tcp_sent_bytes_total"), received as f64, "response bytes");
    assert!(text.contains("source_principal=\"spiffe://cluster.local/ns/mesh/sa/default\""));
    let failed = samples(&text, "nodemesh_connections_failed_total");
    assert!(failed.iter().any(|(s, v)| s.contains("connection_refused") && *v == 1.0), "{text}");
    for family in [
        "nodemesh_kernel_decisions_total",
        "nodemesh_map_entries",
        "nodemesh_flow_table_flows",
        "nodemesh_enrolled_pods",
    ] {
        assert!(!samples(&text, family).is_empty(), "no {family} in\n{text}");
    }
    let tc_counted = samples(&text, "nodemesh_kernel_decisions_total")
        .iter()
        .find(|(s, _)| s.contains("program=\"tc\"") && s.contains("reason=\"counted\""))
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    assert!(tc_counted > 0.0, "the tc programs counted nothing:\n{text}");

    // Readiness.
    s.agent.http_get("http://127.0.0.1:15021/healthz/ready").expect("readiness");
}

#[test]
fn the_cli_shows_live_flows_and_says_what_to_do_without_an_agent() {
    require_root();
    let s = SingleNode::start("tm-cli", &AgentOptions::default()).expect("cluster");
    let ext = IpAddr::V4(s.ext.ipv4);
    bulk(&s, &s.client, ext, 10_000, 20_000);
    bulk(&s, &s.client, IpAddr::V4(s.server.ipv4), 5, 5);

    let text = s.agent.cli(&["flows"]).expect("nodemesh flows");
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "wider than 80 columns: {line:?}");
    }
    assert!(text.contains("mesh/client"), "{text}");
    assert!(text.contains("mesh/server:7000"), "{text}");
    let only_ns = s.agent.cli(&["flows", "--namespace", "plain"]).expect("filtered");
    assert!(only_ns.contains("no flows match"), "{only_ns}");
    let top: Value =
        serde_json::from_str(&s.agent.cli(&["flows", "--top", "1", "--json"]).expect("json")).expect("json");
    let top = top["flows"].as_array().expect("flows");
    assert_eq!(top.len(), 1);
    assert_eq!(top[0]["destination"]["address"], format!("{ext}:{BULK_PORT}"), "the biggest flow first");
    let failed = s.agent.cli(&["flows", "--verdict", "failed", "--json"]).expect("json");
    assert!(
        serde_json::from_str::<Value>(&failed).expect("json")["flows"].as_array().expect("flows").is_empty()
    );

    let config = s.agent.cli(&["config"]).expect("nodemesh config");
    assert!(config.contains("node_name: node1"), "{config}");
    let dump: Value =
        serde_json::from_str(&s.agent.cli(&["config", "--json"]).expect("config --json")).expect("json");
    assert_eq!(dump["config"]["node_name"], "node1");

    // Logging changes at runtime; a bad filter is refused and the old one kept.
    let set = s.agent.http_post("http://127.0.0.1:15000/logging?level=debug").expect("set level");
    assert!(set.contains("debug"), "{set}");
    assert!(s.agent.http_post("http://127.0.0.1:15000/logging?level=no%20such%20level%3D%3D").is_err());
    let level = s.agent.http_get("http://127.0.0.1:15000/logging").expect("level");
    assert!(level.contains("\"debug\""), "{level}");

    // No agent: the CLI says what to do.
    let wrong = s.agent.cli(&["flows", "--admin", "127.0.0.1:1"]).expect_err("no agent there");
    let message = wrong.to_string();
    assert!(message.contains("Is the agent running"), "{message}");
}

#[test]
fn the_flow_table_and_maps_stay_bounded_across_100k_connections() {
    require_root();
    const CONNECTIONS: u64 = 100_000;
    const MAX_CLOSED: u64 = 2_000;
    let options =
        AgentOptions { extra_config: format!("flows_max_closed: {MAX_CLOSED}\n"), ..Default::default() };
    let s = SingleNode::start("tm-bounds", &options).expect("cluster");
    // The proxy's upstream sockets live in the client's namespace; 100k connections to one
    // destination need the ports TIME_WAIT holds.
    s.client.sysctl("net.ipv4.tcp_tw_reuse", "1").expect("sysctl");
    s.client.sysctl("net.ipv4.ip_local_port_range", "1024 65000").expect("sysctl");
    let ext = IpAddr::V4(s.ext.ipv4);
    s.ext.spawn(tools::loadgen_server(9100)).expect("loadgen server");
    tools::wait_listening(&s.ext.netns_path(), 9100).expect("loadgen listening");

    let out = s.client.output(tools::loadgen_crr(ext, 9100, CONNECTIONS, 4)).expect("loadgen");
    let result = tools::json_result("loadgen crr", &out).expect("loadgen result");
    assert_eq!(result["errors"], 0, "{result}");

    let metrics = s.agent.http_get("http://127.0.0.1:15020/metrics").expect("/metrics");
    let value = |family: &str, label: &str| -> f64 {
        samples(&metrics, family).iter().find(|(s, _)| s.contains(label)).map(|(_, v)| *v).unwrap_or(-1.0)
    };
    let opened = samples(&metrics, "istio_tcp_connections_opened_total").iter().map(|(_, v)| v).sum::<f64>();
    assert!(opened >= CONNECTIONS as f64, "{opened} opened");
    assert!(value("nodemesh_flow_table_flows", "state=\"closed\"") <= MAX_CLOSED as f64);
    assert!(value("nodemesh_flow_table_evicted_total", "") >= (CONNECTIONS - MAX_CLOSED) as f64);
    for map in ["nm_flows", "nm_tcp_health", "nm_orig_dst"] {
        let label = format!("map=\"{map}\"");
        let entries = value("nodemesh_map_entries", &label);
        let capacity = value("nodemesh_map_capacity", &label);
        assert!((0.0..=capacity).contains(&entries), "{map}: {entries} of {capacity}");
    }
    // Every connection crossed the client's veth (from ports reused over the run): the LRU
    // took tens of thousands of flows and gave way rather than growing.
    assert!(value("nodemesh_map_entries", "map=\"nm_flows\"") > 20_000.0, "{metrics}");
    let flows = s.agent.flows("state=all&limit=1000000").expect("flows");
    assert!(flows.len() as u64 <= MAX_CLOSED + 16, "{} flows kept", flows.len());
    let memory =
        s.agent.status().expect("status")["memory"]["rss_bytes"].as_u64().context("rss").expect("rss");
    eprintln!("agent RSS after {CONNECTIONS} connections: {} MiB", memory >> 20);
}
