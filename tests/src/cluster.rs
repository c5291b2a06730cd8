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

fn route_pods_via(netns: &str, index: u8, via4: &str, via6: &str) -> anyhow::Result<()> {
    ip(netns, &["route", "add", &format!("10.10.{index}.0/24"), "via", via4])?;
    ip(netns, &["-6", "route", "add", &format!("fd00:10:{index}::/64"), "via", via6])?;
    Ok(())
}

/// Kills whatever still lives in a cgroup tree and removes it, deepest first.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        kill_cgroup_tree(dir);
        let _ = remove_tree(dir);
        if !dir.exists() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_cgroup_tree(dir: &Path) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            kill_cgroup_tree(&e.path());
        }
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            remove_tree(&e.path())?;
        }
    }
    fs::remove_dir(dir)
}

pub(crate) fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            (fs.split_whitespace().next()? == "cgroup2").then(|| fields.split_whitespace().nth(4))?
        })
        .map(PathBuf::from)
        .context("no cgroup2 filesystem is mounted")
}

pub(crate) fn sweep_stale() {
    let alive = live_ids();
    let stale = |rest: &str| owner_id(rest).is_some_and(|id| !alive.contains(&id));
    if let Ok(list) = cmd::run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.strip_prefix(NETNS_PREFIX).is_some_and(stale) {
                let _ = cmd::run("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(root) = cgroup2_mount()
        && let Ok(entries) = fs::read_dir(&root)
    {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().strip_prefix(CGROUP_PREFIX).is_some_and(stale) {
                remove_cgroup(&e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().strip_prefix(BPFFS_PREFIX).is_some_and(stale) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The process id (as a cluster id carries it, modulo 100,000) in a name after its prefix:
/// the first of two numbers in a row (`<pid>-<n>-…` or `<tag>-<pid>-<n>`).
fn owner_id(rest: &str) -> Option<u32> {
    let parts: Vec<&str> = rest.split('-').collect();
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    parts.windows(2).find(|w| number(w[0]) && number(w[1])).and_then(|w| w[0].parse().ok())
}

/// Cluster ids of running processes: what another test or benchmark on this machine is
/// still using, which a sweep must leave alone.
fn live_ids() -> std::collections::HashSet<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .map(|pid| pid % 100_000)
                .collect()
        })
        .unwrap_or_default()
}

/// A fake node: a namespace with a pod bridge, an uplink to the fabric, and (once started)
/// an agent.
pub struct Node {
    pub(crate) inner: Arc<Inner>,
    pub name: String,
    pub index: u8,
    pub netns: String,
    /// Namespace labels for the enrollment file.
    namespaces: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    pods: Mutex<Vec<PodRecord>>,
}

#[derive(Clone)]
pub(crate) struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// The controller (`kind`, `name`) listed in `ownerReferences`.
    pub owner: Option<(String, String)>,
}

impl PodRecord {
    /// `metadata.ownerReferences`, as Kubernetes writes it.
    pub fn owner_references(&self) -> Vec<serde_json::Value> {
        self.owner
            .iter()
            .map(|(kind, name)| serde_json::json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "controller": true}))
            .collect()
    }
}

impl Node {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    /// The node's address on the fabric.
    pub fn uplink_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 100, self.index)
    }

    pub fn enrollment_path(&self) -> PathBuf {
        self.inner.work.join(format!("{}-enrollment.yaml", self.name))
    }

    /// Adds a pod with a pause process in its cgroup.
    pub fn add_pod(&self, namespace: &str, name: &str, options: PodOptions) -> anyhow::Result<Pod> {
        let inner = &self.inner;
        let host = {
            let mut state = inner.lock();
            let next = state.next_pod_host.get_mut(&self.index).context("node not registered")?;
            let host = *next;
            *next += 1;
            host
        };
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let uid =
            format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), u64::from(n) << 8 | u64::from(host));
        let netns = format!("{NETNS_PREFIX}{}-{}-{namespace}-{name}", inner.id, self.name);
        inner.add_netns(&netns)?;
        let host_if = format!("veth{host}");
        ip(&self.netns, &["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        ip(&self.netns, &["link", "set", &host_if, "master", "br0", "up"])?;
        let ipv4 = Ipv4Addr::new(10, 10, self.index, host);
        ip(&netns, &["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"])?;
        let ipv6 = if options.ipv6 {
            let v6: Ipv6Addr = format!("fd00:10:{}::{host:x}", self.index).parse()?;
            ip(&netns, &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
            Some(v6)
        } else {
            None
        };
        ip(&netns, &["link", "set", "eth0", "up"])?;
        ip(&netns, &["route", "add", "default", "via", &format!("10.10.{}.1", self.index)])?;
        if options.ipv6 {
            ip(&netns, &["-6", "route", "add", "default", "via", &format!("fd00:10:{}::1", self.index)])?;
        }

        let pod_dir = match options.cgroup_layout {
            CgroupLayout::Cgroupfs => inner.cgroup_root.join(format!("kubepods/pod{uid}")),
            CgroupLayout::Systemd => inner.cgroup_root.join(format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            )),
        };
        let container = pod_dir.join("pause");
        fs::create_dir_all(&container).with_context(|| format!("creating {}", container.display()))?;
        inner.lock().cgroups.push(container.clone());

        let mut ips = vec![IpAddr::V4(ipv4)];
        ips.extend(ipv6.map(IpAddr::V6));
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).push(PodRecord {
            uid: uid.clone(),
            namespace: namespace.into(),
            name: name.into(),
            ips: ips.clone(),
            labels: options.labels.clone(),
            owner: None,
        });
        let pod = Pod {
            inner: Arc::clone(inner),
            namespace: namespace.into(),
            name: name.into(),
            uid,
            ipv4,
            ipv6,
            netns,
            cgroup_dir: pod_dir,
            container,
        };
        // The pause container: what the agent finds the pod's namespace through.
        let mut pause = Command::new("sleep");
        pause.arg("infinity");
        pod.spawn(pause)?;
        Ok(pod)
    }

    /// Sets (or, with `None`, removes) a namespace's `nodemesh.io/intercept` label and
    /// rewrites the enrollment file.
    pub fn set_intercept(&self, namespace: &str, value: Option<&str>) -> anyhow::Result<()> {
        {
            let mut namespaces = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
            let labels = namespaces.entry(namespace.into()).or_default();
            match value {
                Some(v) => labels.insert("nodemesh.io/intercept".into(), v.into()),
                None => labels.remove("nodemesh.io/intercept"),
            };
        }
        self.write_enrollment()
    }

    /// Sets (or, with `None`, removes) a label on one of this node's pods and rewrites the
    /// enrollment file.
    pub fn set_pod_label(&self, pod: &Pod, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        self.update_pod(pod, |record| {
            match value {
                Some(v) => record.labels.insert(key.into(), v.into()),
                None => record.labels.remove(key),
            };
        })
    }

    /// Gives one of this node's pods a controller and labels (as its Deployment or StatefulSet
    /// would), in one rewrite of the enrollment file.
    pub fn set_pod_owner(
        &self,
        pod: &Pod,
        kind: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.update_pod(pod, |record| {
            record.owner = Some((kind.into(), name.into()));
            record.labels.extend(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        })
    }

    fn update_pod(&self, pod: &Pod, change: impl FnOnce(&mut PodRecord)) -> anyhow::Result<()> {
        {
            let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            change(pods.iter_mut().find(|p| p.uid == pod.uid).context("not a pod of this node")?);
        }
        self.write_enrollment()
    }

    /// Writes the enrollment file from the node's pods and namespace labels (atomically, as
    /// a ConfigMap update would land).
    pub fn write_enrollment(&self) -> anyhow::Result<()> {
        self.write_enrollment_text(&serde_yaml::to_string(&self.enrollment_doc())?)
    }

    /// The enrollment document [`Node::write_enrollment`] writes, to alter before writing.
    pub fn enrollment_doc(&self) -> serde_json::Value {
        let namespaces = self.namespaces.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner()).clone();
        serde_json::json!({
            "namespaces": namespaces.iter().map(|(name, labels)| serde_json::json!({"name": name, "labels": labels})).collect::<Vec<_>>(),
            "pods": pods.iter().map(|p| serde_json::json!({
                "uid": p.uid, "namespace": p.namespace, "name": p.name,
                "ips": p.ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "labels": p.labels,
                "ownerReferences": p.owner_references(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Replaces the enrollment file with arbitrary text (to test rejection of bad input).
    pub fn write_enrollment_text(&self, text: &str) -> anyhow::Result<()> {
        let path = self.enrollment_path();
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// A command that runs in the node's namespace (no cgroup change).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        enter(Command::new(program), &self.netns_path(), None)
    }

    /// Like [`Node::command`], in a cgroup of its own as a DaemonSet's container would be
    /// (the agent watches its own cgroup's sockets; it must not share one with the test).
    pub fn daemon_command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let cgroup = self.inner.cgroup_root.join(format!("nodemesh-agent-{}", self.name));
        if !cgroup.exists() {
            fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
            self.inner.lock().cgroups.push(cgroup.clone());
        }
        enter(Command::new(program), &self.netns_path(), Some(&cgroup.join("cgroup.procs")))
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub(crate) fn pod_records(&self) -> Vec<PodRecord> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A fake pod.
pub struct Pod {
    inner: Arc<Inner>,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub netns: String,
    pub cgroup_dir: PathBuf,
    container: PathBuf,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    /// A command that runs inside the pod: its network namespace and its cgroup, so the
    /// pod's hooks apply to it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        enter(Command::new(program), &self.netns_path(), Some(&self.container.join("cgroup.procs")))
    }

    /// Prepares `cmd` (built with `Command::new`) to run in the pod.
    pub fn prepare(&self, cmd: Command) -> anyhow::Result<Command> {
        enter(cmd, &self.netns_path(), Some(&self.container.join("cgroup.procs")))
    }

    /// Sets a sysctl in the pod's network namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        cmd::sysctl(&self.netns, key, value)
    }

    /// Starts a long-running process in the pod's network namespace but *not* its cgroup, so
    /// the pod's hooks do not apply to it (as with a sidecar proxy's own sockets).
    pub fn spawn_in_netns(&self, cmd: Command) -> anyhow::Result<u32> {
        let mut cmd = enter(cmd, &self.netns_path(), None)?;
        let child = cmd.stdin(Stdio::null()).spawn().context("spawning in the pod's namespace")?;
        Ok(self.inner.track_child(child))
    }

    /// Starts a long-running process in the pod; the cluster kills it on drop.
    pub fn spawn(&self, cmd: Command) -> anyhow::Result<u32> {
        let mut cmd = self.prepare(cmd)?;
        let child = cmd.stdin(Stdio::null()).spawn().context("spawning in the pod")?;
        Ok(self.inner.track_child(child))
    }

    /// Runs a command in the pod to completion.
    pub fn output(&self, cmd: Command) -> anyhow::Result<Output> {
        let mut cmd = self.prepare(cmd)?;
        cmd.stdin(Stdio::null()).output().context("running in the pod")
    }

    /// Stops a process started with [`Pod::spawn`].
    pub fn kill(&self, pid: u32) {
        self.inner.kill_child(pid);
    }

    /// Waits for a process started with [`Pod::spawn`] to exit.
    pub fn wait(&self, pid: u32, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.inner.wait_child(pid, timeout)
    }
}

/// A host outside the mesh.
pub struct External {
    inner: Arc<Inner>,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl External {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        enter(Command::new(program), &self.netns_path(), None)
    }

    /// Waits for a process started with [`External::spawn`] to exit.
    pub fn wait(&self, pid: u32, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.inner.wait_child(pid, timeout)
    }

    pub fn spawn(&self, cmd: Command) -> anyhow::Result<u32> {
        let mut cmd = enter(cmd, &self.netns_path(), None)?;
        let child = cmd.stdin(Stdio::null()).spawn().context("spawning on the external host")?;
        Ok(self.inner.track_child(child))
    }

    pub fn output(&self, cmd: Command) -> anyhow::Result<Output> {
        let mut cmd = enter(cmd, &self.netns_path(), None)?;
        cmd.stdin(Stdio::null()).output().context("running on the external host")
    }
}

/// Makes `cmd` run in the network namespace at `netns` (no cgroup change).
pub fn enter_netns(cmd: Command, netns: &Path) -> anyhow::Result<Command> {
    enter(cmd, netns, None)
}

/// Makes `cmd` join a network namespace (and a cgroup) between fork and exec. The files are
/// opened here, in the parent; the child only calls write(2) and setns(2), which are safe
/// after fork.
fn enter(mut cmd: Command, netns: &Path, cgroup_procs: Option<&Path>) -> anyhow::Result<Command> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let procs = match cgroup_procs {
        Some(p) => {
            Some(OpenOptions::new().write(true).open(p).with_context(|| format!("opening {}", p.display()))?)
        }
        None => None,
    };
    // SAFETY: the closure only makes async-signal-safe syscalls on descriptors it owns.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                // "0" moves the writing process.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Waits until `check` holds, or fails with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

#[cfg(test)]
mod tests {
    use super::owner_id;

    #[test]
    fn owner_ids() {
        assert_eq!(owner_id("23425-0-node1-mesh-client"), Some(23425));
        assert_eq!(owner_id("bench-23425-0"), Some(23425));
        assert_eq!(owner_id("23425-1-node2"), Some(23425));
        assert_eq!(owner_id("unrelated"), None);
    }
}
