//! Identity clashes are refused: a pod spec naming another pod's address (in any form) or an
//! address its own network namespace does not have is refused, the pod already serving keeps
//! its inbound steering, and removing the newcomer never removes the incumbent's.

use std::{net::IpAddr, time::Duration};

use nodemesh_testbed::{
    AgentOptions, PodOptions,
    scenario::{BULK_PORT, ControlledNode, SingleNode},
    tools, wait_for,
};
use serde_json::Value;

/// A connection from the external host to the server pod, which must be steered into the
/// proxy (counted as the server's inbound) and arrive byte-exact.
fn inbound_to_server_is_steered(s: &SingleNode, when: &str) {
    let before = s.agent.pod_stats("mesh/server").expect("stats")["inbound"]["accepted"].as_u64().expect("n");
    let out = s
        .ext
        .output(tools::bulk_client(IpAddr::from(s.server.ipv4), BULK_PORT, 10_000, 10_000))
        .expect("run");
    tools::json_result(when, &out).expect("byte-exact");
    let after = s.agent.pod_stats("mesh/server").expect("stats")["inbound"]["accepted"].as_u64().expect("n");
    assert_eq!(after, before + 1, "{when}: the server's inbound connection was not steered to the proxy");
}

fn pod_index(doc: &Value, name: &str) -> usize {
    doc["pods"].as_array().expect("pods").iter().position(|p| p["name"] == name).expect("pod")
}

/// The same address again in its IPv4-mapped IPv6 form: the file is refused whole, naming
/// both pods, and the last good state keeps serving.
#[test]
fn a_second_pod_with_the_same_address_is_refused() {
    let s = SingleNode::start("claship", &AgentOptions::default()).expect("cluster");
    inbound_to_server_is_steered(&s, "before");
    let mut doc = s.node.enrollment_doc();
    let client = pod_index(&doc, "client");
    doc["pods"][client]["ips"] = serde_json::json!([format!("::ffff:{}", s.server.ipv4)]);
    s.node.write_enrollment_text(&serde_yaml::to_string(&doc).expect("yaml")).expect("write");
    let mut error = String::new();
    wait_for("the file to be refused", Duration::from_secs(5), || {
        error = s
            .agent
            .status()
            .ok()
            .and_then(|st| st["enrollment"]["last_error"].as_str().map(String::from))
            .unwrap_or_default();
        !error.is_empty()
    })
    .expect("refused");
    assert!(error.contains("mesh/client") && error.contains("mesh/server"), "both pods named: {error}");
    inbound_to_server_is_steered(&s, "while refused");

    s.node.write_enrollment().expect("the good file again");
    wait_for("the error to clear", Duration::from_secs(5), || {
        s.agent.status().is_ok_and(|st| st["enrollment"]["last_error"].is_null())
    })
    .expect("cleared");
    inbound_to_server_is_steered(&s, "after");
}

/// A pod spec naming an address its namespace does not have (here the server's): the pod
/// stays pending with the reason, the server keeps its steering, and when the claim goes
/// away the server still has it.
#[test]
fn a_pod_claiming_an_address_it_does_not_have_is_refused() {
    let s = SingleNode::start("claimforeign", &AgentOptions::default()).expect("cluster");
    let mut doc = s.node.enrollment_doc();
    let client = pod_index(&doc, "client");
    let original = doc["pods"][client]["ips"].clone();
    doc["pods"][client]["ips"] = serde_json::json!([s.server.ipv4.to_string()]);
    // Two pods with one address is refused by the file; a pod that merely moved is not.
    let server = pod_index(&doc, "server");
    doc["pods"][server]["ips"] = serde_json::json!([]);
    s.node.write_enrollment_text(&serde_yaml::to_string(&doc).expect("yaml")).expect("write");
    let mut reason = String::new();
    wait_for("the client to be refused", Duration::from_secs(10), || {
        reason = s
            .agent
            .status()
            .ok()
            .and_then(|st| {
                st["pending"].as_array()?.iter().find(|p| p["name"] == "mesh/client")?["reason"]
                    .as_str()
                    .map(String::from)
            })
            .unwrap_or_default();
        !reason.is_empty()
    })
    .expect("pending");
    assert!(reason.contains("not an address of its network namespace"), "{reason}");

    // The claim goes away, the server gets its address back: it is steered.
    doc["pods"][client]["ips"] = original;
    s.node.write_enrollment().expect("good");
    s.agent.wait_enrolled(&["mesh/client", "mesh/server"], Duration::from_secs(10)).expect("enrolled");
    inbound_to_server_is_steered(&s, "after the claim went away");
}

/// The server admits only callers from namespace `trusted`, so the external host is denied.
const ONLY_TRUSTED: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
    metadata: {name: server-callers, namespace: mesh}\n\
    spec: {selector: {matchLabels: {app: server}}, action: ALLOW, rules: [{from: [{source: {namespaces: [trusted]}}]}]}\n";

/// Through the control plane: a newcomer pod claiming the server's address is refused (both
/// named in the control plane's status), and the server's policy holds while it is there and
/// after it is removed.
#[test]
fn a_pod_claiming_another_pods_address_cannot_switch_its_policy_off() {
    let server_labels = PodOptions { labels: [("app".into(), "server".into())].into(), ..Default::default() };
    let ControlledNode { cluster: _cluster, node: _node, ext, cp, pod: server, agent } =
        ControlledNode::start("claimpolicy", "server", server_labels, &[("policy.yaml", ONLY_TRUSTED)])
            .expect("cluster");
    server.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("bulk");
    tools::wait_listening(&server.netns_path(), BULK_PORT).expect("listening");
    wait_for("the policy", Duration::from_secs(10), || {
        agent.status().is_ok_and(|s| s["sync"]["counts"]["authorizations"].as_u64() == Some(1))
    })
    .expect("policy");
    let ext_is_denied = |when: &str| {
        let out = ext
            .output(tools::bulk_client(IpAddr::from(server.ipv4), BULK_PORT, 10_000, 10_000))
            .expect("run");
        assert!(!out.status.success(), "{when}: the external host got through the server's policy");
    };
    ext_is_denied("before");

    // A newcomer in a file that sorts first, claiming the server's address.
    let impostor = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: impostor, namespace: mesh, uid: 0000aaaa-0000-4000-8000-00000000beef, labels: {{app: other}}}}\n\
         spec: {{nodeName: node1, serviceAccountName: default}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
        ip = server.ipv4
    );
    cp.write("a-impostor.yaml", &impostor).expect("write");
    let mut errors = String::new();
    wait_for("the impostor refused", Duration::from_secs(10), || {
        errors = cp.status().map(|s| s["served"]["input_errors"].to_string()).unwrap_or_default();
        errors.contains("impostor")
    })
    .expect("refused");
    assert!(errors.contains("server"), "both pods named: {errors}");
    std::thread::sleep(Duration::from_millis(500));
    ext_is_denied("with the impostor written");

    std::fs::remove_file(cp.config_dir.join("a-impostor.yaml")).expect("rm");
    wait_for("the error to clear", Duration::from_secs(10), || {
        cp.status().is_ok_and(|s| !s["served"]["input_errors"].to_string().contains("impostor"))
    })
    .expect("cleared");
    std::thread::sleep(Duration::from_millis(500));
    ext_is_denied("after the impostor is gone");
    agent.wait_enrolled(&["mesh/server"], Duration::from_secs(1)).expect("still enrolled");
}
