//! L4 authorization from the control plane's AuthorizationPolicies, enforced by the node
//! proxy: a pod of this node is authenticated (the proxy accepted its connection inside the
//! pod), plaintext from the network is not; denied connections are reset and show up as
//! `denied` flows with the policy's reason; a policy change applies to new connections.

use std::{net::IpAddr, process::Output, time::Duration};

use serde_json::Value;

use nodemesh_testbed::{
    Agent, AgentOptions, Cluster, ControlPlane, External, Pod, PodOptions, require_root, scenario::BULK_PORT,
    tools, wait_for,
};

/// ALLOW for the server: only callers from namespace `trusted`.
const ONLY_TRUSTED: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-callers, namespace: mesh}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [trusted]}}]}]
"#;

/// DENY in namespace mesh: the client's principal, on the server's port.
const NO_CLIENT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: mesh}
spec:
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/default]}}], to: [{operation: {ports: ["7000"]}}]}]
"#;

struct Mesh {
    cp: ControlPlane,
    ext: External,
    client: Pod,
    server: Pod,
    caller: Pod,
    agent: Agent,
    /// Dropped last (fields drop in order): the agent stops before its pods go.
    _cluster: Cluster,
}

impl Mesh {
    fn start() -> Self {
        require_root();
        let cluster = Cluster::new("authz").expect("cluster");
        let node = cluster.add_node("node1", 1).expect("node");
        let ext = cluster.add_external("ext").expect("ext");
        let mut cp = cluster.add_control_plane().expect("cp");
        let client = node.add_pod("mesh", "client", PodOptions::default()).expect("client");
        let app =
            |name: &str| PodOptions { labels: [("app".into(), name.into())].into(), ..Default::default() };
        let server = node.add_pod("mesh", "server", app("server")).expect("server");
        let caller = node.add_pod("trusted", "caller", PodOptions::default()).expect("caller");
        cp.write_namespace("mesh", true).expect("ns mesh");
        cp.write_namespace("trusted", true).expect("ns trusted");
        cp.write_pods(&[&node]).expect("pods");
        cp.write("policy.yaml", ONLY_TRUSTED).expect("policy");
        cp.start().expect("cp");
        server.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("bulk server");
        tools::wait_listening(&server.netns_path(), BULK_PORT).expect("listening");
        let agent = node
            .start_agent(&AgentOptions { xds_address: Some(cp.xds_address()), ..Default::default() })
            .expect("agent");
        agent
            .wait_enrolled(&["mesh/client", "mesh/server", "trusted/caller"], Duration::from_secs(10))
            .expect("enrolled");
        wait_for("the policy", Duration::from_secs(10), || {
            agent.status().is_ok_and(|s| s["sync"]["counts"]["authorizations"].as_u64() == Some(1))
        })
        .expect("policy received");
        Self { _cluster: cluster, cp, ext, client, server, caller, agent }
    }

    /// A 64 KiB exchange with the server from `from` (a pod or the external host).
    fn call(&self, from: &dyn Fn(std::process::Command) -> Output) -> Output {
        from(tools::bulk_client(IpAddr::V4(self.server.ipv4), BULK_PORT, 65_536, 65_536))
    }

    /// The latest closed `direction` flow matching `query`, towards the server's port
    /// (`/flows` lists the newest first).
    fn last_flow(&self, direction: &str, query: &str) -> Value {
        let mut last = Vec::new();
        let to_server = |f: &&Value| {
            f["direction"] == direction
                && f["destination"]["address"].as_str().is_some_and(|a| a.ends_with(&format!(":{BULK_PORT}")))
        };
        for _ in 0..50 {
            last = self.agent.flows(&format!("state=closed&{query}")).expect("flows");
            if let Some(f) = last.iter().find(to_server) {
                return f.clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no closed flow for {query}: {last:#?}");
    }
}

/// Runs a client inside `pod`.
fn in_pod(pod: &Pod) -> impl Fn(std::process::Command) -> Output + '_ {
    move |cmd| pod.output(cmd).expect("bulk client")
}

fn allowed(out: &Output) -> bool {
    out.status.success() && tools::json_result("bulk client", out).is_ok_and(|r| r["ok"] == true)
}

/// Refused the way a policy refuses: a reset, which the client sees on receive, on send (a
/// broken pipe) or, when it lands before the client looks, as a socket no longer connected.
fn reset(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    !out.status.success()
        && ["Connection reset", "Broken pipe", "Transport endpoint is not connected"]
            .iter()
            .any(|e| stderr.contains(e))
}

#[test]
fn policies_admit_authenticated_callers_deny_the_rest_and_follow_changes() {
    let m = Mesh::start();

    // The trusted namespace's pod: authenticated on this node, matched, byte-exact.
    let out = m.call(&in_pod(&m.caller));
    assert!(allowed(&out), "trusted caller refused: {out:?}\n{:#?}", m.agent.flows("state=closed"));
    let flow = m.last_flow("outbound", "pod=trusted/caller");
    assert_eq!(flow["verdict"], "allowed", "{flow:#}");

    // A pod of another namespace: reset before any byte reaches the server.
    let out = m.call(&in_pod(&m.client));
    assert!(reset(&out), "mesh/client was not reset: {out:?}");
    let flow = m.last_flow("outbound", "pod=mesh/client&verdict=denied");
    assert_eq!(flow["reason"], "no_allow_policy_matched", "{flow:#}");
    assert_eq!((&flow["source"]["pod"], &flow["destination"]["pod"]), (&"client".into(), &"server".into()));
    assert_eq!(flow["bytes_sent"], 0, "{flow:#}");

    // Plaintext from outside the node is unauthenticated: no namespace to match.
    let ext = |cmd: std::process::Command| m.ext.output(cmd).expect("bulk client");
    let out = m.call(&ext);
    assert!(reset(&out), "the external host was not reset: {out:?}");
    let flow = m.last_flow("inbound", "pod=mesh/server&verdict=denied");
    let from_ext = flow["source"]["address"].as_str().is_some_and(|a| a.starts_with(&m.ext.ipv4.to_string()));
    assert!(from_ext, "{flow:#}\n{:#?}", m.agent.flows("state=closed"));

    // Denials are counted by reason.
    let metrics = m.agent.http_get("http://127.0.0.1:15020/metrics").expect("metrics");
    let denied = metrics
        .lines()
        .find(|l| l.starts_with("nodemesh_connections_failed_total{") && l.contains("verdict=\"denied\""))
        .unwrap_or_else(|| panic!("no denied counter in\n{metrics}"));
    assert!(denied.ends_with(" 2"), "{denied}");

    // Admit namespace mesh too, plus the external host by address; then a DENY on the
    // server's port for the client wins over both.
    let both = ONLY_TRUSTED.replace(
        "[{from: [{source: {namespaces: [trusted]}}]}]",
        &format!(
            "[{{from: [{{source: {{namespaces: [trusted, mesh]}}}}, {{source: {{ipBlocks: [{}/32]}}}}]}}]",
            m.ext.ipv4
        ),
    );
    m.cp.write("policy.yaml", &both).expect("policy");
    wait_for("the client admitted", Duration::from_secs(5), || allowed(&m.call(&in_pod(&m.client))))
        .expect("a policy change applies to new connections");
    assert!(allowed(&m.call(&ext)), "the external host's address is admitted");

    m.cp.write("deny.yaml", &NO_CLIENT.replace("7000", &BULK_PORT.to_string())).expect("deny policy");
    wait_for("the client denied", Duration::from_secs(5), || reset(&m.call(&in_pod(&m.client))))
        .expect("the DENY applies");
    let flow = m.last_flow("outbound", "pod=mesh/client&verdict=denied");
    assert_eq!(flow["reason"], "denied_by:mesh/no-client", "{flow:#}");
    assert!(allowed(&m.call(&in_pod(&m.caller))), "other principals still pass");
}
