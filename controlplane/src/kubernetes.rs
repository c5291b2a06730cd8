//! The Kubernetes source: the control plane watches the API server instead of reading a
//! directory, and feeds the same model (`model::parse_document`, the same clash rules, the
//! same world).
//!
//! One kube-rs watcher per kind (list, then watch from the resource version, bookmarks,
//! re-list after 410 Gone, backoff on errors): Namespaces, Nodes, Pods and Services (core v1),
//! AuthorizationPolicies and PeerAuthentications (security.istio.io/v1), DestinationRules
//! (networking.istio.io/v1), HTTPRoutes (gateway.networking.k8s.io/v1) and TrafficPolicies
//! (nodemesh.io/v1alpha1). A kind that cannot be listed (its CRD is not installed, RBAC
//! forbids it) is logged once and retried with backoff; the others serve meanwhile.
//!
//! Objects from the API server carry much the model does not read (managed fields, status,
//! container specs): each is projected onto the fields the model reads for its kind (a
//! custom resource's `spec` is kept whole, so a field the model refuses is still refused)
//! before it is parsed. An object the model refuses is reported with its field, as
//! `kubernetes:<Kind>/<namespace>/<name>` in `served.input_errors`; a new object is left out,
//! a changed one keeps serving its last good version (as a YAML file does), and everything
//! else serves on.
//!
//! Every change marks the world dirty; the world is rebuilt and published after a short
//! debounce, so a burst of events (a re-list) makes one new state.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::{Notify, watch};

use crate::{
    admin::Served,
    inputs,
    model::{FieldError, parse_document},
    store::{InputError, clashes::Held},
    world::{MeshSettings, World},
};

pub use kube;

/// How long a burst of events is gathered before the world is rebuilt.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How often the start says which kinds it is still waiting for.
const STARTUP_REPORT: Duration = Duration::from_secs(30);

/// Where the API server is and how to authenticate to it.
#[derive(Clone, Debug, Default)]
pub struct KubernetesSettings {
    /// None: inferred as kubectl does (`KUBECONFIG`, `~/.kube/config`, else the in-cluster
    /// service account).
    pub config: Option<Box<kube::Config>>,
    /// Also honour Istio's `istio.io/dataplane-mode` label, so a namespace prepared for
    /// ambient moves over as it is: `ambient` on a namespace enrols it, `none` on a pod opts
    /// it out. Nodemesh's own `nodemesh.io/intercept` label, where present, says it instead.
    pub istio_dataplane_mode: bool,
}

/// Istio's label saying which data plane captures a namespace or pod.
pub const ISTIO_DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

/// A kind the control plane watches.
#[derive(Debug)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// A custom resource: its `spec` is kept whole (the model checks every field of it).
    pub custom: bool,
}

impl Kind {
    const fn core(kind: &'static str, plural: &'static str, namespaced: bool) -> Self {
        Self { group: "", version: "v1", kind, plural, namespaced, custom: false }
    }

    const fn custom(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
    ) -> Self {
        Self { group, version, kind, plural, namespaced: true, custom: true }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

/// Everything watched.
pub const KINDS: [Kind; 9] = [
    Kind::core("Namespace", "namespaces", false),
    Kind::core("Node", "nodes", false),
    Kind::core("Pod", "pods", true),
    Kind::core("Service", "services", true),
    Kind::custom("security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"),
    Kind::custom("security.istio.io", "v1", "PeerAuthentication", "peerauthentications"),
    Kind::custom("networking.istio.io", "v1", "DestinationRule", "destinationrules"),
    Kind::custom("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    Kind::custom("nodemesh.io", "v1alpha1", "TrafficPolicy", "trafficpolicies"),
];

/// One object as last seen: its last good version (if any) and its current problem.
#[derive(Clone, Debug)]
struct Entry {
    /// `kubernetes:<Kind>/<namespace>/<name>`, what errors and clashes name it by.
    file: PathBuf,
    held: Option<Held>,
    error: Option<InputError>,
}

impl Entry {
    /// Serves the same object with the same problem.
    fn same(&self, other: &Entry) -> bool {
        self.error == other.error
            && match (&self.held, &other.held) {
                (Some(a), Some(b)) => a.object == b.object,
                (None, None) => true,
                _ => false,
            }
    }
}

#[derive(Default)]
struct KindState {
    live: BTreeMap<String, Entry>,
    /// While a (re-)list is under way: the objects listed so far.
    listing: Option<BTreeMap<String, Entry>>,
    /// Listed at least once, or (a custom resource, whose CRD may not be installed) failed at
    /// least once: the start waits for this.
    settled: bool,
}

#[derive(Default)]
struct State {
    kinds: Vec<KindState>,
    /// Objects are dated by arrival (their identities' claims), as a file's are by scan.
    arrivals: u64,
    dirty: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    options: Options,
}

/// How objects are read.
#[derive(Clone, Debug, Default)]
struct Options {
    domain_suffix: String,
    istio_dataplane_mode: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A custom resource's kind failed to list: the start does not wait for it (its CRD may
    /// never be installed). A core kind is waited for, however long it takes: serving a world
    /// without the pods would take every workload away from the agents.
    fn failed(&self, kind: usize) {
        if KINDS[kind].custom {
            self.lock().kinds[kind].settled = true;
        }
    }

    fn apply(&self, index: usize, event: watcher::Event<DynamicObject>) {
        let kind = &KINDS[index];
        let mut state = self.lock();
        let state = &mut *state;
        let arrival = &mut state.arrivals;
        let ks = &mut state.kinds[index];
        match event {
            watcher::Event::Init => ks.listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(object) => {
                let key = key(&object);
                *arrival += 1;
                let entry = parse(kind, object, ks.live.get(&key), &self.options, *arrival);
                ks.listing.get_or_insert_default().insert(key, entry);
            }
            watcher::Event::InitDone => {
                ks.live = ks.listing.take().unwrap_or_default();
                ks.settled = true;
                tracing::debug!(kind = kind.kind, objects = ks.live.len(), "listed");
                state.dirty = true;
                self.changed.notify_one();
            }
            watcher::Event::Apply(object) => {
                let key = key(&object);
                *arrival += 1;
                let previous = ks.live.get(&key);
                let entry = parse(kind, object, previous, &self.options, *arrival);
                let changed = previous.is_none_or(|p| !p.same(&entry));
                ks.live.insert(key, entry);
                if changed {
                    state.dirty = true;
                    self.changed.notify_one();
                }
            }
            watcher::Event::Delete(object) => {
                if ks.live.remove(&key(&object)).is_some() {
                    state.dirty = true;
                    self.changed.notify_one();
                }
            }
        }
    }

    /// The objects served and every current problem, when something changed.
    fn take_inputs(&self) -> Option<(crate::store::Inputs, Vec<InputError>)> {
        let mut state = self.lock();
        if !std::mem::take(&mut state.dirty) {
            return None;
        }
        let entries = state.kinds.iter().flat_map(|k| k.live.values());
        let (inputs, clashes) = crate::store::clashes::resolve(
            entries.clone().filter_map(|e| Some((e.file.as_path(), std::slice::from_ref(e.held.as_ref()?)))),
        );
        let errors = entries.filter_map(|e| e.error.clone()).chain(clashes).collect();
        Some((inputs, errors))
    }

    /// The kinds the start still waits for.
    fn unsettled(&self) -> Vec<&'static str> {
        self.lock().kinds.iter().zip(&KINDS).filter(|(k, _)| !k.settled).map(|(_, kind)| kind.kind).collect()
    }
}

/// `namespace/name`, or `name` for a cluster-scoped object.
fn key(object: &DynamicObject) -> String {
    let name = object.metadata.name.clone().unwrap_or_default();
    match &object.metadata.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

fn parse(
    kind: &Kind,
    object: DynamicObject,
    previous: Option<&Entry>,
    options: &Options,
    arrival: u64,
) -> Entry {
    let file = PathBuf::from(format!("kubernetes:{}/{}", kind.kind, key(&object)));
    let parsed = serde_json::to_value(&object)
        .map_err(|e| FieldError::new("(object)", e.to_string()))
        .map(|value| project::project(kind, value))
        .map(|mut value| {
            if options.istio_dataplane_mode {
                project::istio_dataplane_mode(kind, &mut value);
            }
            value
        })
        .and_then(|value| serde_yaml::to_value(value).map_err(|e| FieldError::new("(object)", e.to_string())))
        .and_then(parse_document);
    match parsed {
        Ok(Some(object)) => {
            let earlier = previous.and_then(|p| p.held.as_ref());
            // Nothing the model reads changed (a status heartbeat, a managed field): the same
            // object, so the world reuses what it made of it.
            if let Some(previous) = previous
                && previous.error.is_none()
                && earlier.is_some_and(|e| e.object == object)
            {
                return previous.clone();
            }
            Entry {
                held: Some(Held::new(object, 0, earlier, &options.domain_suffix, arrival)),
                error: None,
                file,
            }
        }
        Ok(None) => Entry { held: None, error: None, file },
        Err(error) => {
            // Logged by the loop that publishes the world, once.
            let error = InputError { file: file.display().to_string(), document: 0, object: None, error };
            Entry { held: previous.and_then(|p| p.held.clone()), error: Some(error), file }
        }
    }
}

/// What `serve` needs from the source: the first world, and a running loop that publishes
/// the next ones.
pub struct Started {
    pub first: World,
    pub errors: Vec<InputError>,
    shared: Arc<Shared>,
    watchers: Watchers,
    /// The problems logged so far.
    logged: BTreeSet<String>,
}

/// A client for the API server `settings` name (the source's watchers and the CA share it).
pub async fn client(settings: &KubernetesSettings) -> Result<Client, kube::Error> {
    let config = match &settings.config {
        Some(config) => (**config).clone(),
        None => kube::Config::infer().await.map_err(kube::Error::InferConfig)?,
    };
    tracing::info!(server = %config.cluster_url, "connecting to the Kubernetes API server");
    Client::try_from(config)
}

/// Starts a watcher per kind, and waits for each kind's first list (a custom
/// resource's kind: its first list or its first failure), so the first world served is whole
/// and no agent is ever told its pods are gone because the API server was not answering yet.
pub async fn start(
    client: Client,
    settings: &KubernetesSettings,
    mesh: &MeshSettings,
) -> Result<Started, kube::Error> {
    tracing::info!("watching the Kubernetes API server");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            kinds: KINDS.iter().map(|_| KindState::default()).collect(),
            ..State::default()
        }),
        changed: Notify::new(),
        options: Options {
            domain_suffix: mesh.domain_suffix.clone(),
            istio_dataplane_mode: settings.istio_dataplane_mode,
        },
    });
    // Dropped (the start given up on a signal, or the control plane stopped): they end.
    let watchers = Watchers(
        (0..KINDS.len())
            .map(|index| tokio::spawn(watch_kind(client.clone(), index, Arc::clone(&shared))).abort_handle())
            .collect(),
    );
    let started = tokio::time::Instant::now();
    let mut report = started + STARTUP_REPORT;
    loop {
        let waiting = shared.unsettled();
        if waiting.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= report {
            tracing::warn!(
                ?waiting,
                waited_s = started.elapsed().as_secs(),
                "still waiting for the first list of these kinds before serving"
            );
            report += STARTUP_REPORT;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (inputs, errors) = shared.take_inputs().unwrap_or_default();
    let first = World::build(&inputs, mesh, 1, None);
    let logged: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
    for error in &logged {
        tracing::error!(%error, "object refused; its last good version, if any, keeps serving");
    }
    Ok(Started { first, errors, shared, watchers, logged })
}

impl Started {
    /// Rebuilds and publishes the world after every change (debounced), until `world` has no
    /// receivers left.
    pub fn spawn(self, mesh: MeshSettings, served: Arc<Mutex<Served>>, world: watch::Sender<Arc<World>>) {
        let (shared, watchers) = (self.shared, self.watchers);
        tokio::spawn(async move {
            // The watchers end with this loop (the control plane stopped serving).
            let _stop = watchers;
            let mut generation = 1;
            let mut reported = self.logged;
            loop {
                tokio::select! {
                    () = shared.changed.notified() => {}
                    () = world.closed() => return,
                }
                tokio::time::sleep(DEBOUNCE).await;
                let Some((inputs, errors)) = shared.take_inputs() else { continue };
                generation += 1;
                let started = std::time::Instant::now();
                let previous = Arc::clone(&world.borrow());
                let mesh = mesh.clone();
                let built = tokio::task::spawn_blocking(move || {
                    World::build(&inputs, &mesh, generation, Some(&previous))
                })
                .await;
                let Ok(next) = built else {
                    tracing::error!("building the world failed");
                    continue;
                };
                let now: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
                for error in now.difference(&reported) {
                    tracing::error!(%error, "object refused; its last good version, if any, keeps serving");
                }
                reported = now;
                inputs::record(&served, &next, errors);
                let changed = next.delta.as_ref().map_or(0, |d| d.addresses.len() + d.authorizations.len());
                tracing::info!(
                    generation,
                    changed,
                    took_ms = started.elapsed().as_millis() as u64,
                    "serving a new state"
                );
                world.send_replace(Arc::new(next));
            }
        });
    }
}

/// Aborts the watchers when dropped.
struct Watchers(Vec<tokio::task::AbortHandle>);

impl Drop for Watchers {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

async fn watch_kind(client: Client, index: usize, shared: Arc<Shared>) {
    let kind = &KINDS[index];
    let api: Api<DynamicObject> = Api::all_with(client, &kind.resource());
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut failing = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                // A (re-)list starts with `Init` even when the list then fails: only a
                // finished list or a watch event says the kind works again.
                let works = !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_));
                if failing && works {
                    tracing::info!(kind = kind.kind, "watching again");
                    failing = false;
                }
                shared.apply(index, event);
            }
            Err(error) => {
                if !failing {
                    let hint = if kind.custom {
                        "is its CRD installed, and may this service account list it?"
                    } else {
                        "is the API server reachable, and may this service account list it?"
                    };
                    tracing::warn!(kind = kind.kind, api_version = %kind.api_version(), %error, hint,
                        "cannot list or watch; retrying with backoff");
                } else {
                    tracing::debug!(kind = kind.kind, %error, "still cannot list or watch");
                }
                failing = true;
                shared.failed(index);
            }
        }
    }
}

mod project;

pub use project::project;

#[cfg(test)]
mod tests;
