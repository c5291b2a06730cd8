//! Fake nodes, pods and an external host, and their cleanup.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd::{self, ip};

mod cleanup;
mod exec;
mod node;
mod pod;

use cleanup::remove_cgroup;
pub(crate) use cleanup::{cgroup2_mount, sweep_stale};
use exec::enter;
pub use exec::{enter_netns, wait_for};
pub use node::Node;
pub(crate) use node::PodRecord;
pub use pod::{External, Pod};

/// Name prefixes of everything a cluster creates (for `sweep_stale`), each followed by an id
/// that starts with the creating process's id.
const NETNS_PREFIX: &str = "nmt-";
const CGROUP_PREFIX: &str = "nodemesh-test-";
const BPFFS_PREFIX: &str = "nodemesh-test-";

const FABRIC_V4: &str = "192.168.100";
const FABRIC_V6: &str = "fd00:100:";

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

/// Where kubelet would have put a pod's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CgroupLayout {
    /// `kubepods/pod<uid>/<container>` (cgroupfs driver, guaranteed QoS).
    #[default]
    Cgroupfs,
    /// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/<container>`.
    Systemd,
}

#[derive(Clone, Debug, Default)]
pub struct PodOptions {
    pub ipv6: bool,
    pub labels: BTreeMap<String, String>,
    pub cgroup_layout: CgroupLayout,
    /// The pod's service account as the control plane publishes it (its identity's `sa`);
    /// `default` when unset.
    pub service_account: Option<String>,
    /// Named container ports (name, port), as a Service's named `targetPort` refers to them.
    pub named_ports: Vec<(String, u16)>,
}

pub(crate) struct Inner {
    pub id: String,
    pub work: PathBuf,
    pub cgroup_root: PathBuf,
    fabric: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    netns: Vec<String>,
    /// Deepest last; removed in reverse.
    cgroups: Vec<PathBuf>,
    bpffs_dirs: Vec<PathBuf>,
    children: Vec<Child>,
    nodes: Vec<(u8, String)>,
    externals: Vec<String>,
    next_pod_host: BTreeMap<u8, u8>,
}

/// One fake cluster; dropping it removes everything it created.
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// `name` shows up in namespace and cgroup names, to tell tests apart.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        crate::require_root();
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id() % 100_000);
        let tag: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
        let work = std::env::temp_dir().join(format!("nodemesh-test-{tag}-{id}"));
        fs::create_dir_all(&work)?;
        let cgroup_root = cgroup2_mount()?.join(format!("{CGROUP_PREFIX}{tag}-{id}"));
        fs::create_dir_all(&cgroup_root).context("creating the cluster's cgroup")?;
        let fabric = format!("{NETNS_PREFIX}{id}-fabric");
        let inner = Arc::new(Inner {
            id,
            work,
            cgroup_root: cgroup_root.clone(),
            fabric: fabric.clone(),
            state: Mutex::new(State { cgroups: vec![cgroup_root], ..Default::default() }),
        });
        let cluster = Self { inner };
        cluster.inner.add_netns(&fabric)?;
        ip(&fabric, &["link", "add", "fbr0", "type", "bridge"])?;
        ip(&fabric, &["link", "set", "fbr0", "up"])?;
        Ok(cluster)
    }

    pub fn work_dir(&self) -> &Path {
        &self.inner.work
    }

    /// Adds node number `index` (1..=99): pods get 10.10.<index>.0/24 and fd00:10:<index>::/64.
    pub fn add_node(&self, name: &str, index: u8) -> anyhow::Result<Node> {
        assert!((1..100).contains(&index), "node index {index} out of range");
        let inner = &self.inner;
        let netns = format!("{NETNS_PREFIX}{}-{name}", inner.id);
        inner.add_netns(&netns)?;
        for (key, value) in [("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")] {
            cmd::sysctl(&netns, key, value)?;
        }
        ip(&netns, &["link", "add", "br0", "type", "bridge"])?;
        ip(&netns, &["addr", "add", &format!("10.10.{index}.1/24"), "dev", "br0"])?;
        ip(&netns, &["addr", "add", &format!("fd00:10:{index}::1/64"), "dev", "br0", "nodad"])?;
        ip(&netns, &["link", "set", "br0", "up"])?;
        let uplink_v4 = format!("{FABRIC_V4}.{index}");
        let uplink_v6 = format!("{FABRIC_V6}:{index}");
        inner.attach_to_fabric(&netns, &format!("up{index}"), &uplink_v4, &uplink_v6)?;

        let mut state = inner.lock();
        // Routes between this node's pods and every other node's.
        for (other, other_ns) in &state.nodes {
            route_pods_via(&netns, *other, &format!("{FABRIC_V4}.{other}"), &format!("{FABRIC_V6}:{other}"))?;
            route_pods_via(other_ns, index, &uplink_v4, &uplink_v6)?;
        }
        for ext in &state.externals {
            route_pods_via(ext, index, &uplink_v4, &uplink_v6)?;
        }
        state.nodes.push((index, netns.clone()));
        state.next_pod_host.insert(index, 2);
        drop(state);
        Ok(Node {
            inner: Arc::clone(inner),
            name: name.into(),
            index,
            netns,
            namespaces: Mutex::default(),
            pods: Mutex::default(),
        })
    }

    /// A host outside the mesh on the fabric (192.168.100.200, fd00:100::200), with routes
    /// to every node's pods.
    pub fn add_external(&self, name: &str) -> anyhow::Result<External> {
        let (netns, ipv4) = self.add_fabric_host(name, 200)?;
        Ok(External {
            inner: Arc::clone(&self.inner),
            netns,
            ipv4,
            ipv6: format!("{FABRIC_V6}:200").parse().context("v6")?,
        })
    }

    /// A namespace on the fabric at 192.168.100.<host> and fd00:100::<host>, routed to every
    /// node's pods (and every later node's).
    pub(crate) fn add_fabric_host(&self, name: &str, host: u8) -> anyhow::Result<(String, Ipv4Addr)> {
        let inner = &self.inner;
        let netns = format!("{NETNS_PREFIX}{}-{name}", inner.id);
        inner.add_netns(&netns)?;
        let (v4, v6) = (format!("{FABRIC_V4}.{host}"), format!("{FABRIC_V6}:{host}"));
        inner.attach_to_fabric(&netns, &format!("h{host}"), &v4, &v6)?;
        let mut state = inner.lock();
        for (index, _) in &state.nodes {
            route_pods_via(&netns, *index, &format!("{FABRIC_V4}.{index}"), &format!("{FABRIC_V6}:{index}"))?;
        }
        state.externals.push(netns.clone());
        drop(state);
        Ok((netns, v4.parse().context("v4")?))
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.inner.cleanup();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// On a failed test, the agents' logs say what happened; they are about to be deleted.
    fn dump_agent_logs(&self) {
        let Ok(entries) = fs::read_dir(&self.work) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with("-agent.log") {
                let text = fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- {name} (last 80 lines) ---");
                for line in &lines[lines.len().saturating_sub(80)..] {
                    eprintln!("{line}");
                }
            }
        }
    }

    fn add_netns(&self, name: &str) -> anyhow::Result<()> {
        cmd::run("ip", &["netns", "add", name])?;
        self.lock().netns.push(name.to_owned());
        ip(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn attach_to_fabric(&self, netns: &str, ifname: &str, v4: &str, v6: &str) -> anyhow::Result<()> {
        let peer = format!("f-{ifname}");
        ip(netns, &["link", "add", ifname, "type", "veth", "peer", "name", &peer, "netns", &self.fabric])?;
        ip(&self.fabric, &["link", "set", &peer, "master", "fbr0", "up"])?;
        ip(netns, &["addr", "add", &format!("{v4}/24"), "dev", ifname])?;
        ip(netns, &["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
        ip(netns, &["link", "set", ifname, "up"])?;
        Ok(())
    }

    pub(crate) fn track_child(&self, child: Child) -> u32 {
        let pid = child.id();
        self.lock().children.push(child);
        pid
    }

    pub(crate) fn track_bpffs(&self, dir: PathBuf) {
        self.lock().bpffs_dirs.push(dir);
    }

    /// Kills a tracked child now (SIGKILL) and reaps it.
    pub(crate) fn kill_child(&self, pid: u32) {
        let mut state = self.lock();
        if let Some(i) = state.children.iter().position(|c| c.id() == pid) {
            let mut child = state.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for a tracked child; kills it if it outlives `timeout`.
    pub(crate) fn wait_child(&self, pid: u32, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.untrack_child(pid).context("no such process")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("process {pid} did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes a tracked child out of the cluster's care (the caller waits for it).
    pub(crate) fn untrack_child(&self, pid: u32) -> Option<Child> {
        let mut state = self.lock();
        let i = state.children.iter().position(|c| c.id() == pid)?;
        Some(state.children.remove(i))
    }

    fn cleanup(&self) {
        if std::thread::panicking() {
            self.dump_agent_logs();
        }
        let mut state = self.lock();
        for child in &mut state.children {
            let _ = child.kill();
        }
        for child in &mut state.children {
            let _ = child.wait();
        }
        state.children.clear();
        for dir in state.bpffs_dirs.drain(..) {
            let _ = fs::remove_dir_all(&dir);
        }
        for netns in state.netns.drain(..).rev() {
            let _ = cmd::run("ip", &["netns", "del", &netns]);
        }
        let cgroups: Vec<PathBuf> = state.cgroups.drain(..).collect();
        drop(state);
        for dir in cgroups.iter().rev() {
            remove_cgroup(dir);
        }
        let _ = fs::remove_dir_all(&self.work);
    }
}

pub(crate) fn route_pods_via(netns: &str, index: u8, via4: &str, via6: &str) -> anyhow::Result<()> {
    ip(netns, &["route", "add", &format!("10.10.{index}.0/24"), "via", via4])?;
    ip(netns, &["-6", "route", "add", &format!("fd00:10:{index}::/64"), "via", via6])?;
    Ok(())
}
