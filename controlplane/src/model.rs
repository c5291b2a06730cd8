//! The control plane's input, in Kubernetes' own vocabulary: Namespaces, Pods, Services and
//! Istio AuthorizationPolicies, as YAML documents. Only the fields the control plane uses are
//! read; others (status details, managed fields) are ignored, as Kubernetes clients do.
//! Every error names the field at fault.

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

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
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    /// The managing controller among the owners.
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
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

/// One parsed and validated object. Shared, so unchanged objects keep their identity from one
/// world build to the next (which is how the builder knows it can reuse what it made of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
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
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut Arc::make_mut(o).metadata,
            Object::Pod(o) => &mut Arc::make_mut(o).metadata,
            Object::Service(o) => &mut Arc::make_mut(o).metadata,
            Object::AuthorizationPolicy(o) => &mut Arc::make_mut(o).metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::Pod(o) => ("Pod", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::AuthorizationPolicy(o) => ("AuthorizationPolicy", &o.metadata),
        };
        let namespace =
            if kind == "Namespace" { String::new() } else { meta.namespace.clone().unwrap_or_default() };
        ObjectKey { kind, namespace, name: meta.name.clone() }
    }
}

/// An input problem: where, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path inside the document, e.g. `spec.ports[0].port`.
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
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
    let object = match (kind.as_str(), api.as_str()) {
        ("Namespace", "v1") => Object::Namespace(Arc::new(typed(doc)?)),
        ("Pod", "v1") => Object::Pod(Arc::new(typed(doc)?)),
        ("Service", "v1") => Object::Service(Arc::new(typed(doc)?)),
        ("AuthorizationPolicy", "security.istio.io/v1" | "security.istio.io/v1beta1") => {
            Object::AuthorizationPolicy(Arc::new(typed(doc)?))
        }
        ("Namespace" | "Pod" | "Service" | "AuthorizationPolicy", other) => {
            return Err(err(
                "apiVersion",
                format!("{other:?} is not a version of {kind} this control plane reads"),
            ));
        }
        (other, _) => return Err(err("kind", format!("{other:?} is not a kind this control plane reads"))),
    };
    let mut object = object;
    validate(&mut object)?;
    Ok(Some(object))
}

fn typed<T: serde::de::DeserializeOwned>(doc: serde_yaml::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(doc).map_err(|e| err(e.path().to_string(), e.into_inner().to_string()))
}

/// Kubernetes names: RFC 1123 (DNS labels and subdomains).
fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok { Ok(()) } else { Err(err(field, format!("{name:?} is not a valid Kubernetes name"))) }
}

fn check_ip(field: &str, ip: &str) -> Result<IpAddr, FieldError> {
    ip.parse().map_err(|_| err(field, format!("{ip:?} is not an IP address")))
}

/// Fills defaults (namespace "default") and checks what the control plane relies on.
fn validate(object: &mut Object) -> Result<(), FieldError> {
    let namespaced = !matches!(object, Object::Namespace(_));
    let meta = object.meta_mut();
    check_name("metadata.name", &meta.name)?;
    if namespaced {
        let ns = meta.namespace.get_or_insert_with(|| "default".into());
        check_name("metadata.namespace", ns)?;
    }
    match object {
        Object::Namespace(_) => Ok(()),
        Object::Pod(pod) => validate_pod(pod),
        Object::Service(svc) => validate_service(svc),
        Object::AuthorizationPolicy(policy) => validate_policy(policy),
    }
}

fn validate_pod(pod: &Pod) -> Result<(), FieldError> {
    let uid = pod
        .metadata
        .uid
        .as_deref()
        .ok_or_else(|| err("metadata.uid", "required (the agent finds the pod's cgroup by it)"))?;
    if uid.is_empty() || uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(err("metadata.uid", format!("{uid:?} is not a pod UID (hex digits and dashes)")));
    }
    if let Some(node) = &pod.spec.node_name {
        check_name("spec.nodeName", node)?;
    }
    if let Some(ip) = &pod.status.pod_ip {
        check_ip("status.podIP", ip)?;
    }
    for (i, ip) in pod.status.pod_ips.iter().enumerate() {
        check_ip(&format!("status.podIPs[{i}].ip"), &ip.ip)?;
    }
    for (c, container) in pod.spec.containers.iter().enumerate() {
        for (p, port) in container.ports.iter().enumerate() {
            if port.container_port == 0 {
                return Err(err(format!("spec.containers[{c}].ports[{p}].containerPort"), "must be 1-65535"));
            }
        }
    }
    Ok(())
}

fn validate_service(svc: &Service) -> Result<(), FieldError> {
    if let Some(ip) = svc.spec.cluster_ip.as_deref().filter(|ip| *ip != "None") {
        check_ip("spec.clusterIP", ip)?;
    }
    for (i, ip) in svc.spec.cluster_ips.iter().enumerate() {
        if ip != "None" {
            check_ip(&format!("spec.clusterIPs[{i}]"), ip)?;
        }
    }
    for (i, port) in svc.spec.ports.iter().enumerate() {
        if port.port == 0 {
            return Err(err(format!("spec.ports[{i}].port"), "must be 1-65535"));
        }
        if let Some(p) = &port.protocol
            && p != "TCP"
        {
            return Err(err(
                format!("spec.ports[{i}].protocol"),
                format!("{p} is not served: the mesh carries TCP"),
            ));
        }
        if let Some(TargetPort::Number(0)) = port.target_port {
            return Err(err(format!("spec.ports[{i}].targetPort"), "must be 1-65535"));
        }
    }
    Ok(())
}

fn validate_policy(policy: &AuthorizationPolicy) -> Result<(), FieldError> {
    if let Some(action) = &policy.spec.action
        && action != "ALLOW"
        && action != "DENY"
    {
        return Err(err("spec.action", format!("{action:?}: a node proxy enforces ALLOW and DENY")));
    }
    for (r, rule) in policy.spec.rules.iter().enumerate() {
        if !rule.when.is_empty() {
            return Err(err(format!("spec.rules[{r}].when"), "conditions need a waypoint; not supported"));
        }
        for (f, from) in rule.from.iter().enumerate() {
            for (b, block) in from.source.ip_blocks.iter().chain(&from.source.not_ip_blocks).enumerate() {
                parse_cidr(block)
                    .map_err(|m| err(format!("spec.rules[{r}].from[{f}].source.ipBlocks[{b}]"), m))?;
            }
        }
        for (t, to) in rule.to.iter().enumerate() {
            let op = &to.operation;
            for (name, list) in [("hosts", &op.hosts), ("methods", &op.methods), ("paths", &op.paths)] {
                if !list.is_empty() {
                    return Err(err(
                        format!("spec.rules[{r}].to[{t}].operation.{name}"),
                        "an L7 field needs a waypoint; a node proxy enforces L4 only",
                    ));
                }
            }
            for (p, port) in op.ports.iter().chain(&op.not_ports).enumerate() {
                port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    err(
                        format!("spec.rules[{r}].to[{t}].operation.ports[{p}]"),
                        format!("{port:?} is not a port"),
                    )
                })?;
            }
        }
    }
    Ok(())
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Object>, FieldError> {
        parse_document(serde_yaml::from_str(text).expect("yaml"))
    }

    #[test]
    fn reads_a_pod() {
        let pod = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: cart-0, namespace: shop, uid: 6b1f-0d2e, labels: {app: cart},\n\
             ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: cart, controller: true}]}\n\
             spec: {nodeName: node1, serviceAccountName: cart}\nstatus: {podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}]}\n",
        )
        .expect("valid")
        .expect("object");
        let Object::Pod(pod) = pod else { panic!("not a pod") };
        assert_eq!(pod.spec.node_name.as_deref(), Some("node1"));
        assert_eq!(pod.metadata.owner_references[0].kind, "StatefulSet");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p, uid: a1}\nstatus: {podIP: 10.0.0.x}\n")
            .expect_err("ip");
        assert_eq!(e.field, "status.podIP");
        let e = parse("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 99999}]}\n")
            .expect_err("port");
        assert_eq!(e.field, "spec.ports[0].port");
        let e = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").expect_err("uid");
        assert_eq!(e.field, "metadata.uid");
        let e = parse(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n\
             spec: {rules: [{to: [{operation: {paths: [/admin]}}]}]}\n",
        )
        .expect_err("l7");
        assert_eq!(e.field, "spec.rules[0].to[0].operation.paths");
        let e = parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n").expect_err("kind");
        assert_eq!(e.field, "kind");
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok(("10.0.0.0".parse().expect("ip"), 8)));
        assert_eq!(parse_cidr("fd00::1"), Ok(("fd00::1".parse().expect("ip"), 128)));
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }
}
