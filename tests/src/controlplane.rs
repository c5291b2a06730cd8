//! The reference control plane on the fake cluster: `nodemesh controlplane` in its own
//! namespace on the fabric (192.168.100.250, xDS on 15010), reading Kubernetes YAML that the
//! testbed writes from its fake pods.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    cluster::{Cluster, Inner, Node, Pod, enter_netns, wait_for},
    tools,
};

pub const XDS_PORT: u16 = 15010;
/// xDS and the CA over TLS (with [`ControlPlane::enable_ca`]).
pub const TLS_PORT: u16 = 15012;
const ADMIN: &str = "127.0.0.1:15014";

pub struct ControlPlane {
    inner: Arc<Inner>,
    pub netns: String,
    pub ip: std::net::Ipv4Addr,
    pub config_dir: PathBuf,
    pub log_path: PathBuf,
    /// The `nodemesh` binary it runs (default: [`crate::nodemesh_bin`]).
    pub binary: PathBuf,
    pid: Option<u32>,
    /// With [`ControlPlane::enable_ca`]: the CA's state directory and the node tokens.
    ca: Option<CaDirs>,
    /// With [`ControlPlane::use_kubernetes`]: the kubeconfig of the API server it watches
    /// instead of its directory.
    kubeconfig: Option<PathBuf>,
}

/// Where the control plane keeps its root and reads node tokens.
#[derive(Clone, Debug)]
pub struct CaDirs {
    pub state: PathBuf,
    pub tokens: PathBuf,
    /// Workload certificate lifetime (`--cert-lifetime-s`).
    pub lifetime_s: u64,
}

impl Cluster {
    /// A control-plane host on the fabric; call [`ControlPlane::start`] to run it.
    pub fn add_control_plane(&self) -> anyhow::Result<ControlPlane> {
        let (netns, ip) = self.add_fabric_host("cp", 250)?;
        let config_dir = self.work_dir().join("controlplane");
        std::fs::create_dir_all(&config_dir)?;
        Ok(ControlPlane {
            inner: Arc::clone(self.inner()),
            netns,
            ip,
            log_path: self.work_dir().join("controlplane.log"),
            config_dir,
            binary: crate::nodemesh_bin(),
            pid: None,
            ca: None,
            kubeconfig: None,
        })
    }
}

impl ControlPlane {
    /// What agents put in `xds_address`.
    pub fn xds_address(&self) -> String {
        format!("http://{}:{XDS_PORT}", self.ip)
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    /// Serve the CA (root generated in a state directory of the cluster's), and xDS and the
    /// CA over TLS on 15012, with a certificate for the control plane's address.
    pub fn enable_ca(&mut self, lifetime_s: u64) -> anyhow::Result<()> {
        let dir = self.config_dir.with_file_name("controlplane-ca");
        let dirs = CaDirs { state: dir.join("state"), tokens: dir.join("node-tokens"), lifetime_s };
        std::fs::create_dir_all(&dirs.state)?;
        std::fs::create_dir_all(&dirs.tokens)?;
        self.ca = Some(dirs);
        Ok(())
    }

    /// The mesh root agents are given (exists once the control plane has started).
    pub fn mesh_root(&self) -> PathBuf {
        self.ca.as_ref().map(|c| c.state.join("ca/root-cert.pem")).unwrap_or_default()
    }

    /// What agents put in `xds_address` to reach xDS and the CA over TLS.
    pub fn tls_address(&self) -> String {
        format!("https://{}:{TLS_PORT}", self.ip)
    }

    /// A bootstrap token for `node` (a new one each call, replacing the old): the file the
    /// control plane checks, which the node's agent reads too.
    pub fn node_token(&self, node: &str) -> anyhow::Result<PathBuf> {
        let dirs = self.ca.as_ref().context("the CA is not enabled")?;
        let mut bytes = [0u8; 24];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let path = dirs.tokens.join(node);
        std::fs::write(&path, format!("{token}\n"))?;
        Ok(path)
    }

    /// The agent settings for a node of this mesh with identities on: TLS to the control
    /// plane, the mesh root, the node's token.
    pub fn mesh_agent_config(&self, node: &str) -> anyhow::Result<(String, String)> {
        let token = self.node_token(node)?;
        let extra = format!(
            "mesh_root: {}\nnode_token_file: {}\ncert_lifetime_s: {}\n",
            self.mesh_root().display(),
            token.display(),
            self.ca.as_ref().map_or(86_400, |c| c.lifetime_s)
        );
        Ok((self.tls_address(), extra))
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path)?;
        let mut cmd = enter_netns(Command::new(&self.binary), &self.netns_path())?;
        cmd.arg("controlplane");
        match &self.kubeconfig {
            Some(kubeconfig) => cmd.arg("--kubernetes").env("KUBECONFIG", kubeconfig),
            None => cmd.arg("--config-dir").arg(&self.config_dir),
        };
        cmd.args(["--listen", &format!("0.0.0.0:{XDS_PORT}"), "--admin", ADMIN]);
        if let Some(ca) = &self.ca {
            cmd.arg("--ca-state-dir")
                .arg(&ca.state)
                .arg("--node-token-dir")
                .arg(&ca.tokens)
                .args(["--cert-lifetime-s", &ca.lifetime_s.to_string()])
                .args(["--tls-listen", &format!("0.0.0.0:{TLS_PORT}"), "--tls-name", &self.ip.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().context("starting the control plane")?;
        self.pid = Some(self.inner.track_child(child));
        tools::wait_listening(&self.netns_path(), XDS_PORT)?;
        if self.ca.is_some() {
            tools::wait_listening(&self.netns_path(), TLS_PORT)?;
        }
        Ok(())
    }

    /// The running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            self.inner.kill_child(pid);
        }
    }

    /// `/status` of the control plane's admin API.
    pub fn status(&self) -> anyhow::Result<Value> {
        let mut cmd = enter_netns(Command::new("curl"), &self.netns_path())?;
        let out = cmd.args(["-sS", "--max-time", "5", &format!("http://{ADMIN}/status")]).output()?;
        if !out.status.success() {
            bail!("control plane status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until `n` agents are connected.
    pub fn wait_agents(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_for(&format!("{n} agents on the control plane"), timeout, || {
            self.status().is_ok_and(|s| s["agents"].as_array().is_some_and(|a| a.len() == n))
        })
    }

    /// Runs `tools/grpc/fake_xds.py` in place of the control plane, at the same address:
    /// a scripted server that serves these nodes' pods, then a malformed response on demand.
    pub fn start_fake(&mut self, nodes: &[&Node]) -> anyhow::Result<FakeXds> {
        let mut pods = Vec::new();
        for node in nodes {
            for pod in node.pod_records() {
                pods.push(json!({"uid": pod.uid, "name": pod.name, "namespace": pod.namespace,
                    "ips": pod.ips, "node": node.name}));
            }
        }
        let dir = self.log_path.with_file_name("fake-xds");
        std::fs::create_dir_all(&dir)?;
        let fake = FakeXds { log: dir.join("requests.jsonl"), control: dir.clone() };
        std::fs::write(dir.join("pods.json"), serde_json::to_vec(&pods)?)?;
        let mut cmd = enter_netns(tools::grpc_python("fake_xds.py")?, &self.netns_path())?;
        cmd.args(["--listen", &format!("0.0.0.0:{XDS_PORT}")])
            .arg("--pods")
            .arg(dir.join("pods.json"))
            .arg("--log")
            .arg(&fake.log)
            .arg("--control")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("server.out"))?)
            .stderr(std::fs::File::create(dir.join("server.err"))?);
        let child = cmd.spawn().context("starting fake_xds.py")?;
        self.pid = Some(self.inner.track_child(child));
        tools::wait_listening(&self.netns_path(), XDS_PORT)?;
        Ok(fake)
    }

    /// Subscribes as `node` with `tools/grpc/xds_client.py` (grpcio, protos compiled from
    /// our proto/) and returns what it decoded.
    pub fn grpcio_subscribe(&self, node: &str) -> anyhow::Result<Value> {
        let mut cmd = enter_netns(tools::grpc_python("xds_client.py")?, &self.netns_path())?;
        let out = cmd.args(["--server", &format!("127.0.0.1:{XDS_PORT}"), "--node", node]).output()?;
        tools::json_result("xds_client.py", &out)
    }

    /// Writes (atomically) one input file.
    pub fn write(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let path = self.config_dir.join(file);
        let tmp = self.config_dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Watches the API server `kubeconfig` points at instead of the directory (from the next
    /// [`ControlPlane::start`]).
    pub fn use_kubernetes(&mut self, kubeconfig: PathBuf) {
        self.kubeconfig = Some(kubeconfig);
    }

    /// Writes the Kubernetes objects for these nodes' pods into `pods.yaml`.
    pub fn write_pods(&self, nodes: &[&Node]) -> anyhow::Result<()> {
        self.write_pods_except(nodes, &[])
    }

    /// The same, leaving out the pods named in `except` (not scheduled yet, as far as the
    /// control plane knows).
    pub fn write_pods_except(&self, nodes: &[&Node], except: &[&str]) -> anyhow::Result<()> {
        let mut docs = Vec::new();
        for node in nodes {
            for pod in node.pod_records().iter().filter(|p| !except.contains(&p.name.as_str())) {
                docs.push(pod_object(&node.name, pod));
            }
        }
        self.write("pods.yaml", &to_yaml_stream(&docs)?)
    }

    /// Runs `cmd` in the control plane's namespace (on the fabric, reachable from every
    /// node), for as long as the cluster lives; returns its pid.
    pub fn spawn(&self, cmd: Command) -> anyhow::Result<u32> {
        let mut cmd = enter_netns(cmd, &self.netns_path())?;
        let child = cmd.stdin(Stdio::null()).spawn().context("spawning in the control plane's namespace")?;
        Ok(self.inner.track_child(child))
    }

    /// The control plane's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Writes a Namespace, with `nodemesh.io/intercept: enabled` when `intercept`.
    pub fn write_namespace(&self, name: &str, intercept: bool) -> anyhow::Result<()> {
        let labels: BTreeMap<&str, &str> =
            if intercept { BTreeMap::from([("nodemesh.io/intercept", "enabled")]) } else { BTreeMap::new() };
        let doc =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
        self.write(&format!("namespace-{name}.yaml"), &serde_yaml::to_string(&doc)?)
    }
}

/// The scripted server started by [`ControlPlane::start_fake`].
pub struct FakeXds {
    log: PathBuf,
    control: PathBuf,
}

impl FakeXds {
    /// Makes it send its malformed response: the first pod removed, and a workload whose
    /// address is 5 bytes long.
    pub fn send_malformed(&self) -> anyhow::Result<()> {
        Ok(std::fs::write(self.control.join("bad"), b"")?)
    }

    /// Every request it received so far (subscriptions, ACKs and NACKs), in order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The Pod objects of these nodes' pods, as the API server would hold them.
pub fn pod_objects(nodes: &[&Node]) -> Vec<Value> {
    nodes
        .iter()
        .flat_map(|node| node.pod_records().iter().map(|pod| pod_object(&node.name, pod)).collect::<Vec<_>>())
        .collect()
}

fn pod_object(node: &str, pod: &crate::cluster::PodRecord) -> Value {
    let ips: Vec<Value> = pod.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name, "namespace": pod.namespace, "uid": pod.uid, "labels": pod.labels,
            "ownerReferences": pod.owner_references(),
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": pod.service_account,
            "containers": [{"name": "app", "ports": pod.named_ports.iter()
                .map(|(name, port)| json!({"name": name, "containerPort": port}))
                .collect::<Vec<_>>()}],
        },
        "status": {"phase": "Running", "podIP": pod.ips.first().map(ToString::to_string), "podIPs": ips},
    })
}

fn to_yaml_stream(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(doc)?);
    }
    Ok(out)
}

/// The pod as the control plane knows it (used by tests that need its Workload name).
pub fn workload_uid(pod: &Pod) -> String {
    format!("Kubernetes//Pod/{}/{}", pod.namespace, pod.name)
}
