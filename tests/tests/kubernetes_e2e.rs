//! End to end through Kubernetes' own protocol: the control plane watches an API-server
//! double (`nodemesh_testbed::apiserver`: LIST, chunked WATCH, 410 Gone) that holds the fake
//! cluster's Namespace and Pods (`spec.nodeName`, `status.podIPs`), and real agents on two
//! fake nodes act on what it says. Labelling the namespace through the API server intercepts
//! its pods within a second; a re-list after 410 loses nothing; deleting a pod detaches it
//! within a second.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use nodemesh_testbed::{
    AgentOptions, Cluster, PodOptions, apiserver::ApiServer, controlplane::pod_objects, scenario::BULK_PORT,
    tools,
};
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);

fn namespace(labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": labels}})
}

#[test]
fn agents_act_on_what_the_api_server_says_within_a_second() {
    nodemesh_testbed::require_root();
    let cluster = Cluster::new("k8se2e").expect("cluster");
    let nodes = [1, 2].map(|i| cluster.add_node(&format!("node{i}"), i).expect("node"));
    let client = nodes[0].add_pod("shop", "client", PodOptions::default()).expect("pod");
    let server = nodes[1].add_pod("shop", "server", PodOptions::default()).expect("pod");
    server.spawn(tools::bulk_server(IpAddr::from([0, 0, 0, 0]), BULK_PORT)).expect("server");
    tools::wait_listening(&server.netns_path(), BULK_PORT).expect("listening");

    let mut cp = cluster.add_control_plane().expect("control plane");
    let api = ApiServer::start_in(&cp.netns_path()).expect("API server");
    let kubeconfig = cluster.work_dir().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    api.apply(namespace(json!({})));
    for pod in pod_objects(&[&nodes[0], &nodes[1]]) {
        api.apply(pod);
    }
    cp.use_kubernetes(kubeconfig);
    cp.start().expect("start the control plane");
    let options = AgentOptions { xds_address: Some(cp.xds_address()), ..Default::default() };
    let agents = [0, 1].map(|i| nodes[i].start_agent(&options).expect("agent"));
    cp.wait_agents(2, Duration::from_secs(10)).expect("both agents connected");
    for agent in &agents {
        agent
            .wait_enrolled(&[], Duration::from_secs(5))
            .expect("nothing enrolled: the namespace has no label");
    }

    let through_the_mesh = || {
        let out = client
            .output(tools::bulk_client(server.ipv4.into(), BULK_PORT, 64 << 10, 64 << 10))
            .expect("run");
        let r = tools::json_result("client to server", &out).expect("bulk");
        assert_eq!(r["ok"], true, "{r}");
        r
    };
    assert_ne!(through_the_mesh()["local"][0], "127.0.0.1", "intercepted before the namespace joined");

    // The label, through the API server: both nodes' pods are intercepted within a second.
    let labelled = Instant::now();
    api.apply(namespace(json!({"nodemesh.io/intercept": "enabled"})));
    agents[0].wait_enrolled(&["shop/client"], SECOND).expect("client enrolled within a second");
    agents[1].wait_enrolled(&["shop/server"], SECOND).expect("server enrolled within a second");
    println!("enrolled on both nodes {:?} after the label", labelled.elapsed());
    let r = through_the_mesh();
    assert_eq!(r["local"][0], "127.0.0.1", "not intercepted: {r}");
    assert!(r["greeting"].as_str().unwrap_or("").contains("peer=127.0.0.6:"), "not steered inbound: {r}");

    // 410 Gone: every watch ends and the control plane lists again; nothing is lost.
    let pod_lists =
        || api.requests().iter().filter(|r| r.contains("/api/v1/pods") && !r.contains("watch=true")).count();
    let lists = pod_lists();
    api.expire();
    nodemesh_testbed::wait_for("the pods listed again after 410", Duration::from_secs(10), || {
        pod_lists() > lists
    })
    .expect("re-listed");
    std::thread::sleep(SECOND);
    agents[0].wait_enrolled(&["shop/client"], SECOND).expect("client still enrolled after the re-list");
    agents[1].wait_enrolled(&["shop/server"], SECOND).expect("server still enrolled after the re-list");
    assert_eq!(through_the_mesh()["local"][0], "127.0.0.1");

    // Deleting the pod: its node detaches it within a second.
    let deleted = Instant::now();
    assert!(api.delete("v1", "Pod", Some("shop"), "client"));
    agents[0].wait_enrolled(&[], SECOND).expect("client detached within a second");
    println!("detached {:?} after the delete", deleted.elapsed());
    agents[1].wait_enrolled(&["shop/server"], SECOND).expect("the other node's pod stays");
}
