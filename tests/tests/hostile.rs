//! A pod's traffic goes only to the agent: hostile neighbours inside a pod, and a second
//! agent on the node, get nothing and break nothing.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use nodemesh_testbed::{
    AgentOptions,
    kernel::cgroup_programs,
    scenario::{BULK_PORT, SingleNode},
    tools, wait_for,
};
use serde_json::Value;

const OUTBOUND: u16 = 15001;
const INBOUND: u16 = 15006;

/// The agent is down (killed: its hooks stay pinned, its listeners are gone) and another
/// process listens on 127.0.0.1:15001 inside the pod. The pod's connects go direct to where
/// they were going, the squatter gets nothing, and the kernel counts the foreign listener. A
/// restarted agent reports the pod's port as taken and keeps the pod pending (the squatter
/// still gets nothing), and enrolls it once the port is free.
#[test]
fn a_squatter_on_the_outbound_port_gets_nothing() {
    let s = SingleNode::start("squatter", &AgentOptions::default()).expect("cluster");
    let ext = IpAddr::from(s.ext.ipv4);
    s.agent.kill9();

    let record = s.cluster.work_dir().join("squatter.log");
    let mut squatter = tools::squatter(OUTBOUND, &record);
    squatter.stdout(std::process::Stdio::null());
    let squatter_pid = s.client.spawn_in_netns(squatter).expect("squatter");
    tools::wait_listening(&s.client.netns_path(), OUTBOUND).expect("squatter listening");

    let exchange = || {
        let out = s.client.output(tools::bulk_client(ext, BULK_PORT, 100_000, 200_000)).expect("run");
        tools::json_result("bulk exchange to the external host", &out).expect("byte-exact");
    };
    exchange();
    let seen = std::fs::read_to_string(&record).expect("record");
    assert!(seen.is_empty(), "the squatter on 127.0.0.1:{OUTBOUND} got the pod's connections: {seen}");

    // A new agent: the pod's port is taken, which it says, and it keeps trying.
    let SingleNode { agent, node, client, server, .. } = s;
    let agent = agent.restart(&node).expect("restart");
    agent.wait_enrolled(&["mesh/server"], Duration::from_secs(10)).expect("server enrolled");
    let pending = |status: &Value| -> Option<String> {
        status["pending"].as_array()?.iter().find(|p| p["name"] == "mesh/client")?["reason"]
            .as_str()
            .map(String::from)
    };
    let mut reason = None;
    wait_for("the client pod reported pending", Duration::from_secs(10), || {
        reason = agent.status().ok().as_ref().and_then(pending);
        reason.is_some()
    })
    .expect("pending");
    let reason = reason.unwrap_or_default();
    assert!(reason.contains("taken by another process"), "{reason}");
    assert!(
        agent.counter("connect", "fail_open_foreign_listener").expect("counter") > 0,
        "connect4 did not count the foreign listener"
    );
    let out = client.output(tools::bulk_client(ext, BULK_PORT, 100_000, 200_000)).expect("run");
    tools::json_result("while pending", &out).expect("byte-exact");
    let seen = std::fs::read_to_string(&record).expect("record");
    assert!(seen.is_empty(), "the squatter got connections while the pod was pending: {seen}");

    client.kill(squatter_pid);
    agent.wait_enrolled(&["mesh/client", "mesh/server"], Duration::from_secs(10)).expect("enrolled");
    let out = client.output(tools::probe(ext, BULK_PORT, "intercepted", tools::unix_now())).expect("probe");
    tools::json_result("intercepted once the port is free", &out).expect("intercepted");
    drop(server);
}

/// Connections that reach the inbound listener directly from inside the pod (its loopback,
/// or 127.0.0.6, the proxy's own source address) are refused at once and counted, and never
/// fan out into more connections (the proxy would otherwise connect to itself).
#[test]
fn a_connection_to_the_inbound_listener_from_inside_the_pod_is_refused() {
    let s = SingleNode::start("inboundloop", &AgentOptions::default()).expect("cluster");
    let before = s.agent.pod_stats("mesh/server").expect("stats");
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for source in [None, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)))] {
        let out = s.server.output(tools::loop_client(loopback, INBOUND, source)).expect("run");
        let r = tools::json_result("connection to the inbound listener", &out).expect("result");
        assert_eq!(r["outcome"], "reset", "from {source:?}: {r}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let status = s.agent.status().expect("status");
    assert_eq!(status["proxy"]["refused"]["loop"], 2, "{}", status["proxy"]);
    let after = s.agent.pod_stats("mesh/server").expect("stats");
    assert_eq!(
        after["inbound"]["accepted"], before["inbound"]["accepted"],
        "refused connections must not be proxied"
    );
    assert_eq!(status["proxy"]["active"], 0, "connections fanned out: {}", status["proxy"]);

    // Real inbound traffic is untouched.
    let out =
        s.client.output(tools::bulk_client(IpAddr::from(s.server.ipv4), BULK_PORT, 1000, 1000)).expect("run");
    tools::json_result("inbound still works", &out).expect("byte-exact");
}

/// A second agent on the same node and bpffs directory refuses to start, naming the first,
/// and removes nothing of the first agent's.
#[test]
fn a_second_agent_on_the_same_pins_refuses_to_start() {
    let s = SingleNode::start("secondagent", &AgentOptions::default()).expect("cluster");
    let hooks_before = cgroup_programs(&s.client.cgroup_dir).expect("bpftool");
    let (status, output) = s.agent.start_second(&s.node, Duration::from_secs(20)).expect("second agent");
    assert!(!status.success(), "a second agent started on the same pins:\n{output}");
    assert!(
        output.contains("another nodemesh agent") && output.contains(&format!("pid {}", s.agent.pid())),
        "{output}"
    );
    assert!(s.agent.bpffs_dir.join("pods").join(&s.client.uid).exists(), "the first agent's pins are gone");
    assert_eq!(cgroup_programs(&s.client.cgroup_dir).expect("bpftool"), hooks_before);
    let out = s
        .client
        .output(tools::probe(IpAddr::from(s.ext.ipv4), BULK_PORT, "intercepted", tools::unix_now()))
        .expect("probe");
    tools::json_result("still intercepted", &out).expect("intercepted");
}
