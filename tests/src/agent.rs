//! Running a real `nodemesh agent` on a fake node.

use std::{
    fs,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cluster::{Inner, Node, wait_for};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Hand established connections to the kernel splice.
    pub splice: bool,
    /// Bytes copied before a connection is spliced. Tests default to 0 (splice at once, so
    /// every transfer size goes through the kernel path); `None` leaves the agent's default.
    pub splice_after_bytes: Option<u64>,
    /// Splice legs that receive from the network too (`splice_network_legs`). `None` follows
    /// `splice`, so the splice tests keep exercising the kernel path on every leg; `Some`
    /// writes the value (`Some(false)` is the agent's default).
    pub splice_network_legs: Option<bool>,
    /// The agent's log filter.
    pub log: String,
    /// Extra YAML appended to the generated config.
    pub extra_config: String,
    /// The agent binary (default: [`crate::nodemesh_bin`]); benchmarks run a release build.
    pub binary: Option<PathBuf>,
    /// Run against this control plane (`http://…:15010`) instead of the enrollment file.
    pub xds_address: Option<String>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            splice: false,
            splice_after_bytes: Some(0),
            splice_network_legs: None,
            log: "info".into(),
            extra_config: String::new(),
            binary: None,
            xds_address: None,
        }
    }
}

pub struct Agent {
    inner: Arc<Inner>,
    pid: u32,
    binary: PathBuf,
    pub node_netns: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub bpffs_dir: PathBuf,
}

impl Node {
    /// Starts the agent with a config that points at this node's enrollment file, a cgroup
    /// root private to the cluster, and a bpffs directory of its own; waits until it serves
    /// its admin API.
    pub fn start_agent(&self, options: &AgentOptions) -> anyhow::Result<Agent> {
        let inner = Arc::clone(self.inner());
        let bpffs_dir = PathBuf::from(format!("/sys/fs/bpf/nodemesh-test-{}-{}", inner.id, self.name));
        inner.track_bpffs(bpffs_dir.clone());
        let source = match &options.xds_address {
            Some(address) => format!(
                "xds_address: {address}\nxds_snapshot: {}\n",
                inner.work.join(format!("{}-xds-snapshot.pb", self.name)).display()
            ),
            None => {
                if !self.enrollment_path().exists() {
                    self.write_enrollment()?;
                }
                format!("enrollment_file: {}\n", self.enrollment_path().display())
            }
        };
        let config_path = inner.work.join(format!("{}-agent.yaml", self.name));
        let config = format!(
            "node_name: {}\nbpffs_dir: {}\ncgroup_root: {}\n{source}splice: {}\nsplice_network_legs: {}\nlog: {:?}\n{}{}",
            self.name,
            bpffs_dir.display(),
            inner.cgroup_root.display(),
            options.splice,
            options.splice_network_legs.unwrap_or(options.splice),
            options.log,
            options.splice_after_bytes.map(|b| format!("splice_after_bytes: {b}\n")).unwrap_or_default(),
            options.extra_config,
        );
        fs::write(&config_path, config)?;
        let log_path = inner.work.join(format!("{}-agent.log", self.name));
        let binary = options.binary.clone().unwrap_or_else(crate::nodemesh_bin);
        let agent =
            Agent { inner, pid: 0, binary, node_netns: self.netns_path(), config_path, log_path, bpffs_dir };
        agent.spawn(self)
    }
}

impl Agent {
    fn spawn(mut self, node: &Node) -> anyhow::Result<Self> {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log_path)?;
        let mut cmd = node.daemon_command(&self.binary)?;
        cmd.arg("agent").arg("--config").arg(&self.config_path);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        self.pid = self.inner.track_child(child);
        self.wait_ready(Duration::from_secs(20))?;
        Ok(self)
    }

    /// Starts a fresh agent process with the same config (after a kill or a stop).
    pub fn restart(self, node: &Node) -> anyhow::Result<Self> {
        self.spawn(node)
    }

    /// Runs a second agent with this one's config (same node, same bpffs directory) while
    /// this one runs; returns its exit status and output (it is killed after `timeout`).
    pub fn start_second(
        &self,
        node: &Node,
        timeout: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let out = self.inner.work.join(format!("{}-second-agent.log", node.name));
        let mut cmd = node.daemon_command(&self.binary)?;
        cmd.arg("agent").arg("--config").arg(&self.config_path);
        let file = fs::File::create(&out)?;
        let child = cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).spawn()?;
        let pid = self.inner.track_child(child);
        let status = self.inner.wait_child(pid, timeout)?;
        Ok((status, fs::read_to_string(&out)?))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut last = String::new();
        let ready = wait_for("the agent's admin API", timeout, || match self.cli(&["status", "--json"]) {
            Ok(_) => true,
            Err(e) => {
                last = e.to_string();
                false
            }
        });
        if ready.is_err() {
            bail!("the agent did not become ready: {last}\n--- agent log ---\n{}", self.log_tail(60));
        }
        Ok(())
    }

    /// Runs the `nodemesh` CLI in the node's namespace; returns stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd =
            crate::cluster::enter_netns(std::process::Command::new(&self.binary), &self.node_netns)?;
        let out = cmd.args(args).output()?;
        if !out.status.success() {
            bail!("nodemesh {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// GETs `url` (e.g. `http://127.0.0.1:15020/metrics`) with curl from the node's namespace.
    pub fn http_get(&self, url: &str) -> anyhow::Result<String> {
        let mut cmd = crate::cluster::enter_netns(std::process::Command::new("curl"), &self.node_netns)?;
        let out = cmd.args(["-sS", "--fail", "--max-time", "10", url]).output()?;
        if !out.status.success() {
            bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// POSTs to `url` with curl from the node's namespace.
    pub fn http_post(&self, url: &str) -> anyhow::Result<String> {
        let mut cmd = crate::cluster::enter_netns(std::process::Command::new("curl"), &self.node_netns)?;
        let out = cmd.args(["-sS", "--fail", "--max-time", "10", "-X", "POST", url]).output()?;
        if !out.status.success() {
            bail!("curl POST {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `/flows` with a query (`state=closed&pod=mesh/client`), as JSON.
    pub fn flows(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let body = self.http_get(&format!("http://127.0.0.1:15000/flows?{query}"))?;
        let report: Value = serde_json::from_str(&body)?;
        report["flows"].as_array().cloned().context("no flows array in /flows")
    }

    pub fn status(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.cli(&["status", "--json"])?)?)
    }

    /// Waits until exactly the pods named `namespace/name` are enrolled.
    pub fn wait_enrolled(&self, expected: &[&str], timeout: Duration) -> anyhow::Result<Value> {
        let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        let mut last = Value::Null;
        let result = wait_for(&format!("enrolled pods {want:?}"), timeout, || {
            let Ok(status) = self.status() else { return false };
            let mut got: Vec<String> = status["pods"]
                .as_array()
                .map(|pods| pods.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            got.sort();
            last = status;
            got == want
        });
        match result {
            Ok(()) => Ok(last),
            Err(e) => bail!("{e}; last status: pods {} pending {}", last["pods"], last["pending"]),
        }
    }

    /// The proxy's counters for one pod (`outbound`/`inbound` snapshots).
    pub fn pod_stats(&self, pod_name: &str) -> anyhow::Result<Value> {
        let status = self.status()?;
        status["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["name"] == pod_name))
            .map(|p| p["stats"].clone())
            .with_context(|| format!("pod {pod_name} is not enrolled"))
    }

    /// A kernel reason counter.
    pub fn counter(&self, program: &str, reason: &str) -> anyhow::Result<u64> {
        let status = self.status()?;
        status["counters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["program"] == program && c["reason"] == reason))
            .and_then(|c| c["count"].as_u64())
            .with_context(|| format!("no counter {program}/{reason}"))
    }

    /// Spliced directions whose byte counts disagreed with the kernel's
    /// (`nodemesh_splice_audit_mismatches_total`): zero whenever the splice is byte-exact.
    pub fn splice_audit_mismatches(&self) -> anyhow::Result<u64> {
        self.metric("nodemesh_splice_audit_mismatches_total")
    }

    /// The same for copied directions (`nodemesh_copy_audit_mismatches_total`).
    pub fn copy_audit_mismatches(&self) -> anyhow::Result<u64> {
        self.metric("nodemesh_copy_audit_mismatches_total")
    }

    /// A label-less sample from `/metrics`.
    pub fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let text = self.http_get("http://127.0.0.1:15020/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .with_context(|| format!("no {name} in /metrics"))
    }

    /// SIGKILL, as the OOM killer or a node problem would.
    pub fn kill9(&self) {
        self.inner.kill_child(self.pid);
    }

    /// SIGTERM, then waits for the agent to exit; returns its exit status.
    pub fn terminate(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.inner.untrack_child(self.pid).context("the agent is not running")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not exit within {timeout:?} of SIGTERM\n{}", self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
