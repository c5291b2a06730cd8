//! Pods that are not enrolled are untouched: a namespace without the label, and a pod that
//! opts out in an enrolled namespace. Their connections go direct, with no proxy hop.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use nodemesh_testbed::{AgentOptions, Cluster, PodOptions, scenario::BULK_PORT, tools};

#[test]
fn unlabelled_namespace_and_opted_out_pod_are_untouched() {
    let cluster = Cluster::new("notenrolled").expect("cluster");
    let node = cluster.add_node("node1", 1).expect("node");
    let ext = cluster.add_external("ext").expect("ext");
    let enrolled = node.add_pod("mesh", "client", PodOptions::default()).expect("pod");
    let opted_out = node
        .add_pod(
            "mesh",
            "optout",
            PodOptions {
                labels: BTreeMap::from([("nodemesh.io/intercept".into(), "disabled".into())]),
                ..Default::default()
            },
        )
        .expect("pod");
    let plain = node.add_pod("plain", "plain", PodOptions::default()).expect("pod");
    node.set_intercept("mesh", Some("enabled")).expect("label");
    ext.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("server");
    tools::wait_listening(&ext.netns_path(), BULK_PORT).expect("listening");
    let agent = node.start_agent(&AgentOptions::default()).expect("agent");
    agent.wait_enrolled(&["mesh/client"], Duration::from_secs(10)).expect("enrolled");

    let redirected = agent.counter("connect", "redirected").expect("counter");
    for pod in [&opted_out, &plain] {
        let out = pod.output(tools::bulk_client(IpAddr::from(ext.ipv4), BULK_PORT, 4096, 4096)).expect("run");
        let r = tools::json_result(&format!("{} to the external host", pod.name), &out).expect("bulk");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["local"][0], pod.ipv4.to_string(), "{} was intercepted: {r}", pod.name);
        assert!(r["greeting"].as_str().expect("greeting").contains(&format!("peer={}:", pod.ipv4)));
    }
    assert_eq!(
        agent.counter("connect", "redirected").expect("counter"),
        redirected,
        "no connect may be redirected"
    );
    let status = agent.status().expect("status");
    assert_eq!(status["pods"].as_array().expect("pods").len(), 1, "only mesh/client is enrolled");
    assert_eq!(status["proxy"]["outbound_accepted"], 0, "no proxy hop: {}", status["proxy"]);

    // The enrolled pod next to them is intercepted, as a control.
    let out =
        enrolled.output(tools::bulk_client(IpAddr::from(ext.ipv4), BULK_PORT, 4096, 4096)).expect("run");
    let r = tools::json_result("enrolled pod", &out).expect("bulk");
    assert_eq!(r["local"][0], "127.0.0.1", "{r}");
}
