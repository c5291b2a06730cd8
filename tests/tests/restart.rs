//! A restart never sweeps what it cannot replace: an agent that starts without a valid state
//! (an enrollment file that does not parse, a snapshot that is empty, truncated, corrupt or not
//! a snapshot, and no control plane) keeps the hooks an earlier agent pinned, says so in
//! `/status`, and takes the pods over once a valid state arrives.

use std::{net::IpAddr, path::Path, time::Duration};

use nodemesh_testbed::{
    Agent, AgentOptions, Pod, PodOptions,
    kernel::cgroup_programs,
    scenario::{BULK_PORT, ControlledNode, SingleNode},
    tools,
};
use serde_json::Value;

/// Longer than the agent waits before it sweeps (a valid spec standing for 2 s).
const PAST_THE_SWEEP: Duration = Duration::from_secs(3);

fn assert_held(agent: &Agent, pods: &[&Pod], when: &str) {
    std::thread::sleep(PAST_THE_SWEEP);
    let status = agent.status().expect("the admin API answers without a valid state");
    let held: Vec<&str> = status["held"].as_array().expect("held").iter().filter_map(Value::as_str).collect();
    for pod in pods {
        assert!(held.contains(&pod.uid.as_str()), "{when}: {} not held: {}", pod.name, status["held"]);
        assert!(
            agent.bpffs_dir.join("pods").join(&pod.uid).exists(),
            "{when}: {}'s pins were swept",
            pod.name
        );
        assert!(
            !cgroup_programs(&pod.cgroup_dir).expect("bpftool").is_empty(),
            "{when}: {}'s hooks are gone",
            pod.name
        );
    }
    assert!(agent.cli(&["status"]).expect("status").contains("HOLDING the hooks"), "{when}");
}

#[test]
fn an_invalid_enrollment_file_at_start_keeps_the_hooks() {
    let s = SingleNode::start("restartfile", &AgentOptions::default()).expect("cluster");
    s.agent.kill9();
    s.node.write_enrollment_text("pods: [ {uid: 0000, namespace: mesh, name: cli").expect("write");
    let SingleNode { agent, node, client, server, ext, .. } = s;
    let agent = agent.restart(&node).expect("restart");
    assert_held(&agent, &[&client, &server], "an unparsable enrollment file");
    let status = agent.status().expect("status");
    assert!(status["enrollment"]["last_error"].is_string(), "{}", status["enrollment"]);

    node.write_enrollment().expect("a valid file again");
    agent.wait_enrolled(&["mesh/client", "mesh/server"], Duration::from_secs(10)).expect("enrolled");
    let out = client
        .output(tools::probe(IpAddr::from(ext.ipv4), BULK_PORT, "intercepted", tools::unix_now()))
        .expect("probe");
    tools::json_result("intercepted", &out).expect("intercepted");
    assert_eq!(agent.status().expect("status")["held"], serde_json::json!([]));
}

#[test]
fn a_bad_snapshot_at_start_keeps_the_hooks() {
    let ControlledNode { cluster, node, ext, mut cp, pod, mut agent } =
        ControlledNode::start("restartsnap", "a", PodOptions::default(), &[]).expect("cluster");
    let snapshot = cluster.work_dir().join("node1-xds-snapshot.pb");
    nodemesh_testbed::wait_for("the snapshot on disk", Duration::from_secs(5), || snapshot.exists())
        .expect("snapshot written");
    let good = std::fs::read(&snapshot).expect("snapshot");
    agent.kill9();
    cp.kill();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x5a;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("empty", Vec::new(), "empty"),
        ("truncated", good[..good.len() - 10].to_vec(), "truncated"),
        ("corrupt", flipped, "checksum"),
        ("not a snapshot", b"apiVersion: v1\n".to_vec(), "header"),
    ];
    for (what, bytes, says) in cases {
        write(&snapshot, &bytes);
        agent = agent.restart(&node).expect("restart");
        let status = agent.status().expect("status");
        let error = status["sync"]["snapshot_error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(says), "{what}: snapshot_error {error:?}");
        assert_held(&agent, &[&pod], what);
        agent.kill9();
    }

    // The control plane returns: the pod is taken over, nothing is held any more.
    write(&snapshot, &good[..good.len() / 2]);
    cp.start().expect("cp back");
    agent = agent.restart(&node).expect("restart");
    agent.wait_enrolled(&["mesh/a"], Duration::from_secs(10)).expect("enrolled from the control plane");
    let out = pod
        .output(tools::probe(IpAddr::from(ext.ipv4), BULK_PORT, "intercepted", tools::unix_now()))
        .expect("probe");
    tools::json_result("intercepted", &out).expect("intercepted");
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write the snapshot");
}
