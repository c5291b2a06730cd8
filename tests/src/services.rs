//! Two fake nodes for the service-routing tests, with identities and HBONE between them:
//! node1 runs agent1 and the client pods, node2 runs agent2; endpoint pods go on either.
//! Every pod is in the intercepted namespace `mesh`; an endpoint pod carries an `app`
//! label for the Services that select it, and serves with `tools/name_server.py`.

use std::{collections::BTreeMap, net::IpAddr, process::Command, time::Duration};

use serde_json::Value;

use crate::{Agent, AgentOptions, Cluster, ControlPlane, Node, Pod, PodOptions, tools, wait_for};

/// The port every endpoint serves on, and the port its Services expose.
pub const TARGET_PORT: u16 = 8080;
pub const SERVICE_PORT: u16 = 80;

/// Where the pods go and what the control plane starts with.
#[derive(Default)]
pub struct Layout<'a> {
    /// (node: 0 or 1, pod name, `app` label) of each endpoint pod.
    pub endpoints: &'a [(usize, &'a str, &'a str)],
    /// Client pods on node1: (name, service account).
    pub clients: &'a [(&'a str, &'a str)],
    /// Endpoint pods the control plane is not told about yet ([`Services::publish`]).
    pub unpublished: &'a [&'a str],
    /// Services and policies, as YAML documents, written before the control plane starts.
    pub objects: &'a str,
    /// Every pod gets an IPv6 address too.
    pub ipv6: bool,
    /// Named container ports of endpoint pods: (pod, port name, port).
    pub named_ports: &'a [(&'a str, &'a str, u16)],
}

pub struct Services {
    pub cluster: Cluster,
    pub nodes: [Node; 2],
    pub cp: ControlPlane,
    pub pods: BTreeMap<String, Pod>,
    pub agent1: Agent,
    pub agent2: Agent,
}

impl Services {
    pub fn start(name: &str, layout: &Layout<'_>) -> Self {
        let cluster = Cluster::new(name).expect("cluster");
        let nodes = [1, 2].map(|i| cluster.add_node(&format!("node{i}"), i).expect("node"));
        let mut cp = cluster.add_control_plane().expect("cp");
        cp.enable_ca(86_400).expect("ca");
        let mut pods = BTreeMap::new();
        for (client, account) in layout.clients {
            let options = PodOptions {
                service_account: Some((*account).into()),
                ipv6: layout.ipv6,
                ..Default::default()
            };
            pods.insert((*client).to_owned(), nodes[0].add_pod("mesh", client, options).expect("client pod"));
        }
        for (node, pod, app) in layout.endpoints {
            let labels = BTreeMap::from([("app".to_owned(), (*app).to_owned())]);
            let named_ports = layout
                .named_ports
                .iter()
                .filter(|(p, _, _)| p == pod)
                .map(|(_, name, port)| ((*name).to_owned(), *port))
                .collect();
            let options = PodOptions { labels, ipv6: layout.ipv6, named_ports, ..Default::default() };
            pods.insert((*pod).to_owned(), nodes[*node].add_pod("mesh", pod, options).expect("endpoint pod"));
        }
        cp.write_namespace("mesh", true).expect("namespace");
        cp.write_pods_except(&[&nodes[0], &nodes[1]], layout.unpublished).expect("pods");
        cp.write("objects.yaml", layout.objects).expect("objects");
        cp.start().expect("start cp");
        let enrolled = |node: usize| -> Vec<String> {
            let on_node = |p: &&Pod| nodes[node].pod_records().iter().any(|r| r.name == p.name);
            pods.values()
                .filter(on_node)
                .filter(|p| !layout.unpublished.contains(&p.name.as_str()))
                .map(|p| format!("mesh/{}", p.name))
                .collect()
        };
        let agent = |node: usize| {
            let (address, extra_config) = cp.mesh_agent_config(&nodes[node].name).expect("mesh config");
            let log = std::env::var("NM_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into());
            let options =
                AgentOptions { xds_address: Some(address), extra_config, log, ..Default::default() };
            let agent = nodes[node].start_agent(&options).expect("agent");
            let names = enrolled(node);
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            agent.wait_enrolled(&names, Duration::from_secs(15)).expect("enrolled");
            agent
        };
        let (agent1, agent2) = (agent(0), agent(1));
        cp.wait_agents(2, Duration::from_secs(10)).expect("agents connected over TLS");
        let hosts = [!enrolled(0).is_empty(), !enrolled(1).is_empty()];
        let services = Self { cluster, nodes, cp, pods, agent1, agent2 };
        services.wait_certificates(&services.agent1, hosts[0]);
        services.wait_certificates(&services.agent2, hosts[1]);
        services
    }

    /// Waits until every identity the agent holds has a valid certificate (and, when it
    /// hosts pods, that it holds one).
    fn wait_certificates(&self, agent: &Agent, hosts_pods: bool) {
        wait_for("valid certificates", Duration::from_secs(15), || {
            let status = agent.status().unwrap_or_default();
            status["certificates"]
                .as_array()
                .is_some_and(|c| (!hosts_pods || !c.is_empty()) && c.iter().all(|c| c["state"] == "valid"))
        })
        .expect("certificates");
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.get(name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Starts `name_server.py` in `pod` (named after it, `delay_ms` slow); returns its pid
    /// once it listens.
    pub fn serve(&self, pod: &str, delay_ms: u32) -> u32 {
        self.serve_on(pod, TARGET_PORT, delay_ms)
    }

    /// The same, on `port`.
    pub fn serve_on(&self, pod: &str, port: u16, delay_ms: u32) -> u32 {
        let pod = self.pod(pod);
        let mut cmd = tools::name_server(&pod.name, port, delay_ms);
        cmd.stdout(std::process::Stdio::null());
        let pid = pod.spawn(cmd).expect("name_server");
        tools::wait_listening(&pod.netns_path(), port).expect("endpoint listening");
        pid
    }

    /// Starts `nm-loadgen http-server` in `pod` on the target port, named after the pod, with
    /// `extra` flags; returns its pid once it listens.
    pub fn serve_http(&self, pod: &str, extra: &[&str]) -> u32 {
        let pod = self.pod(pod);
        let mut cmd = tools::loadgen_http_server(&pod.name, TARGET_PORT, extra);
        cmd.stdout(std::process::Stdio::null());
        let pid = pod.spawn(cmd).expect("nm-loadgen http-server");
        tools::wait_listening(&pod.netns_path(), TARGET_PORT).expect("endpoint listening");
        pid
    }

    /// Starts `nm-loadgen server` in `pod` on the target port, waiting `delay_us` before each
    /// response (a slow endpoint); returns its pid once it listens.
    pub fn serve_loadgen(&self, pod: &str, delay_us: u32) -> u32 {
        let pod = self.pod(pod);
        let mut cmd = tools::loadgen_server(TARGET_PORT);
        cmd.args(["--delay-us", &delay_us.to_string()]).stdout(std::process::Stdio::null());
        let pid = pod.spawn(cmd).expect("nm-loadgen server");
        tools::wait_listening(&pod.netns_path(), TARGET_PORT).expect("endpoint listening");
        pid
    }

    /// How many connections agent1's balancer sent to each endpoint of `service`, by pod.
    pub fn picks(&self, service: &str) -> BTreeMap<String, u64> {
        let state = self.service_state(service).unwrap_or_default();
        state["endpoints"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|e| (e["pod"].as_str().unwrap_or("?").to_owned(), e["picks"].as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops (and reaps) the server `serve` started in `pod`.
    pub fn stop(&self, pod: &str, pid: u32) {
        self.pod(pod).kill(pid);
    }

    /// Runs `service_client.py <mode>` in the client pod `from` against `vip`; its JSON.
    pub fn client(&self, from: &str, mode: &str, vip: IpAddr, args: &[&str]) -> Value {
        let out =
            self.pod(from).output(tools::service_client(mode, vip, SERVICE_PORT, args)).expect("client");
        tools::json_result("service_client.py", &out).expect("client result")
    }

    /// The same, started in the background; its stdout goes to `out`.
    pub fn spawn_client(
        &self,
        from: &str,
        mode: &str,
        vip: IpAddr,
        args: &[&str],
        out: &std::path::Path,
    ) -> u32 {
        let mut cmd: Command = tools::service_client(mode, vip, SERVICE_PORT, args);
        cmd.stdout(std::fs::File::create(out).expect("client output"));
        self.pod(from).spawn(cmd).expect("client")
    }

    /// Tells the control plane about every pod, the ones held back included.
    pub fn publish_all(&self) {
        self.cp.write_pods(&[&self.nodes[0], &self.nodes[1]]).expect("pods");
    }

    /// Replaces the services and policies the control plane reads.
    pub fn write_objects(&self, yaml: &str) {
        self.cp.write("objects.yaml", yaml).expect("objects");
    }

    /// agent1's balancing state of `service` (`mesh/<name>.mesh.svc.cluster.local`), once it
    /// has one.
    pub fn service_state(&self, name: &str) -> Option<Value> {
        let status = self.agent1.status().ok()?;
        let host = service_host(name);
        status["services"].as_array()?.iter().find(|s| s["service"] == host.as_str()).cloned()
    }

    /// Waits until agent1's directory shows `service` with `n` endpoints.
    pub fn wait_endpoints(&self, service: &str, n: usize) {
        let host = service_host(service);
        wait_for(&format!("{n} endpoints of {service} on agent1"), Duration::from_secs(15), || {
            let dump = self.agent1.http_get("http://127.0.0.1:15000/config_dump").unwrap_or_default();
            let dump: Value = serde_json::from_str(&dump).unwrap_or_default();
            let addresses = dump["xds"]["addresses"].as_object().cloned().unwrap_or_default();
            let backing = addresses
                .values()
                .filter(|a| {
                    a["Workload"]["healthy"] == true
                        && a["Workload"]["services"]
                            .as_array()
                            .is_some_and(|s| s.iter().any(|s| s[0] == host.as_str()))
                })
                .count();
            backing == n
        })
        .expect("endpoints");
    }
}

/// The `namespace/hostname` the mesh names a service of namespace `mesh` by.
pub fn service_host(name: &str) -> String {
    format!("mesh/{name}.mesh.svc.cluster.local")
}

/// A Service of namespace `mesh` at `vip` selecting `app`, port 80 → 8080, with `spec`
/// (YAML mapping lines, indented by four) added.
pub fn service_yaml(name: &str, app: &str, vip: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: mesh}}\nspec:\n  \
         clusterIP: {vip}\n  selector: {{app: {app}}}\n  ports: [{{name: tcp, port: {SERVICE_PORT}, targetPort: {TARGET_PORT}}}]\n{spec}"
    )
}

/// How many connections each endpoint took, from a client's JSON.
pub fn by_endpoint(result: &Value) -> BTreeMap<String, u64> {
    result["by_endpoint"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

/// The failures a client saw.
pub fn failures(result: &Value) -> Vec<Value> {
    result["failures"].as_array().cloned().unwrap_or_default()
}
