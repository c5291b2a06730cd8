//! The inputs translated into xDS resources, encoded once and shared by every agent's
//! stream, and what each node gets:
//!
//! - **Address** (workloads and services): every workload on the node, every service, and the
//!   remote workloads an agent can need: those in the mesh (captured: their node proxy must be
//!   reached over HBONE) and those behind a service (load-balancing endpoints). Anything else
//!   can be asked for by name (delta subscription).
//! - **Authorization**: policies that apply to a workload on the node: mesh-wide ones (root
//!   namespace, no selector), ones of a namespace the node hosts workloads of, and
//!   selector-scoped ones a local workload lists, among them the PeerAuthentications
//!   converted for the workloads they make STRICT ([`peer_auth`]).
//! - **ServicePolicy** (Nodemesh's): a service's DestinationRule and TrafficPolicy settings,
//!   for every node, as its services are ([`service_policy`]).
//! - **HttpRoutes** (Nodemesh's): the Gateway API HTTPRoutes attached to a service, flattened
//!   and in precedence order, for every node ([`http_routes`]).
//!
//! How each object becomes a resource is [`encode`]'s; a service's load balancing and a
//! pod's locality are [`topology`]'s.

mod encode;
mod http_routes;
mod peer_auth;
mod service_policy;
mod topology;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use nodemesh_conventions::{DEFAULT_DOMAIN_SUFFIX, DEFAULT_TRUST_DOMAIN, Labels};
use nodemesh_proto::{
    istio::{security as sec, workload as wl},
    prost_types::Any,
    type_urls,
};

use crate::{
    model::{AuthorizationPolicy, Pod, Service},
    store::Inputs,
};

/// Mesh-wide naming.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    pub trust_domain: String,
    pub cluster_id: String,
    pub domain_suffix: String,
    /// Policies without a selector here apply mesh-wide.
    pub root_namespace: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            cluster_id: "Kubernetes".into(),
            domain_suffix: DEFAULT_DOMAIN_SUFFIX.into(),
            root_namespace: "istio-system".into(),
        }
    }
}

/// Who may receive a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Services, mesh workloads, service endpoints, mesh-wide policies.
    Everyone,
    /// A workload outside the mesh and behind no service: only its own node.
    Node(String),
    /// A namespace-wide policy: nodes hosting a workload of that namespace.
    Namespace(String),
    /// A selector-scoped policy: nodes hosting a workload that lists it.
    Selected,
}

#[derive(Debug)]
pub struct Entry {
    /// Shared with every stream that holds it.
    pub name: Arc<str>,
    /// The version as a number (what streams compare) and as sent (its hex form).
    pub hash: u64,
    pub version: String,
    pub body: Any,
    pub audience: Audience,
}

/// What changed since the previous world: streams that saw that one look only at these.
#[derive(Debug, Default)]
pub struct Delta {
    pub from_generation: u64,
    /// Added, changed (content or audience) and removed names, per type.
    pub addresses: Vec<Arc<str>>,
    pub authorizations: Vec<Arc<str>>,
    pub service_policies: Vec<Arc<str>>,
    pub http_routes: Vec<Arc<str>>,
    /// Nodes whose view rules changed (what namespaces or policies they host).
    pub nodes: HashSet<String>,
}

impl Delta {
    pub fn names(&self, type_url: &str) -> &[Arc<str>] {
        match type_url {
            type_urls::ADDRESS => &self.addresses,
            type_urls::AUTHORIZATION => &self.authorizations,
            type_urls::SERVICE_POLICY => &self.service_policies,
            type_urls::HTTP_ROUTES => &self.http_routes,
            _ => &[],
        }
    }
}

/// What a node hosts, for the views.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    namespaces: HashSet<String>,
    policies: HashSet<String>,
    /// (namespace, service account) of the captured pods placed here: the identities the
    /// CA signs for this node's agent.
    identities: HashSet<(String, String)>,
}

#[derive(Debug, Default)]
pub struct World {
    /// Bumped on every rebuild; sent as system_version_info.
    pub generation: u64,
    pub addresses: BTreeMap<Arc<str>, Arc<Entry>>,
    pub authorizations: BTreeMap<Arc<str>, Arc<Entry>>,
    pub service_policies: BTreeMap<Arc<str>, Arc<Entry>>,
    pub http_routes: BTreeMap<Arc<str>, Arc<Entry>>,
    nodes: HashMap<String, NodeInfo>,
    /// Against the world this one replaced (None for the first).
    pub delta: Option<Delta>,
    /// What each entry was made from, so the next build reuses the entries whose inputs
    /// are the same objects (a change to one pod re-encodes one workload, not ten thousand).
    pod_memos: HashMap<Arc<str>, PodMemo>,
    service_memos: HashMap<Arc<str>, (Arc<Service>, Arc<Entry>)>,
}

#[derive(Debug)]
struct PodMemo {
    pod: Arc<Pod>,
    captured: bool,
    backing: Vec<Arc<Service>>,
    policies: Vec<String>,
    /// From the pod's node: a change to the node's topology labels re-encodes its pods.
    locality: Option<wl::Locality>,
    entry: Arc<Entry>,
}

impl PodMemo {
    fn reusable(
        &self,
        pod: &Arc<Pod>,
        captured: bool,
        backing: &[&Arc<Service>],
        policies: &[String],
        locality: Option<&wl::Locality>,
    ) -> bool {
        Arc::ptr_eq(&self.pod, pod)
            && self.locality.as_ref() == locality
            && self.captured == captured
            && self.backing.len() == backing.len()
            && self.backing.iter().zip(backing).all(|(a, b)| Arc::ptr_eq(a, b))
            && self.policies == policies
    }
}

impl World {
    /// Translates the inputs; with `previous`, reuses its unchanged entries and records the
    /// delta from it.
    pub fn build(inputs: &Inputs, mesh: &MeshSettings, generation: u64, previous: Option<&World>) -> Self {
        let mut world = World { generation, ..Default::default() };
        let service_index = ServiceIndex::new(&inputs.services);
        let policies_by_ns = group_selector_policies(&inputs.policies);
        let peer_auth = peer_auth::PeerAuthIndex::new(&inputs.peer_authentications, &mesh.root_namespace);
        let mut converted = peer_auth::ConvertedSet::new();
        for svc in &inputs.services {
            let name: Arc<str> = encode::service_name(svc, mesh).into();
            let entry = match previous.and_then(|p| p.service_memos.get(&name)) {
                Some((old, entry)) if Arc::ptr_eq(old, svc) => Arc::clone(entry),
                _ => Arc::new(entry(name.to_string(), encode::service(svc, mesh), Audience::Everyone)),
            };
            world.service_memos.insert(Arc::clone(&name), (Arc::clone(svc), Arc::clone(&entry)));
            world.addresses.insert(name, entry);
        }
        for pod in &inputs.pods {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let captured = captured(pod, inputs);
            let backing = service_index.selecting(&ns, pod);
            let policies: Vec<String> = policies_by_ns
                .get(ns.as_str())
                .map(|ps| {
                    ps.iter()
                        .filter(|p| {
                            p.spec
                                .selector
                                .as_ref()
                                .is_some_and(|s| labels_match(&s.match_labels, &pod.metadata.labels))
                        })
                        .map(|p| format!("{ns}/{}", p.metadata.name))
                        .collect()
                })
                .unwrap_or_default();
            let mut policies = policies;
            if let Some(c) = (!peer_auth.is_empty()).then(|| peer_auth.for_pod(pod)).flatten() {
                policies.push(c.name.clone());
                converted.entry(c.name).or_insert(c.body);
            }
            let node = pod.spec.node_name.clone().unwrap_or_default();
            let locality = topology::locality(pod, inputs.nodes.get(&node).map(|n| &**n));
            let info = world.nodes.entry(node.clone()).or_default();
            info.namespaces.insert(ns.clone());
            info.policies.extend(policies.iter().cloned());
            if captured {
                let sa = pod.spec.service_account_name.clone().unwrap_or_else(|| "default".into());
                info.identities.insert((ns.clone(), sa));
            }
            let name: Arc<str> = encode::workload_uid(pod, mesh).into();
            let entry = match previous.and_then(|p| p.pod_memos.get(&name)) {
                Some(memo) if memo.reusable(pod, captured, &backing, &policies, locality.as_ref()) => {
                    Arc::clone(&memo.entry)
                }
                _ => {
                    let audience = if captured || !backing.is_empty() {
                        Audience::Everyone
                    } else {
                        Audience::Node(node)
                    };
                    let services: Vec<&Service> = backing.iter().map(|s| s.as_ref()).collect();
                    let body =
                        encode::workload(pod, captured, &services, policies.clone(), locality.clone(), mesh);
                    Arc::new(entry(name.to_string(), body, audience))
                }
            };
            let memo = PodMemo {
                pod: Arc::clone(pod),
                captured,
                backing: backing.into_iter().cloned().collect(),
                policies,
                locality,
                entry: Arc::clone(&entry),
            };
            world.pod_memos.insert(Arc::clone(&name), memo);
            world.addresses.insert(name, entry);
        }
        for policy in &inputs.policies {
            let (body, scope) = encode::authorization(policy, mesh);
            let ns = policy.metadata.namespace.clone().unwrap_or_default();
            let name = format!("{ns}/{}", policy.metadata.name);
            let audience = match scope {
                sec::Scope::WorkloadSelector => Audience::Selected,
                sec::Scope::Global => Audience::Everyone,
                sec::Scope::Namespace => Audience::Namespace(ns),
            };
            world.authorizations.insert(name.as_str().into(), Arc::new(entry(name, body, audience)));
        }
        for (name, body) in converted {
            world
                .authorizations
                .insert(name.as_str().into(), Arc::new(entry(name, body, Audience::Selected)));
        }
        // Few, and cheap to encode: rebuilt every time; the diff still names only those that
        // changed.
        for (name, body) in service_policy::build(inputs, mesh) {
            world
                .service_policies
                .insert(name.as_str().into(), Arc::new(entry(name, body, Audience::Everyone)));
        }
        // The same: few, cheap, rebuilt every time, diffed by version.
        for (name, body) in http_routes::build(inputs, mesh) {
            world.http_routes.insert(name.as_str().into(), Arc::new(entry(name, body, Audience::Everyone)));
        }
        if let Some(previous) = previous {
            world.diff_from(previous);
        }
        world
    }

    /// Whether a captured pod with this namespace and service account is placed on `node`:
    /// only then may that node's agent hold the identity's certificate.
    pub fn hosts_identity(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|info| info.identities.contains(&(namespace.to_owned(), service_account.to_owned())))
    }

    /// Whether `node` gets `entry` without asking for it by name.
    pub fn visible(&self, entry: &Entry, node: &str) -> bool {
        match &entry.audience {
            Audience::Everyone => true,
            Audience::Node(n) => n == node,
            Audience::Namespace(ns) => self.nodes.get(node).is_some_and(|i| i.namespaces.contains(ns)),
            Audience::Selected => self.nodes.get(node).is_some_and(|i| i.policies.contains(&*entry.name)),
        }
    }

    /// Records what differs from `previous`, the world this one replaces.
    fn diff_from(&mut self, previous: &World) {
        fn names(
            new: &BTreeMap<Arc<str>, Arc<Entry>>,
            old: &BTreeMap<Arc<str>, Arc<Entry>>,
        ) -> Vec<Arc<str>> {
            let mut out: Vec<Arc<str>> = new
                .values()
                .filter(|e| {
                    old.get(&*e.name)
                        .is_none_or(|o| !Arc::ptr_eq(o, e) && (o.hash != e.hash || o.audience != e.audience))
                })
                .map(|e| Arc::clone(&e.name))
                .collect();
            out.extend(old.values().filter(|o| !new.contains_key(&*o.name)).map(|o| Arc::clone(&o.name)));
            out
        }
        let mut nodes: HashSet<String> = self
            .nodes
            .iter()
            .filter(|(n, info)| previous.nodes.get(*n) != Some(*info))
            .map(|(n, _)| n.clone())
            .collect();
        nodes.extend(previous.nodes.keys().filter(|n| !self.nodes.contains_key(*n)).cloned());
        self.delta = Some(Delta {
            from_generation: previous.generation,
            addresses: names(&self.addresses, &previous.addresses),
            authorizations: names(&self.authorizations, &previous.authorizations),
            service_policies: names(&self.service_policies, &previous.service_policies),
            http_routes: names(&self.http_routes, &previous.http_routes),
            nodes,
        });
    }

    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<Arc<str>, Arc<Entry>>> {
        match type_url {
            type_urls::ADDRESS => Some(&self.addresses),
            type_urls::AUTHORIZATION => Some(&self.authorizations),
            type_urls::SERVICE_POLICY => Some(&self.service_policies),
            type_urls::HTTP_ROUTES => Some(&self.http_routes),
            _ => None,
        }
    }
}

fn entry(name: String, body: Any, audience: Audience) -> Entry {
    let hash = fnv(&body.value);
    Entry { hash, version: format!("{hash:016x}"), name: name.into(), body, audience }
}

/// A version as sent back by a client (`initial_resource_versions`); anything that is not
/// one of ours matches nothing.
pub fn parse_version(version: &str) -> Option<u64> {
    (version.len() == 16).then(|| u64::from_str_radix(version, 16).ok()).flatten()
}

/// FNV-1a of the encoded resource: stable across restarts, so a reconnecting agent that
/// reports what it holds gets only what changed.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The mesh's capture rule, on the pod and its namespace.
fn captured(pod: &Pod, inputs: &Inputs) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let namespace = inputs.namespaces.get(ns).map(|n| &n.metadata.labels);
    nodemesh_conventions::captured(namespace, &pod.metadata.labels, pod.spec.host_network)
}

fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A service selects a pod in its namespace whose labels carry the whole (non-empty)
/// selector.
fn selects(svc: &Service, pod: &Pod) -> bool {
    svc.spec.selector.as_ref().is_some_and(|s| !s.is_empty() && labels_match(s, &pod.metadata.labels))
}

/// Services by (namespace, first label of the selector): a pod is checked only against the
/// services one of its own labels could satisfy, not against every service of its namespace.
/// (namespace, label key, label value).
type LabelKey<'a> = (&'a str, &'a str, &'a str);

struct ServiceIndex<'a> {
    by_first_label: HashMap<LabelKey<'a>, Vec<(usize, &'a Arc<Service>)>>,
}

impl<'a> ServiceIndex<'a> {
    fn new(services: &'a [Arc<Service>]) -> Self {
        let mut by_first_label: HashMap<_, Vec<_>> = HashMap::new();
        for (i, svc) in services.iter().enumerate() {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            if let Some((k, v)) = svc.spec.selector.as_ref().and_then(|s| s.iter().next()) {
                by_first_label.entry((ns, k.as_str(), v.as_str())).or_default().push((i, svc));
            }
        }
        Self { by_first_label }
    }

    /// The services selecting `pod`, in input order.
    fn selecting(&self, ns: &str, pod: &Pod) -> Vec<&'a Arc<Service>> {
        let mut found: Vec<(usize, &Arc<Service>)> = pod
            .metadata
            .labels
            .iter()
            .filter_map(|(k, v)| self.by_first_label.get(&(ns, k.as_str(), v.as_str())))
            .flatten()
            .filter(|(_, svc)| selects(svc, pod))
            .copied()
            .collect();
        found.sort_unstable_by_key(|(i, _)| *i);
        found.into_iter().map(|(_, svc)| svc).collect()
    }
}

fn group_selector_policies(
    policies: &[Arc<AuthorizationPolicy>],
) -> HashMap<&str, Vec<&AuthorizationPolicy>> {
    let mut by_ns: HashMap<&str, Vec<&AuthorizationPolicy>> = HashMap::new();
    for p in policies.iter().filter(|p| p.spec.selector.is_some()) {
        by_ns.entry(p.metadata.namespace.as_deref().unwrap_or_default()).or_default().push(p);
    }
    by_ns
}

#[cfg(test)]
mod tests;
