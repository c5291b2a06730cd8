//! Workload identities and HBONE between two fake nodes, driven by the reference control
//! plane with its CA: certificates for the enrolled pods' identities, cross-node connections
//! carried in HTTP/2 CONNECT over mutual TLS, byte-exact, with both identities in the flows.

use std::{net::IpAddr, time::Duration};

use serde_json::Value;

use nodemesh_testbed::{
    Agent, AgentOptions, Cluster, ControlPlane, Node, Pod, PodOptions, scenario::BULK_PORT, tools, wait_for,
};

struct Mesh {
    cluster: Cluster,
    _node1: Node,
    _node2: Node,
    cp: ControlPlane,
    a: Pod,
    b: Pod,
    agent1: Agent,
    agent2: Agent,
}

const A_ID: &str = "spiffe://cluster.local/ns/mesh/sa/default";

impl Mesh {
    fn start(name: &str, lifetime_s: u64) -> Self {
        let cluster = Cluster::new(name).expect("cluster");
        let node1 = cluster.add_node("node1", 1).expect("node1");
        let node2 = cluster.add_node("node2", 2).expect("node2");
        let mut cp = cluster.add_control_plane().expect("cp");
        cp.enable_ca(lifetime_s).expect("ca");
        let a = node1.add_pod("mesh", "a", PodOptions::default()).expect("pod a");
        let b = node2.add_pod("mesh", "b", PodOptions::default()).expect("pod b");
        cp.write_namespace("mesh", true).expect("namespace");
        cp.write_pods(&[&node1, &node2]).expect("pods");
        cp.start().expect("start cp");
        b.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("server");
        tools::wait_listening(&b.netns_path(), BULK_PORT).expect("listening");
        let agent = |node: &Node| {
            let (address, extra_config) = cp.mesh_agent_config(&node.name).expect("mesh config");
            let options = AgentOptions { xds_address: Some(address), extra_config, ..Default::default() };
            node.start_agent(&options).expect("agent")
        };
        let (agent1, agent2) = (agent(&node1), agent(&node2));
        cp.wait_agents(2, Duration::from_secs(10)).expect("agents connected over TLS");
        for (agent, pod) in [(&agent1, "mesh/a"), (&agent2, "mesh/b")] {
            agent.wait_enrolled(&[pod], Duration::from_secs(10)).expect("enrolled");
            wait_for("a valid certificate", Duration::from_secs(10), || {
                certificates(agent).iter().any(|c| c["state"] == "valid")
            })
            .expect("certificate");
        }
        Self { cluster, _node1: node1, _node2: node2, cp, a, b, agent1, agent2 }
    }

    fn transfer(&self, upload: usize, download: usize) -> Value {
        let out = self.a.output(tools::bulk_client(IpAddr::from(self.b.ipv4), BULK_PORT, upload, download));
        tools::json_result("bulk_client", &out.expect("bulk client")).expect("result")
    }
}

/// The agent's flows in one direction (`outbound` or `inbound`).
fn flows(agent: &Agent, direction: &str) -> Vec<Value> {
    let all = agent.flows("state=all").expect("flows");
    all.into_iter().filter(|f| f["direction"] == direction).collect()
}

fn certificates(agent: &Agent) -> Vec<Value> {
    agent.status().ok().and_then(|s| s["certificates"].as_array().cloned()).unwrap_or_default()
}

#[test]
fn cross_node_connections_ride_hbone_byte_exact_with_both_identities() {
    let mesh = Mesh::start("mtls-basic", 86_400);
    for (up, down) in [(1, 1), (0, 1 << 20), (1 << 20, 0), (64 << 20, 64 << 20)] {
        let r = mesh.transfer(up, down);
        assert_eq!(r["ok"], true, "{up}/{down}: {r}");
    }
    // Each side's flow says mutual TLS and names the peer by its certificate.
    let out = flows(&mesh.agent1, "outbound");
    assert!(!out.is_empty());
    for flow in &out {
        assert_eq!(flow["mtls"], true, "{flow}");
        assert_eq!(flow["peer_identity"], "spiffe://cluster.local/ns/mesh/sa/default", "{flow}");
    }
    let inbound = flows(&mesh.agent2, "inbound");
    assert_eq!(inbound.len(), out.len(), "{inbound:?}");
    for flow in &inbound {
        assert_eq!(
            (flow["mtls"].clone(), flow["peer_identity"].clone()),
            (Value::Bool(true), Value::from(A_ID)),
            "{flow}"
        );
        assert_eq!(flow["verdict"], "allowed", "{flow}");
    }
    // Pooling: four app connections, one TLS connection (one handshake each side).
    assert_eq!(mesh.agent1.metric("nodemesh_hbone_handshakes_total{side=\"client\"}").expect("metric"), 1);
    assert_eq!(mesh.agent2.metric("nodemesh_hbone_handshakes_total{side=\"server\"}").expect("metric"), 1);
    let _ = (&mesh.cluster, &mesh.cp);
}
