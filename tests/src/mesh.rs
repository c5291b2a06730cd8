//! Three fake nodes for the identity tests: node1 (agent1, pod a) and node2 (agent2, pod b)
//! run agents with identities from the control plane's CA; node3 (pod c) runs none, so an
//! independent HBONE peer there (`tools/hbone_peer.py`) is intercepted by nothing. All three
//! pods are in the intercepted namespace `mesh`, published by the control plane.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use serde_json::Value;

use crate::{
    Agent, AgentOptions, Cluster, ControlPlane, Node, Pod, PodOptions, scenario::BULK_PORT, tools, wait_for,
};

/// Every fake pod runs as service account `default` (testbed `pod_object`).
pub const MESH_ID: &str = "spiffe://cluster.local/ns/mesh/sa/default";
pub const ECHO_PORT: u16 = 7100;
pub const HBONE_PORT: u16 = 15008;

/// node1 (agent1, pod a) and node2 (agent2, pod b) run agents; node3 (pod c) runs none. All
/// three pods are in the intercepted namespace `mesh`, published by the control plane.
pub struct Mesh {
    pub cluster: Cluster,
    pub nodes: [Node; 3],
    pub cp: ControlPlane,
    pub a: Pod,
    pub b: Pod,
    pub c: Pod,
    pub agent1: Agent,
    pub agent2: Agent,
}

impl Mesh {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, 86_400)
    }

    /// With workload certificates of `lifetime_s` seconds.
    pub fn start_with(name: &str, lifetime_s: u64) -> Self {
        Self::start_configured(name, lifetime_s, "")
    }

    /// The same, with `agent_config` (YAML lines) added to both agents' configuration.
    pub fn start_configured(name: &str, lifetime_s: u64, agent_config: &str) -> Self {
        let cluster = Cluster::new(name).expect("cluster");
        let nodes = [1, 2, 3].map(|i| cluster.add_node(&format!("node{i}"), i).expect("node"));
        let mut cp = cluster.add_control_plane().expect("cp");
        cp.enable_ca(lifetime_s).expect("ca");
        let pod = |node: &Node, name: &str| node.add_pod("mesh", name, PodOptions::default()).expect("pod");
        let (a, b, c) = (pod(&nodes[0], "a"), pod(&nodes[1], "b"), pod(&nodes[2], "c"));
        cp.write_namespace("mesh", true).expect("namespace");
        cp.write_pods(&[&nodes[0], &nodes[1], &nodes[2]]).expect("pods");
        cp.start().expect("start cp");
        let agent = |node: &Node, pod: &str| {
            let (address, extra_config) = cp.mesh_agent_config(&node.name).expect("mesh config");
            let extra_config = format!("{extra_config}{agent_config}");
            let options = AgentOptions { xds_address: Some(address), extra_config, ..Default::default() };
            let agent = node.start_agent(&options).expect("agent");
            agent.wait_enrolled(&[pod], Duration::from_secs(10)).expect("enrolled");
            wait_for("a valid certificate", Duration::from_secs(10), || {
                let status = agent.status().unwrap_or_default();
                status["certificates"].as_array().is_some_and(|c| c.iter().any(|c| c["state"] == "valid"))
            })
            .expect("certificate");
            agent
        };
        let (agent1, agent2) = (agent(&nodes[0], "mesh/a"), agent(&nodes[1], "mesh/b"));
        cp.wait_agents(2, Duration::from_secs(10)).expect("agents connected over TLS");
        Self { cluster, nodes, cp, a, b, c, agent1, agent2 }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.cluster.work_dir().join(name)
    }

    /// A leaf for `id` signed by `ca` (the mesh root when `None`): (cert, key).
    pub fn mint(
        &self,
        name: &str,
        id: &str,
        ca: Option<(&Path, &Path)>,
        extra: &[&str],
    ) -> (PathBuf, PathBuf) {
        let (root, root_key) = (self.cp.mesh_root(), self.cp.mesh_root().with_file_name("root-key.pem"));
        let (ca_cert, ca_key) = ca.unwrap_or((&root, &root_key));
        let (cert, key) = (self.file(&format!("{name}.pem")), self.file(&format!("{name}.key")));
        let mut cmd = tools::hbone_peer(&["mint", "--id", id]).expect("hbone_peer");
        cmd.arg("--ca-cert").arg(ca_cert).arg("--ca-key").arg(ca_key);
        cmd.arg("--out-cert").arg(&cert).arg("--out-key").arg(&key).args(extra);
        let out = cmd.output().expect("mint");
        assert!(out.status.success(), "mint {name}: {}", String::from_utf8_lossy(&out.stderr));
        (cert, key)
    }

    /// The peer's client, run in pod c (node3: no agent, nothing intercepts it), to b's HBONE
    /// port with `authority`; `cert` `None` presents none. Returns its exit code and JSON line.
    pub fn client(&self, cert: Option<&(PathBuf, PathBuf)>, authority: &str, extra: &[&str]) -> (i32, Value) {
        let connect = format!("{}:{HBONE_PORT}", self.b.ipv4);
        let mut cmd = tools::hbone_peer(&["client", "--connect", &connect, "--authority", authority])
            .expect("hbone_peer");
        cmd.args(["--expect-id", MESH_ID, "--timeout", "120"]).arg("--ca").arg(self.cp.mesh_root());
        match cert {
            Some((cert, key)) => cmd.arg("--cert").arg(cert).arg("--key").arg(key),
            None => cmd.arg("--no-cert"),
        };
        cmd.args(extra);
        let out = self.c.output(cmd).expect("hbone_peer client");
        let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_owned();
        let json = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("client printed {line:?}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap_or(-1), json)
    }

    /// The peer's server in pod c on 15008 with a certificate for `id`, its JSON lines going
    /// to `log`; returns its pid once it listens.
    pub fn start_server(&self, name: &str, id: &str, log: &Path) -> u32 {
        let (cert, key) = self.mint(name, id, None, &[]);
        let mut cmd =
            tools::hbone_peer(&["server", "--listen", &format!("0.0.0.0:{HBONE_PORT}")]).expect("peer");
        cmd.arg("--cert").arg(cert).arg("--key").arg(key).arg("--ca").arg(self.cp.mesh_root());
        cmd.stdout(std::fs::File::create(log).expect("log"));
        let pid = self.c.spawn(cmd).expect("hbone_peer server");
        tools::wait_listening(&self.c.netns_path(), HBONE_PORT).expect("HBONE server listening");
        pid
    }

    /// bulk_client in pod a (enrolled on node1) to pod c's bulk server.
    pub fn bulk_to_c(&self, upload: usize, download: usize) -> Output {
        self.a
            .output(tools::bulk_client(IpAddr::from(self.c.ipv4), BULK_PORT, upload, download))
            .expect("bulk")
    }
}

/// `nodemesh_hbone_handshake_failures_total{side,reason}`, 0 while it has no sample.
pub fn failures(agent: &Agent, side: &str, reason: &str) -> u64 {
    agent
        .metric(&format!("nodemesh_hbone_handshake_failures_total{{side=\"{side}\",reason=\"{reason}\"}}"))
        .unwrap_or(0)
}

/// The agent's flows in one direction (`outbound` or `inbound`).
pub fn flows(agent: &Agent, direction: &str) -> Vec<Value> {
    let all = agent.flows("state=all").expect("flows");
    all.into_iter().filter(|f| f["direction"] == direction).collect()
}

/// The JSON lines a tool wrote to `path`.
pub fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The serial of the agent's certificate for `identity`, upper-case hex without leading
/// zeros (as the peer prints it).
pub fn serial(agent: &Agent, identity: &str) -> Option<String> {
    let status = agent.status().ok()?;
    let cert = status["certificates"].as_array()?.iter().find(|c| c["identity"] == identity)?.clone();
    cert["serial"].as_str().map(|s| s.trim_start_matches('0').to_owned())
}
