//! The benchmark's fake cluster.
//!
//! Every scenario uses the *same* client pod and the same server pods, so that what differs
//! between scenarios is the path alone: pods differ in ways that move latency by more than
//! the effects measured here (seen: 10 µs between two pod pairs running identical code). The
//! path is chosen by the destination port and one pod label:
//!
//! | scenario | port | path |
//! |---|---|---|
//! | `direct` | 9101, excluded from interception both ways | veth, bridge, veth |
//! | `mesh` | 9100 | the agent, splice on (pods labelled `nodemesh.io/splice=enabled`) |
//! | `mesh_nosockmap` | 9100 | the agent, splice off (the label flipped to `disabled`) |
//! | `sidecar` | 9102, excluded from interception | nftables REDIRECT in the client pod to a sidecar process in that pod |
//!
//! and the same for `xnode_*` against a server pod on node 2 (`xnode_mesh_plaintext`: agents
//! without identities, plain TCP between them). Then the agents restart against a control
//! plane with a CA, and `xnode_mesh` measures the same pods' traffic in mutual TLS (HBONE),
//! interleaved with `xnode_direct` again. Each port has an event-driven
//! twin three above it (`nm-loadgen server --async` on 9103–9105, excluded alike), which the
//! concurrency-64 load uses.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use nodemesh_testbed::{Agent, AgentOptions, Cluster, ControlPlane, Node, Pod, PodOptions, tools, wait_for};

/// `nm-loadgen server` ports in every server pod.
pub const MESH_PORT: u16 = 9100;
pub const DIRECT_PORT: u16 = 9101;
/// The service benchmark's second target port: `server-4` answers 5 ms late there.
pub const SLOW_PORT: u16 = 9106;
/// How late `server-4` answers on [`SLOW_PORT`].
const SLOW_DELAY_US: &str = "5000";
const SIDECAR_PORT: u16 = 9102;
/// The HTTP benchmark's ports (`http.rs`): `nm-loadgen http-server` through the mesh, direct
/// (excluded both ways), and through an HTTP sidecar (excluded).
pub const HTTP_PORT: u16 = 9110;
pub const HTTP_DIRECT_PORT: u16 = 9111;
pub const HTTP_SIDECAR_PORT: u16 = 9112;
/// The HTTP sidecar's listener (`nodemesh sidecar --http`).
const HTTP_SIDECAR_LISTEN: u16 = 15102;
/// `nm-loadgen server --async` listens on each of the ports above plus this.
pub const ASYNC_OFFSET: u16 = 3;
/// The sidecar's listener (15001 is the agent's, in the same pod) and the SO_MARK its own
/// connections carry so the REDIRECT rule skips them. Not Istio's 1337: with identities on,
/// the agent routes packets marked 1337 back into the pod (`pods::transparent`), which would
/// leave the sidecar's connections with no route.
const SIDECAR_LISTEN: u16 = 15101;
const SIDECAR_MARK: u32 = 1338;
const SPLICE_LABEL: &str = "nodemesh.io/splice";
/// The pods on node 2.
const NODE2_PODS: [&str; 3] = ["mesh/server-2", "mesh/server-3", "mesh/server-4"];

/// Which processes do the proxying in a scenario (for CPU and RSS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxies {
    None,
    Agent1,
    BothAgents,
    Sidecar,
}

pub struct Scenario {
    pub name: &'static str,
    pub server: IpAddr,
    pub port: u16,
    pub proxies: Proxies,
    /// The splice setting the pods must have (mesh scenarios only).
    pub splice: Option<bool>,
}

pub struct Topology {
    /// Kept for its drop, which removes everything the benchmark created.
    cluster: Cluster,
    pub node1: Node,
    node2: Node,
    pub agent1: Agent,
    pub agent2: Agent,
    pub client: Pod,
    server: Pod,
    server2: Pod,
    /// More endpoints of the service benchmark's Services, on node 2.
    server3: Pod,
    server4: Pod,
    sidecar_pid: u32,
    /// The agents' options (without a control plane), for restarting them.
    options: AgentOptions,
    /// With identities on: the control plane and its CA.
    pub control_plane: Option<ControlPlane>,
}

impl Topology {
    pub fn start(bin_dir: &Path, agent_config: &str) -> anyhow::Result<Self> {
        let cluster = Cluster::new("bench")?;
        let node1 = cluster.add_node("node1", 1)?;
        let node2 = cluster.add_node("node2", 2)?;
        let spliced = PodOptions {
            labels: BTreeMap::from([(SPLICE_LABEL.into(), "enabled".into())]),
            ..Default::default()
        };
        let client = node1.add_pod("mesh", "client", spliced.clone())?;
        // `bench-http` labels: the endpoint of the HTTP benchmark's same-node (`local`) and
        // cross-node (`remote`) Services.
        let mut local_http = spliced.clone();
        local_http.labels.insert("bench-http".into(), "local".into());
        let server = node1.add_pod("mesh", "server", local_http)?;
        // Node 2's servers are the endpoints of the service benchmark's Services too.
        let mut endpoint = spliced;
        endpoint.labels.insert("app".into(), "bench".into());
        // server-2 is also the one endpoint of `bench-one` (services.rs).
        let mut first = endpoint.clone();
        first.labels.insert("bench-one".into(), "yes".into());
        first.labels.insert("bench-http".into(), "remote".into());
        let server2 = node2.add_pod("mesh", "server-2", first)?;
        let server3 = node2.add_pod("mesh", "server-3", endpoint.clone())?;
        let server4 = node2.add_pod("mesh", "server-4", endpoint)?;
        for node in [&node1, &node2] {
            node.set_intercept("mesh", Some("enabled"))?;
        }
        // A connection-rate test opens tens of thousands of connections in seconds; without
        // TIME_WAIT reuse (the default allows it on loopback only) the client runs out of
        // ports over veth and measures port search instead. Load testers always set this.
        client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        client.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;

        let loadgen = bin_dir.join("nm-loadgen");
        for pod in [&server, &server2] {
            for port in [MESH_PORT, DIRECT_PORT, SIDECAR_PORT] {
                let mut cmd = Command::new(&loadgen);
                cmd.args(["server", "--port", &port.to_string()]);
                pod.spawn(cmd)?;
                let mut cmd = Command::new(&loadgen);
                cmd.args(["server", "--async", "--port", &(port + ASYNC_OFFSET).to_string()]);
                pod.spawn(cmd)?;
            }
        }
        for (pod, delay) in [(&server2, "0"), (&server3, "0"), (&server4, SLOW_DELAY_US)] {
            for port in [MESH_PORT, SLOW_PORT] {
                let delay = if port == SLOW_PORT { delay } else { "0" };
                if pod.name != "server-2" || port == SLOW_PORT {
                    let mut cmd = Command::new(&loadgen);
                    cmd.args(["server", "--port", &port.to_string(), "--delay-us", delay]);
                    pod.spawn(cmd)?;
                }
            }
        }
        for pod in [&server, &server2] {
            for port in [MESH_PORT, DIRECT_PORT, SIDECAR_PORT] {
                tools::wait_listening(&pod.netns_path(), port)?;
                tools::wait_listening(&pod.netns_path(), port + ASYNC_OFFSET)?;
            }
        }
        for pod in [&server2, &server3, &server4] {
            tools::wait_listening(&pod.netns_path(), SLOW_PORT)?;
        }
        tools::wait_listening(&server3.netns_path(), MESH_PORT)?;
        tools::wait_listening(&server4.netns_path(), MESH_PORT)?;

        let nodemesh = bin_dir.join("nodemesh");
        let sidecar_pid = start_sidecar(&client, &nodemesh)?;
        // The HTTP benchmark's sidecar (`http.rs`), started now like the other: once the load
        // has run, the client pod's ephemeral ports (widened above) may hold its port.
        start_redirected_sidecar(
            &client,
            &nodemesh,
            "nmsidecarhttp",
            &[HTTP_SIDECAR_PORT],
            HTTP_SIDECAR_LISTEN,
            &["--http"],
        )?;
        let options = AgentOptions {
            // The node default does not matter: the pods' label decides.
            splice: true,
            // Measure the agent's own default hand-off point, and its default of splicing
            // only loopback legs.
            splice_after_bytes: None,
            splice_network_legs: Some(false),
            binary: Some(nodemesh),
            extra_config: format!(
                "excluded_outbound_ports: [{d}, {s}, {da}, {sa}, {hd}, {hs}]\n\
                 excluded_inbound_ports: [{d}, {s}, {da}, {sa}, {hd}, {hs}]\n{agent_config}\n",
                d = DIRECT_PORT,
                s = SIDECAR_PORT,
                da = DIRECT_PORT + ASYNC_OFFSET,
                sa = SIDECAR_PORT + ASYNC_OFFSET,
                hd = HTTP_DIRECT_PORT,
                hs = HTTP_SIDECAR_PORT,
            ),
            ..Default::default()
        };
        let agent1 = node1.start_agent(&options)?;
        let agent2 = node2.start_agent(&options)?;
        agent1.wait_enrolled(&["mesh/client", "mesh/server"], Duration::from_secs(15))?;
        agent2.wait_enrolled(&NODE2_PODS, Duration::from_secs(15))?;
        Ok(Self {
            cluster,
            node1,
            node2,
            agent1,
            agent2,
            client,
            server,
            server2,
            server3,
            server4,
            sidecar_pid,
            options,
            control_plane: None,
        })
    }

    /// Restarts both agents against a control plane with a CA, so that cross-node traffic
    /// between the (captured) pods rides HBONE: mutual TLS. The same pods, the same labels.
    pub fn enable_identities(&mut self, bin_dir: &Path) -> anyhow::Result<()> {
        let mut cp = self.cluster.add_control_plane()?;
        cp.binary = bin_dir.join("nodemesh");
        cp.enable_ca(86_400)?;
        cp.write_namespace("mesh", true)?;
        cp.write_pods(&[&self.node1, &self.node2])?;
        cp.start()?;
        for agent in [&self.agent1, &self.agent2] {
            agent.terminate(Duration::from_secs(10))?;
        }
        let start = |node: &Node, pods: &[&str]| -> anyhow::Result<Agent> {
            let (address, mesh) = cp.mesh_agent_config(&node.name)?;
            let options = AgentOptions {
                xds_address: Some(address),
                extra_config: format!("{}{mesh}", self.options.extra_config),
                ..self.options.clone()
            };
            let agent = node.start_agent(&options)?;
            agent.wait_enrolled(pods, Duration::from_secs(15))?;
            wait_for(&format!("certificates on {}", node.name), Duration::from_secs(15), || {
                agent.status().is_ok_and(|s| {
                    s["certificates"]
                        .as_array()
                        .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["state"] == "valid"))
                })
            })?;
            Ok(agent)
        };
        self.agent1 = start(&self.node1, &["mesh/client", "mesh/server"])?;
        self.agent2 = start(&self.node2, &NODE2_PODS)?;
        self.control_plane = Some(cp);
        Ok(())
    }

    /// The scenarios measured once identities are on: mutual TLS between nodes, against the
    /// same direct path.
    pub fn identity_scenarios(&self) -> Vec<Scenario> {
        let remote = IpAddr::from(self.server2.ipv4);
        vec![
            Scenario {
                name: "xnode_direct",
                server: remote,
                port: DIRECT_PORT,
                proxies: Proxies::None,
                splice: None,
            },
            Scenario {
                name: "xnode_mesh",
                server: remote,
                port: MESH_PORT,
                proxies: Proxies::BothAgents,
                splice: None,
            },
        ]
    }

    /// The same-node and the cross-node server pods.
    pub fn server_pods(&self) -> [&Pod; 2] {
        [&self.server, &self.server2]
    }

    /// The cross-node server pod's address.
    pub fn remote_server(&self) -> IpAddr {
        IpAddr::from(self.server2.ipv4)
    }

    /// The scenarios, in a fixed order.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let (local, remote) = (IpAddr::from(self.server.ipv4), IpAddr::from(self.server2.ipv4));
        let s = |name, server, port, proxies, splice| Scenario { name, server, port, proxies, splice };
        vec![
            s("direct", local, DIRECT_PORT, Proxies::None, None),
            self.mesh_scenario(),
            s("mesh_nosockmap", local, MESH_PORT, Proxies::Agent1, Some(false)),
            s("sidecar", local, SIDECAR_PORT, Proxies::Sidecar, None),
            s("xnode_direct", remote, DIRECT_PORT, Proxies::None, None),
            s("xnode_mesh_plaintext", remote, MESH_PORT, Proxies::BothAgents, Some(true)),
        ]
    }

    /// Same-node, through the agent, spliced.
    pub fn mesh_scenario(&self) -> Scenario {
        Scenario {
            name: "mesh",
            server: IpAddr::from(self.server.ipv4),
            port: MESH_PORT,
            proxies: Proxies::Agent1,
            splice: Some(true),
        }
    }

    /// Puts the pods' splice label where the scenario needs it and waits until the agents
    /// have applied it.
    pub fn prepare(&self, scenario: &Scenario) -> anyhow::Result<()> {
        let Some(splice) = scenario.splice else { return Ok(()) };
        let value = if splice { "enabled" } else { "disabled" };
        for (node, agent, pods) in [
            (&self.node1, &self.agent1, vec![&self.client, &self.server]),
            (&self.node2, &self.agent2, vec![&self.server2, &self.server3, &self.server4]),
        ] {
            for pod in &pods {
                node.set_pod_label(pod, SPLICE_LABEL, Some(value))?;
            }
            wait_for(&format!("splice {value} on {}", node.name), Duration::from_secs(10), || {
                agent.status().is_ok_and(|st| {
                    st["pods"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().all(|p| p["splice"].as_bool() == Some(splice)))
                })
            })?;
        }
        Ok(())
    }

    /// The cgroup of the server pod at `ip`.
    pub fn server_cgroup(&self, ip: IpAddr) -> &PathBuf {
        if ip == IpAddr::from(self.server2.ipv4) { &self.server2.cgroup_dir } else { &self.server.cgroup_dir }
    }

    /// Process ids whose CPU and memory count as the scenario's proxy.
    pub fn proxy_pids(&self, proxies: Proxies) -> Vec<u32> {
        match proxies {
            Proxies::None => vec![],
            Proxies::Agent1 => vec![self.agent1.pid()],
            Proxies::BothAgents => vec![self.agent1.pid(), self.agent2.pid()],
            Proxies::Sidecar => vec![self.sidecar_pid],
        }
    }
}

/// The classic sidecar: an nftables REDIRECT in the client pod sends its traffic to the
/// sidecar port to a proxy process in the same pod, which skips its own marked connections.
fn start_sidecar(pod: &Pod, nodemesh: &Path) -> anyhow::Result<u32> {
    start_redirected_sidecar(
        pod,
        nodemesh,
        "nmsidecar",
        &[SIDECAR_PORT, SIDECAR_PORT + ASYNC_OFFSET],
        SIDECAR_LISTEN,
        &[],
    )
}

/// `nodemesh sidecar <extra>` in `pod`, listening on `listen`, with an nftables table `table`
/// redirecting the pod's connections to `ports` there, except the sidecar's own (marked).
pub fn start_redirected_sidecar(
    pod: &Pod,
    nodemesh: &Path,
    table: &str,
    ports: &[u16],
    listen: u16,
    extra: &[&str],
) -> anyhow::Result<u32> {
    let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let rules = format!(
        "table ip {table} {{\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    \
         meta mark {SIDECAR_MARK} return\n    tcp dport {{ {ports} }} redirect to :{listen}\n  }}\n}}\n",
    );
    let rules_file = std::env::temp_dir().join(format!("nodemesh-{table}-{}.nft", std::process::id()));
    std::fs::write(&rules_file, rules)?;
    let mut nft = Command::new("nft");
    nft.arg("-f").arg(&rules_file);
    let out = pod.output(nft).context("nft")?;
    let _ = std::fs::remove_file(&rules_file);
    if !out.status.success() {
        bail!("installing the REDIRECT rule of {table}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut sidecar = Command::new(nodemesh);
    sidecar.args(["sidecar", "--port", &listen.to_string(), "--mark", &SIDECAR_MARK.to_string()]).args(extra);
    sidecar.stderr(std::process::Stdio::null());
    let pid = pod.spawn_in_netns(sidecar)?;
    tools::wait_listening(&pod.netns_path(), listen)?;
    Ok(pid)
}
