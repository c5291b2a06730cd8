//! A fake node: its namespace, bridge and uplink, its pods and its agent.

use super::*;

/// A fake node: a namespace with a pod bridge, an uplink to the fabric, and (once started)
/// an agent.
pub struct Node {
    pub(crate) inner: Arc<Inner>,
    pub name: String,
    pub index: u8,
    pub netns: String,
    /// Namespace labels for the enrollment file.
    pub(super) namespaces: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    pub(super) pods: Mutex<Vec<PodRecord>>,
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
    pub service_account: String,
    /// Named container ports: (name, port).
    pub named_ports: Vec<(String, u16)>,
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
            service_account: options.service_account.clone().unwrap_or_else(|| "default".into()),
            named_ports: options.named_ports.clone(),
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
