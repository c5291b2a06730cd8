//! Makes the node match the spec: enrolls intercepted pods, releases the others.
//!
//! Enrolling opens the pod's listeners first and attaches its hooks last, so interception
//! never points at a listener that is not there yet. Releasing detaches the hooks first (new
//! connections go direct from that instant), then retires the listeners; connections already
//! proxied carry on to their natural end.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use crate::report::status::{EnrolledPod, PendingPod};

use crate::{
    claims::canonical,
    datapath::{Datapath, PodLinks, Steering},
    pods::{self, PodError},
    proxy::{IpFamily, PodListeners, PodRuntime, PodStats, Proxy},
    spec::{NodeSpec, PodSpec},
};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Locate(#[from] PodError),
    #[error("opening listeners: {0}")]
    Listen(std::io::Error),
    #[error("{0}")]
    Address(String),
    #[error("{ip} is already steered to {holder}, enrolled first; refusing to take it over")]
    Claimed { ip: IpAddr, holder: String },
    #[error("registering the inbound listener for {ip}: {source}")]
    Steer {
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the pod's cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Attach(#[from] crate::datapath::DatapathError),
}

struct Enrolled {
    spec: PodSpec,
    cgroup: PathBuf,
    runtime: Arc<PodRuntime>,
    listeners: PodListeners,
    links: PodLinks,
}

/// What the reconciler has done, shared with the admin API.
#[derive(Debug, Default)]
pub struct View {
    pub pods: Vec<(EnrolledPod, Arc<PodRuntime>)>,
    pub pending: Vec<PendingPod>,
    /// Pods whose hooks an earlier agent pinned and this one keeps, because it has no valid
    /// state yet to tell whether they still belong in the mesh.
    pub held: Vec<String>,
}

/// How long a valid spec must stand unchanged before pins of pods it does not name are
/// removed: a control plane's first sync can arrive in several responses, and a pod in a
/// later one must not lose its hooks in between.
const SWEEP_SETTLE: Duration = Duration::from_secs(2);

pub struct Reconciler {
    datapath: Arc<Mutex<Datapath>>,
    proxy: Proxy,
    cgroup_root: PathBuf,
    enrolled: HashMap<String, Enrolled>,
    pending: BTreeMap<String, PendingPod>,
    view: Arc<Mutex<View>>,
    /// The sk_lookup listener table.
    steering: Steering,
    /// Which enrolled pod (uid) each steered address belongs to: the first to enroll with it.
    /// Releasing a pod removes only the steering it owns.
    steered_by: HashMap<IpAddr, String>,
    swept: bool,
    /// The valid spec in force and since when (for [`SWEEP_SETTLE`]).
    settling: Option<(Arc<NodeSpec>, Instant)>,
}

impl Reconciler {
    pub fn new(
        datapath: Arc<Mutex<Datapath>>,
        steering: Steering,
        proxy: Proxy,
        cgroup_root: PathBuf,
    ) -> Self {
        Self {
            datapath,
            steering,
            proxy,
            cgroup_root,
            enrolled: HashMap::new(),
            pending: BTreeMap::new(),
            view: Arc::default(),
            steered_by: HashMap::new(),
            swept: false,
            settling: None,
        }
    }

    pub fn view(&self) -> Arc<Mutex<View>> {
        Arc::clone(&self.view)
    }

    pub async fn reconcile(&mut self, spec: &Arc<NodeSpec>) {
        if !spec.authoritative {
            // No valid state yet (an unreadable source, a corrupt snapshot, a control plane
            // not answered yet): enroll nothing, release nothing, sweep nothing.
            self.hold();
            return;
        }
        if !Arc::ptr_eq(&self.proxy.directory(), &spec.directory) {
            self.proxy.publish_directory(Arc::clone(&spec.directory));
        }
        let desired: HashMap<&str, &PodSpec> = spec.intercepted().map(|p| (p.uid.as_str(), p)).collect();

        // A pod whose addresses changed, or whose sandbox (network namespace) was replaced, is
        // released and enrolled again.
        let stale: Vec<String> = self
            .enrolled
            .iter()
            .filter(|(uid, e)| match desired.get(uid.as_str()) {
                None => true,
                Some(p) => p.ips != e.spec.ips || self.sandbox_replaced(e),
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.release(&uid).await;
        }

        self.pending.clear();
        for (uid, pod) in &desired {
            if let Some(e) = self.enrolled.get_mut(*uid) {
                e.spec = (*pod).clone();
                e.runtime
                    .splice
                    .store(pod.splice(self.proxy.settings().splice), std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            match self.enroll(pod) {
                Ok(e) => {
                    tracing::info!(pod = %pod.display_name(), uid, cgroup = %e.cgroup.display(), "enrolled");
                    for ip in &pod.ips {
                        self.steered_by.insert(canonical(*ip), (*uid).to_owned());
                    }
                    self.enrolled.insert((*uid).to_owned(), e);
                }
                Err(err) => {
                    // The whole chain: the datapath's errors keep the errno in their sources.
                    let reason = crate::datapath::error_chain(&err);
                    tracing::debug!(pod = %pod.display_name(), %reason, "not enrolled yet");
                    self.pending.insert(
                        (*uid).to_owned(),
                        PendingPod { uid: (*uid).to_owned(), name: pod.display_name(), reason },
                    );
                }
            }
        }
        self.proxy.publish_pods(self.enrolled.values().map(|e| Arc::clone(&e.runtime)));

        self.sweep_once_settled(spec, &desired);
        self.publish_view();
    }

    /// Removes the links an earlier agent pinned for pods that are no longer in the mesh,
    /// once a valid spec has stood for [`SWEEP_SETTLE`]. Pods the spec wants but that are not
    /// enrolled yet keep theirs (enrolling replaces them).
    fn sweep_once_settled(&mut self, spec: &Arc<NodeSpec>, desired: &HashMap<&str, &PodSpec>) {
        if self.swept {
            return;
        }
        let since = match &self.settling {
            Some((settled, since)) if Arc::ptr_eq(settled, spec) => *since,
            _ => {
                self.settling = Some((Arc::clone(spec), Instant::now()));
                return;
            }
        };
        if since.elapsed() < SWEEP_SETTLE {
            return;
        }
        let keep: HashSet<String> =
            self.enrolled.keys().cloned().chain(desired.keys().map(|uid| (*uid).to_owned())).collect();
        self.lock_datapath().sweep_stale_pods(&keep);
        self.swept = true;
        self.settling = None;
    }

    /// Without a valid state: says which pinned pods are being kept, and why.
    fn hold(&mut self) {
        let pinned = self.lock_datapath().pins().pinned_pods().unwrap_or_default();
        let held: Vec<String> = pinned.into_iter().filter(|uid| !self.enrolled.contains_key(uid)).collect();
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if view.held != held && !held.is_empty() {
            tracing::warn!(
                pods = held.len(),
                "no valid state yet: keeping the hooks an earlier agent pinned"
            );
        }
        view.held = held;
    }

    /// Releases every pod (shutdown).
    pub async fn release_all(&mut self) {
        let uids: Vec<String> = self.enrolled.keys().cloned().collect();
        for uid in uids {
            self.release(&uid).await;
        }
        self.proxy.publish_pods([]);
        self.publish_view();
    }

    fn enroll(&self, pod: &PodSpec) -> Result<Enrolled, EnrollError> {
        for ip in &pod.ips {
            if let Some(holder) = self.steered_by.get(&canonical(*ip)).filter(|h| *h != &pod.uid) {
                let holder =
                    self.enrolled.get(holder).map_or_else(|| holder.clone(), |e| e.spec.display_name());
                return Err(EnrollError::Claimed { ip: *ip, holder });
            }
        }
        let place = pods::locate(&self.cgroup_root, &pod.uid)?;
        // Only addresses the pod really has are steered to it.
        pods::addresses::verify(&place.netns, &pod.ips).map_err(EnrollError::Address)?;
        let runtime = Arc::new(PodRuntime {
            name: pod.display_name().into(),
            ips: pod.ips.clone(),
            netns: place.netns,
            stats: PodStats::default(),
            splice: pod.splice(self.proxy.settings().splice).into(),
            transparent: false.into(),
            tunnels: Default::default(),
        });
        if self.proxy.hbone().is_some() {
            // HBONE's connections to the app keep the client's address; without this setup
            // they come from the pod's loopback, as plaintext ones do.
            let (v4, v6) = (pod.ips.iter().any(IpAddr::is_ipv4), pod.ips.iter().any(IpAddr::is_ipv6));
            match pods::transparent::install(&runtime.netns, v4, v6) {
                Ok(()) => {
                    tracing::debug!(pod = %runtime.name, "transparent sockets set up");
                    runtime.transparent.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(pod = %runtime.name, error = %e,
                    "cannot route the app's answers to transparent sockets; HBONE connections to it come from loopback"),
            }
        }
        // Before the listeners: the app's own connections must not take their ports.
        let settings = self.proxy.settings();
        let ports = [settings.outbound_port, settings.inbound_port, settings.hbone_port];
        if let Err(e) = pods::reserved_ports::reserve(&runtime.netns, &ports) {
            tracing::warn!(pod = %runtime.name, error = %e, "cannot reserve the proxy's ports in the pod");
        }
        let listeners = self.proxy.open_listeners(&runtime).map_err(EnrollError::Listen)?;
        for ip in &pod.ips {
            if let Some(fd) = listeners.inbound(IpFamily::of(ip)) {
                self.steering
                    .steer(*ip, false, fd)
                    .map_err(|source| EnrollError::Steer { ip: *ip, source })?;
            }
            if let Some(fd) = listeners.hbone(IpFamily::of(ip)) {
                self.steering
                    .steer(*ip, true, fd)
                    .map_err(|source| EnrollError::Steer { ip: *ip, source })?;
            }
        }
        let cgroup = File::open(&place.cgroup)
            .map_err(|source| EnrollError::Cgroup { path: place.cgroup.clone(), source })?;
        // The veth's node side gets the flow counters; a pod without one still enrolls.
        let host_veth = match pods::veth::host_side(&runtime.netns) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(pod = %runtime.name, error = %e, "cannot find the pod's host-side veth");
                None
            }
        };
        let links = self.lock_datapath().attach_pod(
            &pod.uid,
            &cgroup,
            &runtime.netns,
            host_veth.as_ref().map(|v| v.name.as_str()),
        )?;
        Ok(Enrolled { spec: pod.clone(), cgroup: place.cgroup, runtime, listeners, links })
    }

    async fn release(&mut self, uid: &str) {
        let Some(e) = self.enrolled.remove(uid) else { return };
        {
            let datapath = self.lock_datapath();
            e.links.detach(datapath.pins());
        }
        let owned: Vec<IpAddr> = e
            .spec
            .ips
            .iter()
            .copied()
            .filter(|ip| self.steered_by.get(&canonical(*ip)) == Some(&e.spec.uid))
            .collect();
        for ip in &owned {
            self.steered_by.remove(&canonical(*ip));
        }
        self.steering.unsteer(&owned);
        if e.runtime.transparent.load(std::sync::atomic::Ordering::Relaxed)
            && let Err(e) = pods::transparent::remove(&e.runtime.netns)
        {
            tracing::debug!(error = %e, "removing the transparent routing (the pod may be gone)");
        }
        e.listeners.retire().await;
        tracing::info!(pod = %e.runtime.name, uid, "released");
    }

    fn sandbox_replaced(&self, e: &Enrolled) -> bool {
        match pods::locate(&self.cgroup_root, &e.spec.uid) {
            Ok(place) => place.netns.inode() != e.runtime.netns.inode(),
            // Gone entirely: the spec will drop it; until then keep what works.
            Err(_) => false,
        }
    }

    fn publish_view(&self) {
        let mut pods: Vec<(EnrolledPod, Arc<PodRuntime>)> = self
            .enrolled
            .values()
            .map(|e| {
                (
                    EnrolledPod {
                        uid: e.spec.uid.clone(),
                        name: e.runtime.name.to_string(),
                        ips: e.spec.ips.clone(),
                        cgroup: e.cgroup.clone(),
                        netns_inode: e.runtime.netns.inode(),
                        listeners: e.listeners.info().to_vec(),
                        links: e.links.status(),
                        splice: e.runtime.splice(),
                    },
                    Arc::clone(&e.runtime),
                )
            })
            .collect();
        pods.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let held = if self.swept {
            Vec::new()
        } else {
            let pinned = self.lock_datapath().pins().pinned_pods().unwrap_or_default();
            pinned
                .into_iter()
                .filter(|uid| !self.enrolled.contains_key(uid) && !self.pending.contains_key(uid))
                .collect()
        };
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        view.pods = pods;
        view.pending = self.pending.values().cloned().collect();
        view.held = held;
    }

    fn lock_datapath(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.datapath.lock().unwrap_or_else(|p| p.into_inner())
    }
}
