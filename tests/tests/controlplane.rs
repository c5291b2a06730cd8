//! Agents driven by the reference control plane (delta xDS) on two fake nodes: interception
//! follows a namespace label within a second on both nodes; the agents keep serving while
//! the control plane is away, serve from disk after a restart without it, and resync when it
//! returns without dropping a connection.

use std::{fs::File, net::IpAddr, path::PathBuf, time::Duration};

use serde_json::{Value, json};

use nodemesh_testbed::{
    Agent, AgentOptions, Cluster, ControlPlane, External, Node, Pod, PodOptions, controlplane,
    scenario::BULK_PORT,
    tools::{self, ArmedProbe},
    wait_for,
};

const WITHIN: f64 = 1.0;

struct TwoNodes {
    cluster: Cluster,
    node1: Node,
    node2: Node,
    ext: External,
    cp: ControlPlane,
    a: Pod,
    b: Pod,
    agent1: Agent,
    agent2: Agent,
}

impl TwoNodes {
    fn start(name: &str, intercept: bool) -> Self {
        let cluster = Cluster::new(name).expect("cluster");
        let node1 = cluster.add_node("node1", 1).expect("node1");
        let node2 = cluster.add_node("node2", 2).expect("node2");
        let ext = cluster.add_external("ext").expect("ext");
        let mut cp = cluster.add_control_plane().expect("cp");
        let a = node1.add_pod("mesh", "a", PodOptions::default()).expect("pod a");
        let b = node2.add_pod("mesh", "b", PodOptions::default()).expect("pod b");
        cp.write_namespace("mesh", intercept).expect("namespace");
        cp.write_pods(&[&node1, &node2]).expect("pods");
        cp.start().expect("start cp");
        ext.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("server");
        tools::wait_listening(&ext.netns_path(), BULK_PORT).expect("listening");
        let options = AgentOptions { xds_address: Some(cp.xds_address()), ..Default::default() };
        let agent1 = node1.start_agent(&options).expect("agent1");
        let agent2 = node2.start_agent(&options).expect("agent2");
        cp.wait_agents(2, Duration::from_secs(10)).expect("agents connected");
        Self { cluster, node1, node2, ext, cp, a, b, agent1, agent2 }
    }

    /// Makes `change` with a probe already connecting in each pod; returns the seconds until
    /// each pod's new connections are `want` (the probes' start-up is not counted).
    fn time_change_both(&self, want: &str, change: impl FnOnce()) -> Vec<f64> {
        let dir = self.cluster.work_dir();
        let mut running = Vec::new();
        for pod in [&self.a, &self.b] {
            let out = dir.join(format!("probe-{}-{want}.out", pod.name));
            let (mut cmd, probe) =
                ArmedProbe::new(IpAddr::from(self.ext.ipv4), BULK_PORT, want, dir, &pod.name);
            cmd.stdout(File::create(&out).expect("out"));
            running.push((pod, pod.spawn(cmd).expect("probe"), out, probe));
        }
        for (.., probe) in &running {
            probe.wait_ready().expect("probe running");
        }
        let now = tools::unix_now();
        for (.., probe) in &running {
            probe.mark(now).expect("mark");
        }
        change();
        running
            .into_iter()
            .map(|(pod, pid, out, _)| {
                let status = pod.wait(pid, Duration::from_secs(15)).expect("probe exit");
                let text = std::fs::read_to_string(&out).expect("probe output");
                assert!(status.success(), "{}: never {want}: {text}", pod.name);
                let r: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
                r["seconds"].as_f64().expect("seconds")
            })
            .collect()
    }

    /// A connection from `pod` held open until released.
    fn hold(&self, pod: &Pod, tag: &str) -> Held {
        let out = self.cluster.work_dir().join(format!("hold-{tag}.out"));
        let release = self.cluster.work_dir().join(format!("hold-{tag}.release"));
        let mut cmd = tools::hold_client(IpAddr::from(self.ext.ipv4), BULK_PORT, &release);
        cmd.stdout(File::create(&out).expect("out"));
        let pid = pod.spawn(cmd).expect("hold");
        wait_for("the held connection", Duration::from_secs(10), || {
            std::fs::read_to_string(&out).is_ok_and(|t| t.starts_with("connected"))
        })
        .expect("connected");
        let local = std::fs::read_to_string(&out)
            .expect("out")
            .lines()
            .next()
            .unwrap_or("")
            .replace("connected ", "");
        Held { pid, out, release, local }
    }
}

struct Held {
    pid: u32,
    out: PathBuf,
    release: PathBuf,
    local: String,
}

impl Held {
    fn finish(self, pod: &Pod) {
        std::fs::write(&self.release, b"").expect("release");
        let status = pod.wait(self.pid, Duration::from_secs(20)).expect("exit");
        let text = std::fs::read_to_string(&self.out).expect("out");
        assert!(status.success(), "a held connection broke: {text}");
    }
}

#[test]
fn a_namespace_label_intercepts_on_both_nodes_within_a_second() {
    let t = TwoNodes::start("cplabel", false);
    t.agent1.wait_enrolled(&[], Duration::from_secs(5)).expect("nothing enrolled yet");

    let took = t.time_change_both("intercepted", || t.cp.write_namespace("mesh", true).expect("label"));
    eprintln!("interception on after {took:?} s (node1, node2)");
    assert!(took.iter().all(|s| *s < WITHIN), "{took:?}");
    t.agent1.wait_enrolled(&["mesh/a"], Duration::from_secs(2)).expect("a enrolled");
    t.agent2.wait_enrolled(&["mesh/b"], Duration::from_secs(2)).expect("b enrolled");

    let held_a = t.hold(&t.a, "a");
    let held_b = t.hold(&t.b, "b");
    assert_eq!((held_a.local.as_str(), held_b.local.as_str()), ("127.0.0.1", "127.0.0.1"));

    let took = t.time_change_both("direct", || t.cp.write_namespace("mesh", false).expect("unlabel"));
    eprintln!("interception off after {took:?} s (node1, node2)");
    assert!(took.iter().all(|s| *s < WITHIN), "{took:?}");
    held_a.finish(&t.a);
    held_b.finish(&t.b);
}

#[test]
fn agents_keep_serving_without_the_control_plane_and_resync_when_it_returns() {
    let mut t = TwoNodes::start("cpaway", true);
    t.agent1.wait_enrolled(&["mesh/a"], Duration::from_secs(5)).expect("a enrolled");
    t.agent2.wait_enrolled(&["mesh/b"], Duration::from_secs(5)).expect("b enrolled");

    // The control plane dies: traffic keeps flowing through the mesh.
    let held = t.hold(&t.a, "before");
    t.cp.kill();
    wait_for("agents to notice", Duration::from_secs(10), || {
        t.agent1.status().is_ok_and(|s| s["sync"]["connected"] == false)
    })
    .expect("disconnected");
    t.time_change_both("intercepted", || {});
    held.finish(&t.a);

    // An agent restarted while the control plane is down serves its state from disk.
    let stopped = t.agent1.terminate(Duration::from_secs(15)).expect("stop");
    assert!(stopped.success());
    t.agent1 = t.agent1.restart(&t.node1).expect("restart");
    let status = t.agent1.wait_enrolled(&["mesh/a"], Duration::from_secs(10)).expect("served from disk");
    assert_eq!(status["sync"]["from_disk"], true, "{}", status["sync"]);
    assert_eq!(status["sync"]["connected"], false);
    t.time_change_both("intercepted", || {});

    // The control plane returns: the agents resync, nothing is dropped or re-enrolled.
    let links_before = t.agent1.status().expect("status")["pods"][0]["links"].clone();
    let held = t.hold(&t.a, "across");
    t.cp.start().expect("restart cp");
    t.cp.wait_agents(2, Duration::from_secs(30)).expect("agents back");
    wait_for("agent1 resynced", Duration::from_secs(10), || {
        t.agent1.status().is_ok_and(|s| s["sync"]["connected"] == true && s["sync"]["from_disk"] == false)
    })
    .expect("resynced");
    let status = t.agent1.status().expect("status");
    assert_eq!(status["pods"][0]["links"], links_before, "resync must not re-enroll the pod");
    held.finish(&t.a);
    t.time_change_both("intercepted", || {});
    let _ = (&t.node2, &t.agent2);
}

#[test]
fn a_malformed_resource_is_nacked_with_its_reason_and_the_old_state_kept() {
    let cluster = Cluster::new("cpnack").expect("cluster");
    let node1 = cluster.add_node("node1", 1).expect("node1");
    let ext = cluster.add_external("ext").expect("ext");
    let mut cp = cluster.add_control_plane().expect("cp");
    let a = node1.add_pod("mesh", "a", PodOptions::default()).expect("pod a");
    let fake = cp.start_fake(&[&node1]).expect("fake xDS server");
    ext.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("server");
    tools::wait_listening(&ext.netns_path(), BULK_PORT).expect("listening");
    let options = AgentOptions { xds_address: Some(cp.xds_address()), ..Default::default() };
    let agent = node1.start_agent(&options).expect("agent");
    agent.wait_enrolled(&["mesh/a"], Duration::from_secs(10)).expect("a enrolled from the fake server");
    let intercepted = |why: &str| {
        let mut cmd = tools::probe(IpAddr::from(ext.ipv4), BULK_PORT, "intercepted", tools::unix_now());
        cmd.args(["--timeout", "5"]);
        let out = a.output(cmd).expect("probe");
        assert!(out.status.success(), "{why}: {}", String::from_utf8_lossy(&out.stdout));
    };
    intercepted("before the bad response");
    wait_for("the first response's ACK", Duration::from_secs(5), || {
        fake.requests().iter().any(|r| r["nonce"] == "1" && r.get("error").is_none())
    })
    .expect("ACK");

    // One response that removes pod a and adds a workload with a 5-byte address.
    fake.send_malformed().expect("trigger");
    let mut nack = Value::Null;
    wait_for("the NACK", Duration::from_secs(5), || {
        nack = fake.requests().into_iter().find(|r| r.get("error").is_some()).unwrap_or(Value::Null);
        !nack.is_null()
    })
    .expect("NACK");
    // The bad response's nonce (its number counts the responses before it, one per type
    // the agent subscribes to).
    assert!(nack["nonce"].as_str().is_some_and(|n| n.starts_with("bad-")), "{nack}");
    assert_eq!(nack["error"]["code"], 3, "INVALID_ARGUMENT: {nack}");
    let reason = nack["error"]["message"].as_str().expect("message");
    assert!(reason.contains("\"Kubernetes//Pod/mesh/broken\""), "names the resource: {reason}");
    assert!(reason.contains("workload.addresses[0]"), "names the field: {reason}");

    // Nothing of the response was applied: a stays enrolled and intercepted.
    let status = agent.status().expect("status");
    assert_eq!(status["sync"]["last_nack"]["reason"], reason, "{}", status["sync"]);
    assert_eq!(status["sync"]["nacks"], 1);
    assert_eq!(status["sync"]["connected"], true);
    let names: Vec<&str> =
        status["pods"].as_array().expect("pods").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["mesh/a"]);
    intercepted("after the NACK");
    let text = agent.cli(&["status"]).expect("status table");
    assert!(text.contains("last NACK") && text.contains("workload.addresses[0]"), "{text}");
}

#[test]
fn a_grpcio_client_built_from_our_protos_receives_well_formed_addresses() {
    let cluster = Cluster::new("cpgrpcio").expect("cluster");
    let node1 = cluster.add_node("node1", 1).expect("node1");
    let node2 = cluster.add_node("node2", 2).expect("node2");
    let mut cp = cluster.add_control_plane().expect("cp");
    let web = PodOptions { labels: [("app".to_owned(), "web".to_owned())].into(), ..Default::default() };
    let a = node1.add_pod("mesh", "a", web.clone()).expect("a");
    let b = node2.add_pod("mesh", "b", web).expect("b");
    // b is a Deployment's replica: its workload is the Deployment.
    node2
        .set_pod_owner(&b, "ReplicaSet", "web-6d4cf56db6", &[("pod-template-hash", "6d4cf56db6")])
        .expect("owner");
    let local = node1.add_pod("plain", "local", PodOptions::default()).expect("local");
    let _elsewhere = node2.add_pod("plain", "elsewhere", PodOptions::default()).expect("elsewhere");
    cp.write_namespace("mesh", true).expect("ns mesh");
    cp.write_namespace("plain", false).expect("ns plain");
    cp.write_pods(&[&node1, &node2]).expect("pods");
    cp.write(
        "services.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: mesh}\n\
         spec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    )
    .expect("service");
    cp.start().expect("cp");

    let got = cp.grpcio_subscribe("node1").expect("grpcio client");
    assert_eq!(got["type_url"], "type.googleapis.com/istio.workload.Address");
    assert!(!got["nonce"].as_str().unwrap_or("").is_empty(), "a nonce to ACK: {got}");
    let resources = got["resources"].as_array().expect("resources");
    let mut names: Vec<&str> = resources.iter().filter_map(|r| r["name"].as_str()).collect();
    names.sort_unstable();
    // node1 sees its own pods, the mesh's workloads and the service; not a plain pod elsewhere.
    assert_eq!(
        names,
        [
            "Kubernetes//Pod/mesh/a",
            "Kubernetes//Pod/mesh/b",
            "Kubernetes//Pod/plain/local",
            "mesh/web.mesh.svc.cluster.local",
        ],
        "{got}"
    );
    for r in resources {
        assert_eq!(r["unknown_fields"], 0, "{r}");
        assert!(!r["version"].as_str().unwrap_or("").is_empty(), "{r}");
    }
    let find = |name: &str| resources.iter().find(|r| r["name"] == name).expect(name);
    let placed = [
        (&a, "node1", "HBONE", "a", "web"),
        (&b, "node2", "HBONE", "web", "web"),
        (&local, "node1", "NONE", "local", "local"),
    ];
    for (pod, node, tunnel, workload, canonical) in placed {
        let w = find(&controlplane::workload_uid(pod));
        assert_eq!(w["kind"], "workload");
        assert_eq!(w["uid"], controlplane::workload_uid(pod));
        assert_eq!((&w["pod"], &w["namespace"]), (&json!(pod.name), &json!(pod.namespace)));
        assert_eq!((&w["workload_name"], &w["canonical_name"]), (&json!(workload), &json!(canonical)), "{w}");
        assert_eq!(w["canonical_revision"], "latest");
        assert_eq!(w["addresses"], json!([pod.ipv4.to_string()]), "{w}");
        assert_eq!(w["node"], node);
        assert_eq!(w["tunnel_protocol"], tunnel, "{w}");
        assert_eq!(w["service_account"], "default");
        assert_eq!(w["trust_domain"], "cluster.local");
        assert_eq!(w["extensions"], json!(["nodemesh.io/pod-uid"]));
    }
    for pod in [&a, &b] {
        let w = find(&controlplane::workload_uid(pod));
        assert_eq!(w["services"], json!({"mesh/web.mesh.svc.cluster.local": [[80, 8080]]}), "{w}");
    }
    let svc = find("mesh/web.mesh.svc.cluster.local");
    assert_eq!(svc["kind"], "service");
    assert_eq!((&svc["service_name"], &svc["namespace"]), (&json!("web"), &json!("mesh")));
    assert_eq!(svc["hostname"], "web.mesh.svc.cluster.local");
    assert_eq!(svc["addresses"], json!(["10.96.0.10"]));
    assert_eq!(svc["ports"], json!([[80, 8080]]));
}

/// The per-pod `nodemesh.io/splice` label works with a control plane too (it reaches the
/// agent in the `nodemesh.io/labels` Workload extension): a pod labelled `disabled` has its
/// connections copied while its unlabelled neighbour's are spliced. Before the labels were
/// carried, xDS pods had none and both were spliced.
#[test]
fn a_pods_splice_label_reaches_the_agent_over_xds() {
    let cluster = Cluster::new("cp-labels").expect("cluster");
    let node = cluster.add_node("node1", 1).expect("node1");
    let mut cp = cluster.add_control_plane().expect("cp");
    let plain = node.add_pod("mesh", "plain", PodOptions::default()).expect("pod");
    let labelled = PodOptions {
        labels: [("nodemesh.io/splice".to_owned(), "disabled".to_owned())].into(),
        ..PodOptions::default()
    };
    let nosplice = node.add_pod("mesh", "nosplice", labelled).expect("pod");
    let server = node.add_pod("mesh", "server", PodOptions::default()).expect("pod");
    cp.write_namespace("mesh", true).expect("namespace");
    cp.write_pods(&[&node]).expect("pods");
    cp.start().expect("start cp");
    server.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("server");
    tools::wait_listening(&server.netns_path(), BULK_PORT).expect("listening");
    let agent = node
        .start_agent(&AgentOptions {
            xds_address: Some(cp.xds_address()),
            splice: true,
            ..Default::default()
        })
        .expect("agent");
    agent
        .wait_enrolled(&["mesh/nosplice", "mesh/plain", "mesh/server"], Duration::from_secs(15))
        .expect("enrolled");

    for pod in [&plain, &nosplice] {
        // Enough bytes to cross the hand-off threshold.
        let out = pod.output(tools::bulk_client(IpAddr::from(server.ipv4), BULK_PORT, 1 << 20, 1 << 20));
        let r = tools::json_result("bulk", &out.expect("run")).expect("bulk");
        assert_eq!(r["ok"], true, "{r}");
    }
    let spliced = |name: &str| agent.pod_stats(name).expect("stats")["outbound"]["spliced"].as_u64();
    let accepted = |name: &str| agent.pod_stats(name).expect("stats")["outbound"]["accepted"].as_u64();
    assert_eq!((accepted("mesh/plain"), spliced("mesh/plain")), (Some(1), Some(1)));
    assert_eq!((accepted("mesh/nosplice"), spliced("mesh/nosplice")), (Some(1), Some(0)));
    let status = agent.status().expect("status");
    let pods = status["pods"].as_array().expect("pods");
    let splice_of = |name: &str| pods.iter().find(|p| p["name"] == name).map(|p| p["splice"].clone());
    assert_eq!(splice_of("mesh/nosplice"), Some(json!(false)), "{status:#}");
    assert_eq!(splice_of("mesh/plain"), Some(json!(true)));
}
