//! Fail-open: when the agent is killed, an enrolled pod's connections go direct at once
//! (the pinned hooks stay attached but find no listener), and a restarted agent takes over.

use std::{fs::File, net::IpAddr, time::Duration};

use nodemesh_testbed::{
    AgentOptions,
    scenario::{BULK_PORT, SingleNode},
    tools,
};

fn kill9_under_a_connect_loop(splice: bool) {
    let s = SingleNode::start("failopen", &AgentOptions { splice, ..Default::default() }).expect("cluster");
    let target = IpAddr::from(s.ext.ipv4);
    let out = s.cluster.work_dir().join("loop.json");
    let mut cmd = tools::connect_loop(target, BULK_PORT, 4.0);
    cmd.stdout(File::create(&out).expect("out"));
    let pid = s.client.spawn(cmd).expect("loop");

    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = tools::unix_now();
    s.agent.kill9();
    let status = s.client.wait(pid, Duration::from_secs(30)).expect("loop exit");
    assert!(status.success());

    let r: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).expect("read").trim()).expect("json");
    let attempts = r["attempts"].as_u64().expect("attempts");
    let failures = r["failures"].as_array().expect("failures");
    let late: Vec<_> = failures.iter().filter(|f| f[0].as_f64().unwrap_or(0.0) > killed_at + 1.0).collect();
    eprintln!(
        "kill -9 under a connect loop: {attempts} attempts, {} failed (in flight at the kill), {} after 1 s",
        failures.len(),
        late.len()
    );
    assert!(attempts > 20, "the loop barely ran: {r}");
    assert!(late.is_empty(), "connects failed more than 1 s after the kill: {late:?}");

    // New connections are direct now...
    let out = s.client.output(tools::probe(target, BULK_PORT, "direct", tools::unix_now())).expect("probe");
    tools::json_result("direct after the kill", &out).expect("direct");

    // ...until a new agent takes over.
    let SingleNode { agent, node, client, .. } = s;
    let agent = agent.restart(&node).expect("restart");
    agent.wait_enrolled(&["mesh/client", "mesh/server"], Duration::from_secs(10)).expect("enrolled");
    let out =
        client.output(tools::probe(target, BULK_PORT, "intercepted", tools::unix_now())).expect("probe");
    tools::json_result("intercepted after the restart", &out).expect("intercepted");
}

#[test]
fn kill9_under_a_connect_loop_copy() {
    kill9_under_a_connect_loop(false);
}

#[test]
fn kill9_under_a_connect_loop_splice() {
    kill9_under_a_connect_loop(true);
}
