//! What the control plane checks before it serves an object: Kubernetes' own rules for names,
//! labels and addresses, and what the translation relies on. Every error names the field at
//! fault, each list by its own name (`notPorts[0]`, never `ports[2]`).

use std::net::IpAddr;

use nodemesh_conventions::{MAX_MESH_LABELS, MESH_LABEL_PREFIX};

use super::{
    AuthorizationPolicy, FieldError, Labels, MutualTls, Object, ObjectMeta, PeerAuthentication, Pod, Service,
    TargetPort, destination_rule, err, http_route, parse_cidr, rules, traffic_policy,
};

/// A principal is `<trust domain>/ns/<namespace>/sa/<service account>`: at most
/// 253 + 4 + 63 + 4 + 253 = 577 bytes, a little more with `spiffe://` or a wildcard. Anything
/// longer is not a principal, and would only make every Authorization resource heavier.
pub(super) const MAX_PRINCIPAL: usize = 640;
/// A namespace name (an RFC 1123 label, at most 63) and a wildcard.
const MAX_NAMESPACE_MATCH: usize = 64;
/// Kubernetes caps an object's annotations, keys and values together, at 256 KiB.
const MAX_ANNOTATIONS: usize = 256 << 10;
const PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];

/// The string maps (labels, annotations, selectors), in the document as parsed: a value that
/// is not a string (`app: 1`, `on: true`, `x: null`, a map) is refused as the API server
/// refuses it. Checked before typing, because serde would only say "metadata.labels.?" for a
/// key that is not a string.
pub fn string_maps(doc: &serde_yaml::Value, kind: &str) -> Result<(), FieldError> {
    let mut maps = vec![
        (&["metadata", "labels"][..], "metadata.labels"),
        (&["metadata", "annotations"], "metadata.annotations"),
    ];
    match kind {
        "Service" => maps.push((&["spec", "selector"], "spec.selector")),
        "AuthorizationPolicy" | "PeerAuthentication" => {
            maps.push((&["spec", "selector", "matchLabels"], "spec.selector.matchLabels"))
        }
        _ => {}
    }
    for (path, field) in maps {
        let Some(serde_yaml::Value::Mapping(map)) = path.iter().try_fold(doc, |v, k| v.get(k)) else {
            continue;
        };
        for (key, value) in map {
            let Some(key) = key.as_str() else {
                return Err(err(field, format!("the key {} is not a string; quote it", yaml(key))));
            };
            if !value.is_string() {
                let hint = match value {
                    serde_yaml::Value::Null => "; write \"\" for an empty value".to_owned(),
                    serde_yaml::Value::Bool(_) | serde_yaml::Value::Number(_) => {
                        format!("; quote it: \"{}\"", yaml(value))
                    }
                    _ => String::new(),
                };
                return Err(err(
                    format!("{field}.{key}"),
                    format!("must be a string, as Kubernetes types it, not {}{hint}", yaml(value)),
                ));
            }
        }
    }
    Ok(())
}

/// A value as YAML, short, for a message.
fn yaml(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::Mapping(_) => "a map".into(),
        serde_yaml::Value::Sequence(_) => "a list".into(),
        serde_yaml::Value::Tagged(_) => "a tagged value".into(),
        _ => {
            let text = serde_yaml::to_string(value).unwrap_or_default();
            let text = text.trim_end();
            if text.len() > 40 { "a long value".into() } else { text.to_owned() }
        }
    }
}

fn check(field: impl Into<String>, result: Result<(), String>) -> Result<(), FieldError> {
    result.map_err(|m| err(field, m))
}

/// Fills defaults (namespace "default") and checks what the control plane relies on.
pub fn validate(object: &mut Object) -> Result<(), FieldError> {
    let name_rule = match object {
        Object::Namespace(_) => rules::dns_label,
        Object::Service(_) => rules::dns1035_label,
        Object::Node(_)
        | Object::Pod(_)
        | Object::AuthorizationPolicy(_)
        | Object::PeerAuthentication(_)
        | Object::DestinationRule(_)
        | Object::TrafficPolicy(_)
        | Object::HttpRoute(_) => rules::dns_subdomain,
    };
    let namespaced = object.namespaced();
    let meta = object.meta_mut();
    check("metadata.name", name_rule(&meta.name))?;
    if namespaced {
        let ns = meta.namespace.get_or_insert_with(|| "default".into());
        check("metadata.namespace", rules::dns_label(ns))?;
    }
    validate_meta(meta)?;
    match object {
        Object::Namespace(_) | Object::Node(_) => Ok(()),
        Object::Pod(pod) => validate_pod(pod),
        Object::Service(svc) => validate_service(svc),
        Object::AuthorizationPolicy(policy) => validate_policy(policy),
        Object::PeerAuthentication(pa) => validate_peer_authentication(pa),
        Object::DestinationRule(rule) => destination_rule::validate(rule),
        Object::TrafficPolicy(policy) => traffic_policy::validate(policy),
        Object::HttpRoute(route) => http_route::validate(route),
    }
}

/// Modes Istio defines; ports as Istio checks them (numbers, only with a selector).
fn validate_peer_authentication(pa: &PeerAuthentication) -> Result<(), FieldError> {
    let mode = |field: String, m: &MutualTls| match m.mode.as_deref() {
        None | Some("UNSET" | "DISABLE" | "PERMISSIVE" | "STRICT") => Ok(()),
        Some(other) => Err(err(field, format!("{other:?} is not one of UNSET, DISABLE, PERMISSIVE, STRICT"))),
    };
    if let Some(m) = &pa.spec.mtls {
        mode("spec.mtls.mode".into(), m)?;
    }
    if let Some(selector) = &pa.spec.selector {
        labels("spec.selector.matchLabels", &selector.match_labels)?;
    }
    if !pa.spec.port_level_mtls.is_empty() && pa.spec.selector.is_none() {
        return Err(err(
            "spec.portLevelMtls",
            "needs spec.selector (Istio applies port-level modes only to selected workloads)",
        ));
    }
    for (port, m) in &pa.spec.port_level_mtls {
        let field = format!("spec.portLevelMtls.{port}");
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(err(field, format!("{port:?} is not a port number (1-65535)")));
        }
        mode(format!("{field}.mode"), m)?;
    }
    Ok(())
}

fn validate_meta(meta: &ObjectMeta) -> Result<(), FieldError> {
    labels("metadata.labels", &meta.labels)?;
    let mut size = 0;
    for (key, value) in &meta.annotations {
        check("metadata.annotations", rules::qualified_name(key))?;
        size += key.len() + value.len();
    }
    if size > MAX_ANNOTATIONS {
        return Err(err(
            "metadata.annotations",
            format!("{size} bytes; Kubernetes allows {MAX_ANNOTATIONS}"),
        ));
    }
    for (i, owner) in meta.owner_references.iter().enumerate() {
        let kind_ok = (1..=63).contains(&owner.kind.len())
            && owner.kind.starts_with(|c: char| c.is_ascii_alphabetic())
            && owner.kind.bytes().all(|b| b.is_ascii_alphanumeric());
        if !kind_ok {
            return Err(err(
                format!("metadata.ownerReferences[{i}].kind"),
                format!("{:?} is not a kind", owner.kind),
            ));
        }
        check(format!("metadata.ownerReferences[{i}].name"), rules::dns_subdomain(&owner.name))?;
    }
    Ok(())
}

/// Label keys and values (also selectors, whose values are label values).
fn labels(field: &str, labels: &Labels) -> Result<(), FieldError> {
    for (key, value) in labels {
        check(field, rules::qualified_name(key))?;
        check(format!("{field}.{key}"), rules::label_value(value))?;
    }
    Ok(())
}

fn address(field: String, ip: &str) -> Result<(), FieldError> {
    let parsed: IpAddr =
        ip.parse().map_err(|_| err(field.clone(), format!("{ip:?} is not an IP address")))?;
    rules::unicast(parsed).map(|_| ()).map_err(|m| err(field, m))
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
    // They reach the agent (the `nodemesh.io/labels` extension), which holds no more.
    let mesh_labels = nodemesh_conventions::mesh_labels(&pod.metadata.labels).count();
    if mesh_labels > MAX_MESH_LABELS {
        return Err(err(
            "metadata.labels",
            format!("{mesh_labels} labels under {MESH_LABEL_PREFIX}; at most {MAX_MESH_LABELS}"),
        ));
    }
    if let Some(node) = &pod.spec.node_name {
        check("spec.nodeName", rules::dns_subdomain(node))?;
    }
    // It becomes the pod's identity (spiffe://<td>/ns/<ns>/sa/<account>): a '/' in it
    // would let a pod claim another's.
    if let Some(account) = &pod.spec.service_account_name {
        check("spec.serviceAccountName", rules::dns_subdomain(account))?;
    }
    if let Some(ip) = &pod.status.pod_ip {
        address("status.podIP".into(), ip)?;
    }
    for (i, ip) in pod.status.pod_ips.iter().enumerate() {
        address(format!("status.podIPs[{i}].ip"), &ip.ip)?;
    }
    if let Some(phase) = &pod.status.phase
        && !PHASES.contains(&phase.as_str())
    {
        return Err(err("status.phase", format!("{phase:?} is not a pod phase ({})", PHASES.join(", "))));
    }
    for (c, container) in pod.spec.containers.iter().enumerate() {
        check(format!("spec.containers[{c}].name"), rules::dns_label(&container.name))?;
        for (p, port) in container.ports.iter().enumerate() {
            let at = format!("spec.containers[{c}].ports[{p}]");
            if port.container_port == 0 {
                return Err(err(format!("{at}.containerPort"), "must be 1-65535"));
            }
            if let Some(name) = &port.name {
                check(format!("{at}.name"), rules::iana_svc_name(name))?;
            }
        }
    }
    Ok(())
}

fn validate_service(svc: &Service) -> Result<(), FieldError> {
    if let Some(ip) = svc.spec.cluster_ip.as_deref().filter(|ip| *ip != "None") {
        address("spec.clusterIP".into(), ip)?;
    }
    for (i, ip) in svc.spec.cluster_ips.iter().enumerate() {
        if ip != "None" {
            address(format!("spec.clusterIPs[{i}]"), ip)?;
        }
    }
    if let Some(selector) = &svc.spec.selector {
        labels("spec.selector", selector)?;
    }
    if let Some(policy) = &svc.spec.internal_traffic_policy
        && policy != "Cluster"
        && policy != "Local"
    {
        return Err(err("spec.internalTrafficPolicy", format!("{policy:?} is not one of Cluster, Local")));
    }
    for (i, port) in svc.spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if port.port == 0 {
            return Err(err(format!("{at}.port"), "must be 1-65535"));
        }
        if let Some(name) = &port.name {
            check(format!("{at}.name"), rules::dns_label(name))?;
        }
        if let Some(p) = &port.protocol
            && p != "TCP"
        {
            return Err(err(format!("{at}.protocol"), format!("{p} is not served: the mesh carries TCP")));
        }
        match &port.target_port {
            Some(TargetPort::Number(0)) => return Err(err(format!("{at}.targetPort"), "must be 1-65535")),
            Some(TargetPort::Name(name)) => check(format!("{at}.targetPort"), rules::iana_svc_name(name))?,
            _ => {}
        }
        if let Some(app) = &port.app_protocol {
            check(format!("{at}.appProtocol"), rules::qualified_name(app))?;
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
    if let Some(selector) = &policy.spec.selector {
        labels("spec.selector.matchLabels", &selector.match_labels)?;
    }
    for (r, rule) in policy.spec.rules.iter().enumerate() {
        if !rule.when.is_empty() {
            return Err(err(format!("spec.rules[{r}].when"), "conditions need a waypoint; not supported"));
        }
        for (f, from) in rule.from.iter().enumerate() {
            let at = format!("spec.rules[{r}].from[{f}].source");
            let s = &from.source;
            let mut empty = true;
            for (name, list) in [("principals", &s.principals), ("notPrincipals", &s.not_principals)] {
                empty &= list.is_empty();
                strings(&format!("{at}.{name}"), list, MAX_PRINCIPAL)?;
            }
            for (name, list) in [("namespaces", &s.namespaces), ("notNamespaces", &s.not_namespaces)] {
                empty &= list.is_empty();
                strings(&format!("{at}.{name}"), list, MAX_NAMESPACE_MATCH)?;
            }
            for (name, list) in [("ipBlocks", &s.ip_blocks), ("notIpBlocks", &s.not_ip_blocks)] {
                empty &= list.is_empty();
                for (b, block) in list.iter().enumerate() {
                    parse_cidr(block).map_err(|m| err(format!("{at}.{name}[{b}]"), m))?;
                }
            }
            if empty {
                return Err(err(at, "empty: it would match every caller; Istio refuses it too"));
            }
        }
        for (t, to) in rule.to.iter().enumerate() {
            let at = format!("spec.rules[{r}].to[{t}].operation");
            let op = &to.operation;
            for (name, list) in [("hosts", &op.hosts), ("methods", &op.methods), ("paths", &op.paths)] {
                if !list.is_empty() {
                    return Err(err(
                        format!("{at}.{name}"),
                        "an L7 field needs a waypoint; a node proxy enforces L4 only",
                    ));
                }
            }
            for (name, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for (p, port) in list.iter().enumerate() {
                    port.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| err(format!("{at}.{name}[{p}]"), format!("{port:?} is not a port")))?;
                }
            }
            if op.ports.is_empty() && op.not_ports.is_empty() {
                return Err(err(at, "empty: it would match every port; Istio refuses it too"));
            }
        }
    }
    Ok(())
}

/// Principal and namespace matches: non-empty, bounded, printable, and `*` only as a whole
/// match, a prefix or a suffix (Istio's syntax; `a*b` would silently match nothing).
pub(super) fn strings(field: &str, list: &[String], max: usize) -> Result<(), FieldError> {
    for (i, s) in list.iter().enumerate() {
        let at = || format!("{field}[{i}]");
        if s.is_empty() {
            return Err(err(at(), "empty; Istio refuses empty values"));
        }
        if s.len() > max {
            return Err(err(at(), format!("{} bytes; at most {max}", s.len())));
        }
        if !rules::printable(s) {
            return Err(err(at(), format!("{s:?} holds spaces or control characters")));
        }
        let inner = s.strip_prefix('*').or_else(|| s.strip_suffix('*')).unwrap_or(s);
        if inner.contains('*') {
            return Err(err(at(), format!("{s:?}: '*' may only be the whole value, its start or its end")));
        }
    }
    Ok(())
}
