//! The control plane's input, in Kubernetes' own vocabulary: Namespaces, Nodes, Pods,
//! Services, Istio's AuthorizationPolicies, PeerAuthentications and DestinationRules,
//! Nodemesh's TrafficPolicies, and Gateway API's HTTPRoutes, as YAML documents. Only the fields the control plane uses are
//! read; others (status details, managed fields) are ignored, as Kubernetes clients do.
//! Every error names the field at fault.

pub mod destination_rule;
mod duration;
pub mod http_route;
pub mod traffic_policy;
mod validate;

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

pub use destination_rule::DestinationRule;
pub use duration::Duration;
pub use http_route::HttpRoute;
pub use nodemesh_conventions::{FieldError, Labels, OwnerReference, rules};
use serde::{Deserialize, Serialize};
pub use traffic_policy::TrafficPolicy;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    /// Who created the object (a pod's ReplicaSet, Job, ...): names its workload.
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
    /// Set once the object is being deleted (a terminating pod).
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

/// A cluster node: only its name and labels are read (its topology labels give the pods on
/// it their locality).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub metadata: ObjectMeta,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub conditions: Vec<PodCondition>,
}

/// One of `status.conditions` (only `Ready` is read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

impl Pod {
    /// Whether the pod may receive traffic (an endpoint, as Kubernetes and Istio count one):
    /// running, with an address, not terminating, and Ready when it reports conditions (a
    /// hand-written manifest without conditions counts by its phase).
    pub fn ready(&self) -> bool {
        let has_ip = self.status.pod_ip.is_some() || !self.status.pod_ips.is_empty();
        let ready = match self.status.conditions.iter().find(|c| c.kind == "Ready") {
            Some(c) => c.status == "True",
            None => self.status.conditions.is_empty(),
        };
        has_ip
            && self.metadata.deletion_timestamp.is_none()
            && matches!(self.status.phase.as_deref(), None | Some("Running"))
            && ready
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub selector: Option<Labels>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `PreferClose`, `PreferSameZone`, `PreferSameNode`, or a value Kubernetes leaves to the
    /// implementation (no preference here).
    #[serde(default)]
    pub traffic_distribution: Option<String>,
    /// `Cluster` (the default) or `Local` (endpoints on the client's node only).
    #[serde(default)]
    pub internal_traffic_policy: Option<String>,
    /// Endpoints are used whether or not they are ready.
    #[serde(default)]
    pub publish_not_ready_addresses: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<TargetPort>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// A Service's targetPort: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// Istio's AuthorizationPolicy (security.istio.io/v1), the L4 subset a node proxy enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: Labels,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    pub operation: Operation,
}

/// Only ports are L4; the L7 fields are accepted by Kubernetes but need a waypoint, which
/// Nodemesh does not have, so they are rejected with a clear error instead of ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

/// Istio's PeerAuthentication (security.istio.io/v1): whether a workload accepts plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Target port (of the pod) → mode; only with a selector, as Istio requires. Keys as
    /// written (`8080:` or `"8080":`), checked by validation.
    #[serde(default, deserialize_with = "port_keys")]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

/// A map whose keys YAML may type as numbers or strings, as text.
fn port_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, MutualTls>, D::Error> {
    let raw: Vec<(serde_yaml::Value, MutualTls)> = serde_yaml::Mapping::deserialize(d)?
        .into_iter()
        .map(|(k, v)| serde_yaml::from_value(v).map(|v| (k, v)).map_err(serde::de::Error::custom))
        .collect::<Result<_, D::Error>>()?;
    let key = |k: serde_yaml::Value| match k {
        serde_yaml::Value::String(s) => Ok(s),
        serde_yaml::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("{other:?} is not a port"))),
    };
    raw.into_iter().map(|(k, v)| Ok((key(k)?, v))).collect()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    /// `UNSET` (inherit), `DISABLE`, `PERMISSIVE` or `STRICT`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// One parsed and validated object. Shared, so unchanged objects keep their identity from one
/// world build to the next (which is how the builder knows it can reuse what it made of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Arc<Namespace>),
    Node(Arc<Node>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    PeerAuthentication(Arc<PeerAuthentication>),
    DestinationRule(Arc<DestinationRule>),
    TrafficPolicy(Arc<TrafficPolicy>),
    HttpRoute(Arc<HttpRoute>),
}

/// Identifies an object (duplicates across files are an error).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Object {
    /// Namespaces and Nodes belong to no namespace.
    fn namespaced(&self) -> bool {
        !matches!(self, Object::Namespace(_) | Object::Node(_))
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut Arc::make_mut(o).metadata,
            Object::Node(o) => &mut Arc::make_mut(o).metadata,
            Object::Pod(o) => &mut Arc::make_mut(o).metadata,
            Object::Service(o) => &mut Arc::make_mut(o).metadata,
            Object::AuthorizationPolicy(o) => &mut Arc::make_mut(o).metadata,
            Object::PeerAuthentication(o) => &mut Arc::make_mut(o).metadata,
            Object::DestinationRule(o) => &mut Arc::make_mut(o).metadata,
            Object::TrafficPolicy(o) => &mut Arc::make_mut(o).metadata,
            Object::HttpRoute(o) => &mut Arc::make_mut(o).metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::Node(o) => ("Node", &o.metadata),
            Object::Pod(o) => ("Pod", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::AuthorizationPolicy(o) => ("AuthorizationPolicy", &o.metadata),
            Object::PeerAuthentication(o) => ("PeerAuthentication", &o.metadata),
            Object::DestinationRule(o) => ("DestinationRule", &o.metadata),
            Object::TrafficPolicy(o) => ("TrafficPolicy", &o.metadata),
            Object::HttpRoute(o) => ("HTTPRoute", &o.metadata),
        };
        let namespace =
            if self.namespaced() { meta.namespace.clone().unwrap_or_default() } else { String::new() };
        ObjectKey { kind, namespace, name: meta.name.clone() }
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

/// Parses one YAML document (already split from its file) into an object.
pub fn parse_document(doc: serde_yaml::Value) -> Result<Option<Object>, FieldError> {
    if doc.is_null() {
        return Ok(None);
    }
    let kind = doc
        .get("kind")
        .and_then(serde_yaml::Value::as_str)
        .ok_or_else(|| err("kind", "required"))?
        .to_owned();
    let api = doc.get("apiVersion").and_then(serde_yaml::Value::as_str).unwrap_or_default().to_owned();
    validate::string_maps(&doc, &kind)?;
    let object = match (kind.as_str(), api.as_str()) {
        ("Namespace", "v1") => Object::Namespace(Arc::new(typed(doc)?)),
        ("Node", "v1") => Object::Node(Arc::new(typed(doc)?)),
        ("Pod", "v1") => Object::Pod(Arc::new(typed(doc)?)),
        ("Service", "v1") => Object::Service(Arc::new(typed(doc)?)),
        ("AuthorizationPolicy", "security.istio.io/v1" | "security.istio.io/v1beta1") => {
            Object::AuthorizationPolicy(Arc::new(typed(doc)?))
        }
        ("PeerAuthentication", "security.istio.io/v1" | "security.istio.io/v1beta1") => {
            Object::PeerAuthentication(Arc::new(typed(doc)?))
        }
        (
            "DestinationRule",
            "networking.istio.io/v1" | "networking.istio.io/v1beta1" | "networking.istio.io/v1alpha3",
        ) => Object::DestinationRule(Arc::new(typed(doc)?)),
        ("TrafficPolicy", "nodemesh.io/v1alpha1") => Object::TrafficPolicy(Arc::new(typed(doc)?)),
        ("HTTPRoute", "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1") => {
            Object::HttpRoute(Arc::new(typed(doc)?))
        }
        (
            "Namespace"
            | "Node"
            | "Pod"
            | "Service"
            | "AuthorizationPolicy"
            | "PeerAuthentication"
            | "DestinationRule"
            | "TrafficPolicy"
            | "HTTPRoute",
            other,
        ) => {
            return Err(err(
                "apiVersion",
                format!("{other:?} is not a version of {kind} this control plane reads"),
            ));
        }
        (other, _) => return Err(err("kind", format!("{other:?} is not a kind this control plane reads"))),
    };
    let mut object = object;
    validate::validate(&mut object)?;
    Ok(Some(object))
}

/// A Service's hostname: `name.namespace.svc.<domain suffix>`, as Kubernetes DNS and istiod
/// name it.
pub fn service_fqdn(name: &str, namespace: &str, domain_suffix: &str) -> String {
    format!("{name}.{namespace}.svc.{domain_suffix}")
}

fn typed<T: serde::de::DeserializeOwned>(doc: serde_yaml::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(doc).map_err(|e| err(e.path().to_string(), e.into_inner().to_string()))
}

/// `a.b.c.d/len`, `x::/len`, or a bare address (a host).
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (text, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| format!("{text:?} is not an address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{text:?}: bad prefix length"))?,
        None => max,
    };
    Ok((ip, len))
}

#[cfg(test)]
mod tests;
