//! Ready-made topologies shared by tests, the demo and benchmarks.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use crate::{Agent, AgentOptions, Cluster, ControlPlane, External, Node, Pod, PodOptions, tools};

/// The byte-exact bulk server's port (tools/bulk_server.py), on every server.
pub const BULK_PORT: u16 = 7000;
/// The HTTP server's port (tools/http_server.py).
pub const HTTP_PORT: u16 = 8080;

/// One node with:
/// - `client` and `server` in namespace `mesh` (labelled for interception),
/// - `plain` in namespace `plain` (not labelled),
/// - an external host outside the mesh,
/// - bulk and HTTP servers on `server`, `plain` and the external host (dual-stack),
/// - the agent, with both mesh pods enrolled.
pub struct SingleNode {
    pub cluster: Cluster,
    pub node: Node,
    pub client: Pod,
    pub server: Pod,
    pub plain: Pod,
    pub ext: External,
    pub agent: Agent,
    /// Files served over HTTP, named `payload-<bytes>`.
    pub payload_dir: PathBuf,
}

impl SingleNode {
    pub fn start(name: &str, agent: &AgentOptions) -> anyhow::Result<Self> {
        let cluster = Cluster::new(name)?;
        let node = cluster.add_node("node1", 1)?;
        let ext = cluster.add_external("ext")?;
        let dual = PodOptions { ipv6: true, ..Default::default() };
        let client = node.add_pod("mesh", "client", dual.clone())?;
        let server = node.add_pod("mesh", "server", dual.clone())?;
        let plain = node.add_pod("plain", "plain", dual)?;
        node.set_intercept("mesh", Some("enabled"))?;
        node.set_intercept("plain", None)?;

        let payload_dir = cluster.work_dir().join("payloads");
        std::fs::create_dir_all(&payload_dir)?;
        let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        for pod in [&server, &plain] {
            pod.spawn(tools::bulk_server(any, BULK_PORT))?;
            pod.spawn(tools::http_server(any, HTTP_PORT, &payload_dir))?;
        }
        ext.spawn(tools::bulk_server(any, BULK_PORT))?;
        ext.spawn(tools::http_server(any, HTTP_PORT, &payload_dir))?;
        for pod in [&server, &plain] {
            tools::wait_listening(&pod.netns_path(), BULK_PORT)?;
            tools::wait_listening(&pod.netns_path(), HTTP_PORT)?;
        }
        tools::wait_listening(&ext.netns_path(), BULK_PORT)?;
        tools::wait_listening(&ext.netns_path(), HTTP_PORT)?;

        let agent = node.start_agent(agent)?;
        agent.wait_enrolled(&["mesh/client", "mesh/server"], Duration::from_secs(10))?;
        Ok(Self { cluster, node, client, server, plain, ext, agent, payload_dir })
    }

    /// Writes `payload-<len>` into the served directory; returns its sha256.
    pub fn payload(&self, len: usize) -> anyhow::Result<(PathBuf, String)> {
        let path = self.payload_dir.join(format!("payload-{len}"));
        let sha = tools::write_payload(&path, len)?;
        Ok((path, sha))
    }

    /// `curl` in `pod`, downloading `url` into a file; returns the file's sha256.
    pub fn curl_download(&self, pod: &Pod, url: &str) -> anyhow::Result<String> {
        let out_file = self.cluster.work_dir().join(format!("download-{}", rand_suffix()));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "60", "-o"]).arg(&out_file).arg(url);
        let out = pod.output(cmd)?;
        anyhow::ensure!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        let sha = tools::sha256_file(&out_file)?;
        let _ = std::fs::remove_file(&out_file);
        Ok(sha)
    }

    /// `curl` in `pod`, uploading `file` with POST; returns the server's "<sha256> <bytes>".
    pub fn curl_upload(&self, pod: &Pod, url: &str, file: &std::path::Path) -> anyhow::Result<String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "60", "-H", "Expect:", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(url);
        let out = pod.output(cmd)?;
        anyhow::ensure!(out.status.success(), "curl POST {url}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// One node driven by the reference control plane: one pod in namespace `mesh` (intercepted),
/// an external host running the bulk server, and the agent, synced and with the pod enrolled.
pub struct ControlledNode {
    pub cluster: Cluster,
    pub node: Node,
    pub ext: External,
    pub cp: ControlPlane,
    pub pod: Pod,
    pub agent: Agent,
}

impl ControlledNode {
    /// `files` are more control-plane inputs (name, YAML) written before it starts.
    pub fn start(name: &str, pod: &str, options: PodOptions, files: &[(&str, &str)]) -> anyhow::Result<Self> {
        let cluster = Cluster::new(name)?;
        let node = cluster.add_node("node1", 1)?;
        let ext = cluster.add_external("ext")?;
        let mut cp = cluster.add_control_plane()?;
        let pod = node.add_pod("mesh", pod, options)?;
        cp.write_namespace("mesh", true)?;
        cp.write_pods(&[&node])?;
        for (file, text) in files {
            cp.write(file, text)?;
        }
        cp.start()?;
        ext.spawn(tools::bulk_server("0.0.0.0".parse()?, BULK_PORT))?;
        tools::wait_listening(&ext.netns_path(), BULK_PORT)?;
        let agent =
            node.start_agent(&AgentOptions { xds_address: Some(cp.xds_address()), ..Default::default() })?;
        agent.wait_enrolled(&[&format!("mesh/{}", pod.name)], Duration::from_secs(10))?;
        Ok(Self { cluster, node, ext, cp, pod, agent })
    }
}
