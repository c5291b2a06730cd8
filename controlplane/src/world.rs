//! The inputs translated into xDS resources, encoded once and shared by every agent's
//! stream, and what each node gets:
//!
//! - **Address** (workloads and services): every workload on the node, every service, and the
//!   remote workloads an agent can need: those in the mesh (captured: their node proxy must be
//!   reached over HBONE) and those behind a service (load-balancing endpoints). Anything else
//!   can be asked for by name (delta subscription).
//! - **Authorization**: policies that apply to a workload on the node: mesh-wide ones (root
//!   namespace, no selector), ones of a namespace the node hosts workloads of, and
//!   selector-scoped ones a local workload lists.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use nodemesh_proto::{
    istio::{security as sec, workload as wl},
    prost::Message as _,
    prost_types::Any,
    type_urls,
};

use crate::{
    model::{AuthorizationPolicy, Labels, Pod, Service, TargetPort, parse_cidr},
    naming,
    store::Inputs,
};

pub const INTERCEPT_LABEL: &str = "nodemesh.io/intercept";
/// The Workload extension carrying the pod's Kubernetes UID (a StringValue): the agent finds
/// the pod's cgroup by it.
pub const POD_UID_EXTENSION: &str = "nodemesh.io/pod-uid";

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
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            domain_suffix: "cluster.local".into(),
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
    /// Nodes whose view rules changed (what namespaces or policies they host).
    pub nodes: HashSet<String>,
}

impl Delta {
    pub fn names(&self, type_url: &str) -> &[Arc<str>] {
        match type_url {
            type_urls::ADDRESS => &self.addresses,
            type_urls::AUTHORIZATION => &self.authorizations,
            _ => &[],
        }
    }
}

/// What a node hosts, for the views.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    namespaces: HashSet<String>,
    policies: HashSet<String>,
}

#[derive(Debug, Default)]
pub struct World {
    /// Bumped on every rebuild; sent as system_version_info.
    pub generation: u64,
    pub addresses: BTreeMap<Arc<str>, Arc<Entry>>,
    pub authorizations: BTreeMap<Arc<str>, Arc<Entry>>,
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
    entry: Arc<Entry>,
}

impl PodMemo {
    fn reusable(
        &self,
        pod: &Arc<Pod>,
        captured: bool,
        backing: &[&Arc<Service>],
        policies: &[String],
    ) -> bool {
        Arc::ptr_eq(&self.pod, pod)
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
        for svc in &inputs.services {
            let name: Arc<str> = service_name(svc, mesh).into();
            let entry = match previous.and_then(|p| p.service_memos.get(&name)) {
                Some((old, entry)) if Arc::ptr_eq(old, svc) => Arc::clone(entry),
                _ => Arc::new(service_entry(svc, mesh)),
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
            let node = pod.spec.node_name.clone().unwrap_or_default();
            let info = world.nodes.entry(node.clone()).or_default();
            info.namespaces.insert(ns.clone());
            info.policies.extend(policies.iter().cloned());
            let name: Arc<str> = workload_uid(pod, mesh).into();
            let entry = match previous.and_then(|p| p.pod_memos.get(&name)) {
                Some(memo) if memo.reusable(pod, captured, &backing, &policies) => Arc::clone(&memo.entry),
                _ => {
                    let audience = if captured || !backing.is_empty() {
                        Audience::Everyone
                    } else {
                        Audience::Node(node)
                    };
                    let services: Vec<&Service> = backing.iter().map(|s| s.as_ref()).collect();
                    let workload = workload(pod, captured, &services, policies.clone(), mesh);
                    let body = address_any(wl::address::Type::Workload(workload));
                    Arc::new(entry(name.to_string(), body, audience))
                }
            };
            let memo = PodMemo {
                pod: Arc::clone(pod),
                captured,
                backing: backing.into_iter().cloned().collect(),
                policies,
                entry: Arc::clone(&entry),
            };
            world.pod_memos.insert(Arc::clone(&name), memo);
            world.addresses.insert(name, entry);
        }
        for policy in &inputs.policies {
            let (auth, audience) = authorization(policy, mesh);
            let name = format!("{}/{}", auth.namespace, auth.name);
            let body = Any { type_url: type_urls::AUTHORIZATION.into(), value: auth.encode_to_vec() };
            world.authorizations.insert(name.as_str().into(), Arc::new(entry(name, body, audience)));
        }
        if let Some(previous) = previous {
            world.diff_from(previous);
        }
        world
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
            nodes,
        });
    }

    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<Arc<str>, Arc<Entry>>> {
        match type_url {
            type_urls::ADDRESS => Some(&self.addresses),
            type_urls::AUTHORIZATION => Some(&self.authorizations),
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

fn address_any(t: wl::address::Type) -> Any {
    Any { type_url: type_urls::ADDRESS.into(), value: wl::Address { r#type: Some(t) }.encode_to_vec() }
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

fn captured(pod: &Pod, inputs: &Inputs) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let namespace_on = inputs
        .namespaces
        .get(ns)
        .and_then(|n| n.metadata.labels.get(INTERCEPT_LABEL))
        .is_some_and(|v| v == "enabled");
    let pod_off = pod.metadata.labels.get(INTERCEPT_LABEL).is_some_and(|v| v == "disabled");
    namespace_on && !pod_off && !pod.spec.host_network
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

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// An address as served: IPv4-mapped IPv6 as the IPv4 address it is (as the store compares
/// them for clashes), so an agent looks a pod up by the address its packets carry.
fn canonical(ip: &str) -> Option<IpAddr> {
    ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in
        pod.status.pod_ip.iter().chain(pod.status.pod_ips.iter().map(|p| &p.ip)).filter_map(|i| canonical(i))
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

fn hostname(svc: &Service, mesh: &MeshSettings) -> String {
    format!(
        "{}.{}.svc.{}",
        svc.metadata.name,
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        mesh.domain_suffix
    )
}

/// Istio's reading of a port's protocol: appProtocol, else the port name's prefix.
fn app_protocol(name: Option<&str>, app: Option<&str>) -> wl::AppProtocol {
    let hint = app.or_else(|| name.map(|n| n.split('-').next().unwrap_or(n))).unwrap_or_default();
    match hint.to_ascii_lowercase().as_str() {
        "http" => wl::AppProtocol::Http11,
        "http2" | "h2c" | "kubernetes.io/h2c" => wl::AppProtocol::Http2,
        "grpc" => wl::AppProtocol::Grpc,
        "tcp" => wl::AppProtocol::Tcp,
        "tls" | "https" => wl::AppProtocol::Tls,
        _ => wl::AppProtocol::Unknown,
    }
}

fn service_entry(svc: &Service, mesh: &MeshSettings) -> Entry {
    let ips: Vec<IpAddr> = svc
        .spec
        .cluster_ips
        .iter()
        .chain(svc.spec.cluster_ip.iter())
        .filter_map(|ip| canonical(ip))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ip_families = match (ips.iter().any(IpAddr::is_ipv4), ips.iter().any(IpAddr::is_ipv6)) {
        (true, true) => wl::IpFamilies::Dual,
        (false, true) => wl::IpFamilies::Ipv6Only,
        (true, false) => wl::IpFamilies::Ipv4Only,
        (false, false) => wl::IpFamilies::Automatic,
    };
    let service = wl::Service {
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        hostname: hostname(svc, mesh),
        addresses: ips
            .iter()
            .map(|ip| wl::NetworkAddress { network: String::new(), address: ip_bytes(*ip), length: 0 })
            .collect(),
        // A named target port differs per pod, so the service itself carries 0 for it.
        ports: service_ports(svc, |_| None),
        ip_families: ip_families as i32,
        ..Default::default()
    };
    entry(service_name(svc, mesh), address_any(wl::address::Type::Service(service)), Audience::Everyone)
}

/// A service's resource name: "namespace/hostname", as istiod names them.
fn service_name(svc: &Service, mesh: &MeshSettings) -> String {
    format!("{}/{}", svc.metadata.namespace.as_deref().unwrap_or_default(), hostname(svc, mesh))
}

/// A workload's uid and resource name: "cluster//Pod/namespace/name", as istiod names them.
fn workload_uid(pod: &Pod, mesh: &MeshSettings) -> String {
    format!(
        "{}//Pod/{}/{}",
        mesh.cluster_id,
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name
    )
}

/// The wire ports of a service; `named` resolves a named target port (0 when it cannot).
fn service_ports(svc: &Service, named: impl Fn(&str) -> Option<u16>) -> Vec<wl::Port> {
    svc.spec
        .ports
        .iter()
        .map(|p| wl::Port {
            service_port: u32::from(p.port),
            target_port: match &p.target_port {
                Some(TargetPort::Number(n)) => u32::from(*n),
                Some(TargetPort::Name(n)) => named(n).map_or(0, u32::from),
                None => u32::from(p.port),
            },
            app_protocol: app_protocol(p.name.as_deref(), p.app_protocol.as_deref()) as i32,
        })
        .collect()
}

fn workload(
    pod: &Pod,
    captured: bool,
    backing: &[&Service],
    policies: Vec<String>,
    mesh: &MeshSettings,
) -> wl::Workload {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let labels = &pod.metadata.labels;
    let workload_name = naming::workload_name(&pod.metadata.name, labels, &pod.metadata.owner_references);
    let container_port = |name: &str| {
        pod.spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    let services = backing
        .iter()
        .map(|svc| {
            (
                format!("{ns}/{}", hostname(svc, mesh)),
                wl::PortList { ports: service_ports(svc, container_port) },
            )
        })
        .collect();
    let uid_ext = wl::Extension {
        name: POD_UID_EXTENSION.into(),
        config: Some(Any {
            type_url: type_urls::STRING_VALUE.into(),
            value: pod.metadata.uid.clone().unwrap_or_default().encode_to_vec(),
        }),
    };
    wl::Workload {
        uid: workload_uid(pod, mesh),
        name: pod.metadata.name.clone(),
        namespace: ns,
        addresses: pod_ips(pod).into_iter().map(ip_bytes).collect(),
        tunnel_protocol: if captured { wl::TunnelProtocol::Hbone } else { wl::TunnelProtocol::None } as i32,
        trust_domain: mesh.trust_domain.clone(),
        service_account: pod.spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
        node: pod.spec.node_name.clone().unwrap_or_default(),
        canonical_name: naming::canonical_service(labels, &workload_name),
        canonical_revision: naming::canonical_revision(labels),
        workload_type: wl::WorkloadType::Pod as i32,
        workload_name,
        services,
        authorization_policies: policies,
        status: match pod.status.phase.as_deref() {
            Some("Failed" | "Succeeded") => wl::WorkloadStatus::Unhealthy,
            _ => wl::WorkloadStatus::Healthy,
        } as i32,
        cluster_id: mesh.cluster_id.clone(),
        network_mode: if pod.spec.host_network {
            wl::NetworkMode::HostNetwork
        } else {
            wl::NetworkMode::Standard
        } as i32,
        extensions: vec![uid_ext],
        ..Default::default()
    }
}

/// Istio's string match syntax: `*` anything present, `pre*`, `*suf`, or exact.
fn string_match(s: &str) -> sec::StringMatch {
    use sec::string_match::MatchType;
    let t = if s == "*" {
        MatchType::Presence(())
    } else if let Some(prefix) = s.strip_suffix('*') {
        MatchType::Prefix(prefix.into())
    } else if let Some(suffix) = s.strip_prefix('*') {
        MatchType::Suffix(suffix.into())
    } else {
        MatchType::Exact(s.into())
    };
    sec::StringMatch { match_type: Some(t) }
}

fn cidrs(blocks: &[String]) -> Vec<sec::Address> {
    blocks
        .iter()
        .filter_map(|b| parse_cidr(b).ok())
        .map(|(ip, len)| sec::Address { address: ip_bytes(ip), length: u32::from(len) })
        .collect()
}

fn ports(list: &[String]) -> Vec<u32> {
    list.iter().filter_map(|p| p.parse().ok()).collect()
}

fn authorization(policy: &AuthorizationPolicy, mesh: &MeshSettings) -> (sec::Authorization, Audience) {
    let ns = policy.metadata.namespace.clone().unwrap_or_default();
    let (scope, audience) = match (&policy.spec.selector, ns == mesh.root_namespace) {
        (Some(_), _) => (sec::Scope::WorkloadSelector, Audience::Selected),
        (None, true) => (sec::Scope::Global, Audience::Everyone),
        (None, false) => (sec::Scope::Namespace, Audience::Namespace(ns.clone())),
    };
    let rules = policy
        .spec
        .rules
        .iter()
        .map(|rule| {
            let mut clauses = Vec::new();
            if !rule.from.is_empty() {
                let matches = rule
                    .from
                    .iter()
                    .map(|f| {
                        let s = &f.source;
                        sec::Match {
                            principals: s.principals.iter().map(|p| string_match(p)).collect(),
                            not_principals: s.not_principals.iter().map(|p| string_match(p)).collect(),
                            namespaces: s.namespaces.iter().map(|n| string_match(n)).collect(),
                            not_namespaces: s.not_namespaces.iter().map(|n| string_match(n)).collect(),
                            source_ips: cidrs(&s.ip_blocks),
                            not_source_ips: cidrs(&s.not_ip_blocks),
                            ..Default::default()
                        }
                    })
                    .collect();
                clauses.push(sec::Clause { matches });
            }
            if !rule.to.is_empty() {
                let matches = rule
                    .to
                    .iter()
                    .map(|t| sec::Match {
                        destination_ports: ports(&t.operation.ports),
                        not_destination_ports: ports(&t.operation.not_ports),
                        ..Default::default()
                    })
                    .collect();
                clauses.push(sec::Clause { matches });
            }
            sec::Rule { clauses }
        })
        .collect();
    let action = match policy.spec.action.as_deref() {
        Some("DENY") => sec::Action::Deny,
        _ => sec::Action::Allow,
    };
    let auth = sec::Authorization {
        name: policy.metadata.name.clone(),
        namespace: ns,
        scope: scope as i32,
        action: action as i32,
        rules,
        ..Default::default()
    };
    (auth, audience)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectMeta, PodSpec, PodStatus};

    fn pod(name: &str, ns: &str, node: &str, labels: &[(&str, &str)]) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some(ns.into()),
                uid: Some(format!("00{}", name.len())),
                labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                ..Default::default()
            },
            spec: PodSpec { node_name: Some(node.into()), ..Default::default() },
            status: PodStatus { pod_ip: Some("10.0.0.1".into()), ..Default::default() },
        })
    }

    fn decode(entry: &Entry) -> wl::Workload {
        match wl::Address::decode(entry.body.value.as_slice()).expect("decode").r#type {
            Some(wl::address::Type::Workload(w)) => w,
            other => panic!("not a workload: {other:?}"),
        }
    }

    #[test]
    fn captured_workloads_and_views() {
        let mut inputs = Inputs::default();
        let mut ns =
            crate::model::Namespace { metadata: ObjectMeta { name: "shop".into(), ..Default::default() } };
        ns.metadata.labels.insert(INTERCEPT_LABEL.into(), "enabled".into());
        inputs.namespaces.insert("shop".into(), Arc::new(ns));
        inputs.pods.push(pod("cart", "shop", "n1", &[("app", "cart")]));
        inputs.pods.push(pod("batch", "shop", "n1", &[(INTERCEPT_LABEL, "disabled")]));
        inputs.pods.push(pod("legacy", "other", "n2", &[]));
        let world = World::build(&inputs, &MeshSettings::default(), 1, None);

        let cart = &world.addresses["Kubernetes//Pod/shop/cart"];
        let w = decode(cart);
        assert_eq!(w.tunnel_protocol, wl::TunnelProtocol::Hbone as i32);
        assert_eq!(w.extensions[0].name, POD_UID_EXTENSION);
        assert!(world.visible(cart, "n2"), "mesh workloads are visible everywhere");
        let batch = &world.addresses["Kubernetes//Pod/shop/batch"];
        assert_eq!(decode(batch).tunnel_protocol, wl::TunnelProtocol::None as i32, "the pod opted out");
        let legacy = &world.addresses["Kubernetes//Pod/other/legacy"];
        assert!(
            world.visible(legacy, "n2") && !world.visible(legacy, "n1"),
            "outside the mesh: its node only"
        );
    }

    #[test]
    fn workloads_carry_their_deployment_and_canonical_names() {
        let mut inputs = Inputs::default();
        let mut replica =
            (*pod("cart-7d9f8c6b5-x2x4z", "shop", "n1", &[("app", "cart"), ("version", "v2")])).clone();
        replica.metadata.labels.insert("pod-template-hash".into(), "7d9f8c6b5".into());
        replica.metadata.owner_references = vec![crate::model::OwnerReference {
            kind: "ReplicaSet".into(),
            name: "cart-7d9f8c6b5".into(),
            controller: Some(true),
        }];
        inputs.pods.push(Arc::new(replica));
        inputs.pods.push(pod("debug", "shop", "n1", &[]));
        let world = World::build(&inputs, &MeshSettings::default(), 1, None);

        let w = decode(&world.addresses["Kubernetes//Pod/shop/cart-7d9f8c6b5-x2x4z"]);
        assert_eq!((w.name.as_str(), w.workload_name.as_str()), ("cart-7d9f8c6b5-x2x4z", "cart"));
        assert_eq!((w.canonical_name.as_str(), w.canonical_revision.as_str()), ("cart", "v2"));
        let w = decode(&world.addresses["Kubernetes//Pod/shop/debug"]);
        assert_eq!((w.workload_name.as_str(), w.canonical_name.as_str()), ("debug", "debug"));
        assert_eq!(w.canonical_revision, "latest");
    }

    #[test]
    fn ipv4_mapped_addresses_are_served_as_ipv4() {
        let mut inputs = Inputs::default();
        let mut mapped = (*pod("a", "x", "n1", &[])).clone();
        mapped.status.pod_ip = Some("::ffff:10.0.0.7".into());
        mapped.status.pod_ips = vec![crate::model::PodIp { ip: "10.0.0.7".into() }];
        inputs.pods.push(Arc::new(mapped));
        let world = World::build(&inputs, &MeshSettings::default(), 1, None);
        let w = decode(&world.addresses["Kubernetes//Pod/x/a"]);
        assert_eq!(w.addresses, [vec![10, 0, 0, 7]]);
    }

    #[test]
    fn versions_follow_content() {
        let mut inputs = Inputs::default();
        inputs.pods.push(pod("a", "x", "n1", &[]));
        let v1 = World::build(&inputs, &MeshSettings::default(), 1, None).addresses["Kubernetes//Pod/x/a"]
            .version
            .clone();
        let v2 = World::build(&inputs, &MeshSettings::default(), 2, None).addresses["Kubernetes//Pod/x/a"]
            .version
            .clone();
        assert_eq!(v1, v2);
        let changed = Arc::make_mut(&mut inputs.pods[0]);
        changed.metadata.labels.insert("k".into(), "v".into());
        changed.spec.service_account_name = Some("other".into());
        let v3 = World::build(&inputs, &MeshSettings::default(), 3, None).addresses["Kubernetes//Pod/x/a"]
            .version
            .clone();
        assert_ne!(v1, v3);
    }

    #[test]
    fn a_workload_behind_many_services_keeps_its_version_across_builds() {
        let mut inputs = Inputs::default();
        inputs.pods.push(pod("a", "x", "n1", &[("app", "a"), ("tier", "web")]));
        for (name, key, value) in
            [("s1", "app", "a"), ("s2", "tier", "web"), ("s3", "app", "a"), ("s4", "app", "b")]
        {
            let svc = crate::model::Service {
                metadata: ObjectMeta { name: name.into(), namespace: Some("x".into()), ..Default::default() },
                spec: crate::model::ServiceSpec {
                    selector: Some([(key.to_owned(), value.to_owned())].into()),
                    cluster_ip: Some("10.96.0.1".into()),
                    cluster_ips: Vec::new(),
                    ports: vec![crate::model::ServicePort {
                        name: None,
                        port: 80,
                        target_port: None,
                        protocol: None,
                        app_protocol: None,
                    }],
                },
            };
            inputs.services.push(Arc::new(svc));
        }
        let mesh = MeshSettings::default();
        let first = World::build(&inputs, &mesh, 1, None);
        let w = decode(&first.addresses["Kubernetes//Pod/x/a"]);
        let keys: Vec<&str> = w.services.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["x/s1.x.svc.cluster.local", "x/s2.x.svc.cluster.local", "x/s3.x.svc.cluster.local"]
        );
        for g in 2..20 {
            // Built afresh (no memo to reuse), so the encoding itself must be stable.
            let fresh = World::build(&inputs, &mesh, g, None);
            let again = World::build(&inputs, &mesh, g, Some(&fresh));
            let fresh_vs_first = World::build(&inputs, &mesh, g + 100, Some(&first));
            assert!(fresh.addresses.iter().all(|(n, e)| first.addresses[n].hash == e.hash));
            assert_eq!(fresh_vs_first.delta.as_ref().map(|d| d.addresses.len()), Some(0));
            assert_eq!(
                again.delta.as_ref().map(|d| d.addresses.len()),
                Some(0),
                "build {g} changed something"
            );
        }
    }

    #[test]
    fn a_rebuild_reuses_what_did_not_change_and_redoes_what_did() {
        let mut inputs = Inputs::default();
        let ns =
            crate::model::Namespace { metadata: ObjectMeta { name: "shop".into(), ..Default::default() } };
        inputs.namespaces.insert("shop".into(), Arc::new(ns.clone()));
        inputs.pods.push(pod("a", "shop", "n1", &[]));
        inputs.pods.push(pod("b", "shop", "n1", &[]));
        inputs.pods.push(pod("c", "other", "n2", &[]));
        let mesh = MeshSettings::default();
        let first = World::build(&inputs, &mesh, 1, None);

        // One pod changes: only it is rebuilt, and the delta names only it.
        Arc::make_mut(&mut inputs.pods[0]).spec.service_account_name = Some("sa".into());
        let second = World::build(&inputs, &mesh, 2, Some(&first));
        let b = "Kubernetes//Pod/shop/b";
        assert!(Arc::ptr_eq(&first.addresses[b], &second.addresses[b]), "b reused");
        let delta = second.delta.as_ref().expect("delta");
        assert_eq!(delta.addresses.iter().map(|n| &**n).collect::<Vec<_>>(), ["Kubernetes//Pod/shop/a"]);
        assert_eq!(delta.from_generation, 1);

        // The namespace turns interception on: both of its pods change, the other does not.
        let mut labelled = ns;
        labelled.metadata.labels.insert(INTERCEPT_LABEL.into(), "enabled".into());
        inputs.namespaces.insert("shop".into(), Arc::new(labelled));
        let third = World::build(&inputs, &mesh, 3, Some(&second));
        let mut names: Vec<&str> =
            third.delta.as_ref().expect("delta").addresses.iter().map(|n| &**n).collect();
        names.sort_unstable();
        assert_eq!(names, ["Kubernetes//Pod/shop/a", b]);
        assert_eq!(decode(&third.addresses[b]).tunnel_protocol, wl::TunnelProtocol::Hbone as i32);

        // A pod goes away: named in the delta, as removed.
        inputs.pods.remove(2);
        let fourth = World::build(&inputs, &mesh, 4, Some(&third));
        let delta = fourth.delta.as_ref().expect("delta");
        assert_eq!(delta.addresses.iter().map(|n| &**n).collect::<Vec<_>>(), ["Kubernetes//Pod/other/c"]);
        assert!(delta.nodes.contains("n2"), "n2 hosts nothing any more");
    }
}
