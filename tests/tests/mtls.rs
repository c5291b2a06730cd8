//! Workload identities and HBONE between two fake nodes, driven by the reference control
//! plane with its CA: certificates for the enrolled pods' identities, cross-node connections
//! carried in HTTP/2 CONNECT over mutual TLS, byte-exact, with both identities in the flows.

use std::{net::IpAddr, time::Duration};

use serde_json::Value;

use nodemesh_testbed::{
    Agent, AgentOptions, Cluster, ControlPlane, External, Node, Pod, PodOptions,
    scenario::{BULK_PORT, HTTP_PORT},
    tools, wait_for,
};

struct Mesh {
    cluster: Cluster,
    _node1: Node,
    _node2: Node,
    cp: ControlPlane,
    ext: External,
    a: Pod,
    b: Pod,
    agent1: Agent,
    agent2: Agent,
}

const A_ID: &str = "spiffe://cluster.local/ns/mesh/sa/default";

impl Mesh {
    fn start(name: &str, lifetime_s: u64) -> Self {
        Self::start_with(name, lifetime_s, PodOptions::default())
    }

    fn start_with(name: &str, lifetime_s: u64, pods: PodOptions) -> Self {
        let cluster = Cluster::new(name).expect("cluster");
        let node1 = cluster.add_node("node1", 1).expect("node1");
        let node2 = cluster.add_node("node2", 2).expect("node2");
        let mut cp = cluster.add_control_plane().expect("cp");
        let ext = cluster.add_external("ext").expect("ext");
        cp.enable_ca(lifetime_s).expect("ca");
        let bind: IpAddr = if pods.ipv6 { "::".parse() } else { "0.0.0.0".parse() }.expect("ip");
        let a = node1.add_pod("mesh", "a", pods.clone()).expect("pod a");
        let b = node2.add_pod("mesh", "b", pods).expect("pod b");
        cp.write_namespace("mesh", true).expect("namespace");
        cp.write_pods(&[&node1, &node2]).expect("pods");
        cp.start().expect("start cp");
        b.spawn(tools::bulk_server(bind, BULK_PORT)).expect("server");
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
        Self { cluster, _node1: node1, _node2: node2, cp, ext, a, b, agent1, agent2 }
    }

    /// Whether a small exchange from pod a (HBONE) or the external host (plaintext) to b
    /// gets through intact.
    fn reaches_b(&self, from_a: bool) -> bool {
        let cmd = tools::bulk_client(IpAddr::from(self.b.ipv4), BULK_PORT, 1000, 1000);
        let out = if from_a { self.a.output(cmd) } else { self.ext.output(cmd) };
        out.is_ok_and(|o| o.status.success())
    }

    /// Writes the control plane's policy file, then waits until the pairs hold.
    fn policies(&self, yaml: &str, want_a: bool, want_ext: bool) {
        self.cp.write("policies.yaml", yaml).expect("write policies");
        wait_for(
            &format!("a reaches b: {want_a}, ext reaches b: {want_ext}"),
            Duration::from_secs(10),
            || self.reaches_b(true) == want_a && self.reaches_b(false) == want_ext,
        )
        .expect("policies in force");
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
        // The app on b sees a's own address, as behind ztunnel.
        let greeting = r["greeting"].as_str().unwrap_or_default();
        assert!(
            greeting.contains(&format!("peer={}:", mesh.a.ipv4)),
            "{greeting}\n{}",
            mesh.agent2.log_tail(20)
        );
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
    // Never a key: not in the status, the config dump or the metrics.
    for (what, body) in [
        ("status", mesh.agent1.http_get("http://127.0.0.1:15000/status").expect("status")),
        ("config_dump", mesh.agent1.http_get("http://127.0.0.1:15000/config_dump").expect("dump")),
        ("metrics", mesh.agent1.http_get("http://127.0.0.1:15020/metrics").expect("metrics")),
    ] {
        assert!(!body.contains("PRIVATE KEY") && !body.contains("BEGIN"), "{what} shows key material");
        assert!(body.contains(A_ID), "{what} names the identity");
    }
    let dump: Value =
        serde_json::from_str(&mesh.agent1.http_get("http://127.0.0.1:15000/config_dump").expect("dump"))
            .expect("json");
    assert_eq!(dump["certificates"][0]["state"], "valid", "{}", dump["certificates"]);
    assert!(dump["certificates"][0]["serial"].as_str().is_some_and(|s| !s.is_empty()));
    // Pooling: four app connections, one TLS connection (one handshake each side).
    assert_eq!(mesh.agent1.metric("nodemesh_hbone_handshakes_total{side=\"client\"}").expect("metric"), 1);
    assert_eq!(mesh.agent2.metric("nodemesh_hbone_handshakes_total{side=\"server\"}").expect("metric"), 1);
    let _ = (&mesh.cluster, &mesh.cp);
}

const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: mesh}
spec: {mtls: {mode: STRICT}}
";

fn allow_principal(principal: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only, namespace: mesh}}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {{principals: [\"{principal}\"]}}
"
    )
}

#[test]
fn strict_refuses_plaintext_and_principals_admit_hbone_peers() {
    let mesh = Mesh::start("mtls-strict", 86_400);
    // PERMISSIVE (no policy): both get through.
    assert!(mesh.reaches_b(true) && mesh.reaches_b(false));
    // STRICT: plaintext from outside the mesh is reset; HBONE from a carries a's identity.
    mesh.policies(STRICT, true, false);
    let denied: Vec<Value> =
        flows(&mesh.agent2, "inbound").into_iter().filter(|f| f["verdict"] == "denied").collect();
    assert!(!denied.is_empty());
    for flow in &denied {
        assert_eq!(flow["reason"], "denied_by:mesh/converted_peer_authentication_strict", "{flow}");
        assert_eq!(flow["mtls"], false, "{flow}");
    }
    // A principal rule admits a's identity (from its certificate) ...
    mesh.policies(
        &format!("{STRICT}---\n{}", allow_principal("cluster.local/ns/mesh/sa/default")),
        true,
        false,
    );
    // ... and one naming another identity rejects it.
    mesh.policies(
        &format!("{STRICT}---\n{}", allow_principal("cluster.local/ns/mesh/sa/other")),
        false,
        false,
    );
    let last = flows(&mesh.agent2, "inbound").into_iter().find(|f| f["mtls"] == true).expect("an HBONE flow");
    assert_eq!(
        (last["verdict"].clone(), last["reason"].clone()),
        (Value::from("denied"), Value::from("no_allow_policy_matched"))
    );
    // Plaintext never matches a principal, even without STRICT.
    mesh.policies(&allow_principal("*"), true, false);
}

#[test]
fn a_policy_change_closes_a_now_denied_live_connection() {
    let mesh = Mesh::start("mtls-revoke", 86_400);
    let dir = mesh.cluster.work_dir();
    let (out, release) = (dir.join("hold.out"), dir.join("hold.release"));
    let mut cmd = tools::hold_client(IpAddr::from(mesh.b.ipv4), BULK_PORT, &release);
    cmd.stdout(std::fs::File::create(&out).expect("out"));
    let pid = mesh.a.spawn(cmd).expect("hold");
    wait_for("the held connection", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.starts_with("connected"))
    })
    .expect("connected");
    let deny = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-a, namespace: mesh}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/mesh/sa/default\"]}
";
    mesh.cp.write("policies.yaml", deny).expect("write");
    wait_for("the live connection revoked", Duration::from_secs(10), || {
        mesh.agent2.metric("nodemesh_connections_revoked_total").is_ok_and(|n| n == 1)
    })
    .expect("revoked");
    std::fs::write(&release, b"").expect("release");
    let status = mesh.a.wait(pid, Duration::from_secs(20)).expect("exit");
    assert!(
        !status.success(),
        "the held connection survived: {}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    let flow =
        flows(&mesh.agent2, "inbound").into_iter().find(|f| f["verdict"] == "denied").expect("denied flow");
    assert_eq!(flow["reason"], "denied_by:mesh/no-a", "{flow}");
    // It had carried the server's greeting (the client saw it before the policy changed).
    assert!(flow["bytes_received"].as_u64().unwrap_or(0) > 0, "it had carried bytes: {flow}");
}

#[test]
fn ipv6_and_curl_ride_hbone_byte_exact() {
    let mesh = Mesh::start_with("mtls-ipv6", 86_400, PodOptions { ipv6: true, ..Default::default() });
    let b6 = IpAddr::from(mesh.b.ipv6.expect("dual-stack"));
    let out = mesh.a.output(tools::bulk_client(b6, BULK_PORT, 3 << 20, 5 << 20)).expect("run");
    let r = tools::json_result("IPv6 over HBONE", &out).expect("bulk");
    assert_eq!(r["ok"], true, "{r}");
    // The app on b sees a's own address, as behind ztunnel.
    let a6 = mesh.a.ipv6.expect("dual-stack");
    assert!(r["greeting"].as_str().is_some_and(|g| g.contains(&format!("peer=[{a6}]:"))), "{r}");

    // curl, both families, through a plain HTTP server on b.
    let dir = mesh.cluster.work_dir().join("www");
    std::fs::create_dir_all(&dir).expect("dir");
    let sha = tools::write_payload(&dir.join("payload"), 9 << 20).expect("payload");
    mesh.b.spawn(tools::http_server("::".parse().expect("ip"), HTTP_PORT, &dir)).expect("http");
    tools::wait_listening(&mesh.b.netns_path(), HTTP_PORT).expect("listening");
    for host in [tools::authority(IpAddr::from(mesh.b.ipv4), HTTP_PORT), tools::authority(b6, HTTP_PORT)] {
        let file = mesh.cluster.work_dir().join("download");
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "--fail", "--max-time", "60", "-o"])
            .arg(&file)
            .arg(format!("http://{host}/payload"));
        let out = mesh.a.output(curl).expect("curl");
        assert!(out.status.success(), "curl {host}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(tools::sha256_file(&file).expect("sha"), sha, "curl {host}");
    }
    let hbone = flows(&mesh.agent1, "outbound");
    assert!(hbone.len() >= 3 && hbone.iter().all(|f| f["mtls"] == true), "{hbone:?}");
}

#[test]
fn a_wrong_or_missing_mesh_root_is_a_start_up_error() {
    let cluster = Cluster::new("mtls-root").expect("cluster");
    let node = cluster.add_node("node1", 1).expect("node");
    let mut cp = cluster.add_control_plane().expect("cp");
    cp.enable_ca(86_400).expect("ca");
    cp.write_namespace("mesh", true).expect("namespace");
    cp.start().expect("start cp");
    let dir = cluster.work_dir();
    let (other_root, other_key) = (dir.join("other-root.pem"), dir.join("other-root.key"));
    let mut mint = tools::hbone_peer(&["mint-ca"]).expect("hbone_peer");
    mint.arg("--out-cert").arg(&other_root).arg("--out-key").arg(&other_key);
    assert!(mint.status().expect("mint-ca").success());
    let token = cp.node_token("node1").expect("token");
    for (root, expected) in
        [(other_root.clone(), "does not vouch for"), (dir.join("no-such-root.pem"), "the mesh root")]
    {
        let config = dir.join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "node_name: node1\nbpffs_dir: /sys/fs/bpf/nodemesh-test-root-probe\nxds_address: {}\n\
                 xds_snapshot: {}\nmesh_root: {}\nnode_token_file: {}\n",
                cp.tls_address(),
                dir.join("snap.pb").display(),
                root.display(),
                token.display()
            ),
        )
        .expect("config");
        // Bounded: an agent that wrongly starts must fail the test, not hang it.
        let mut agent = node.command("timeout").expect("agent");
        agent.arg("20").arg(nodemesh_testbed::nodemesh_bin()).arg("agent").arg("--config").arg(&config);
        let out = agent.output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the agent started with {}: {stderr}", root.display());
        assert!(stderr.contains(expected) && stderr.contains(&root.display().to_string()), "{stderr}");
    }
}
