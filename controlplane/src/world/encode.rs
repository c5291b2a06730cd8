//! The encoding of the inputs into the resources agents are sent: each pod a Workload, each
//! Service a Service, each AuthorizationPolicy an Authorization, in Istio's workload API and
//! named as istiod names them (ServicePolicies are [`super::service_policy`]'s). The mirror
//! of the agent's `xds/translate.rs`, which decodes them; which agent gets what is the
//! world's business ([`super`]).

use std::{collections::BTreeSet, net::IpAddr};

use nodemesh_conventions::{LABELS_EXTENSION, Labels, POD_UID_EXTENSION, mesh_labels, naming};
use nodemesh_proto::{
    istio::{security as sec, workload as wl},
    nodemesh::v1 as nm,
    prost::Message as _,
    prost_types::Any,
    type_urls,
};

use super::{MeshSettings, topology};
use crate::model::{AuthorizationPolicy, Pod, Service, TargetPort, parse_cidr};

/// An Address resource's body.
fn address_any(t: wl::address::Type) -> Any {
    Any { type_url: type_urls::ADDRESS.into(), value: wl::Address { r#type: Some(t) }.encode_to_vec() }
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

/// A Service's Address resource body.
pub fn service(svc: &Service, mesh: &MeshSettings) -> Any {
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
        load_balancing: topology::load_balancing(svc),
        ..Default::default()
    };
    address_any(wl::address::Type::Service(service))
}

/// A service's resource name: "namespace/hostname", as istiod names them.
pub fn service_name(svc: &Service, mesh: &MeshSettings) -> String {
    format!("{}/{}", svc.metadata.namespace.as_deref().unwrap_or_default(), hostname(svc, mesh))
}

/// A workload's uid and resource name: "cluster//Pod/namespace/name", as istiod names them.
pub fn workload_uid(pod: &Pod, mesh: &MeshSettings) -> String {
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

/// A pod's Address resource body: `captured` says whether it is in the mesh, `backing` the
/// services selecting it, `policies` the selector policies that apply to it, `locality`
/// where it runs ([`topology::locality`]).
pub fn workload(
    pod: &Pod,
    captured: bool,
    backing: &[&Service],
    policies: Vec<String>,
    locality: Option<wl::Locality>,
    mesh: &MeshSettings,
) -> Any {
    let mut workload = workload_proto(pod, captured, backing, policies, mesh);
    workload.locality = locality;
    address_any(wl::address::Type::Workload(workload))
}

fn workload_proto(
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
    let mut extensions = vec![wl::Extension {
        name: POD_UID_EXTENSION.into(),
        config: Some(Any {
            type_url: type_urls::STRING_VALUE.into(),
            value: pod.metadata.uid.clone().unwrap_or_default().encode_to_vec(),
        }),
    }];
    let carried: Labels = mesh_labels(labels).map(|(k, v)| (k.clone(), v.clone())).collect();
    if !carried.is_empty() {
        extensions.push(wl::Extension {
            name: LABELS_EXTENSION.into(),
            config: Some(Any {
                type_url: type_urls::LABELS.into(),
                value: nm::Labels { labels: carried }.encode_to_vec(),
            }),
        });
    }
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
        // Only a ready pod is a healthy endpoint; a pending one (no address yet), one not
        // Ready, a terminating or a finished one is published, but unhealthy.
        status: if pod.ready() { wl::WorkloadStatus::Healthy } else { wl::WorkloadStatus::Unhealthy } as i32,
        cluster_id: mesh.cluster_id.clone(),
        network_mode: if pod.spec.host_network {
            wl::NetworkMode::HostNetwork
        } else {
            wl::NetworkMode::Standard
        } as i32,
        extensions,
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

/// A policy's Authorization resource body, and its scope: selector-scoped, mesh-wide (the
/// root namespace, no selector) or namespace-wide.
pub fn authorization(policy: &AuthorizationPolicy, mesh: &MeshSettings) -> (Any, sec::Scope) {
    let ns = policy.metadata.namespace.clone().unwrap_or_default();
    let scope = match (&policy.spec.selector, ns == mesh.root_namespace) {
        (Some(_), _) => sec::Scope::WorkloadSelector,
        (None, true) => sec::Scope::Global,
        (None, false) => sec::Scope::Namespace,
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
    (Any { type_url: type_urls::AUTHORIZATION.into(), value: auth.encode_to_vec() }, scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{OwnerReference, PodIp},
        world::tests::pod,
    };

    fn encoded(pod: &Pod) -> wl::Workload {
        workload_proto(pod, false, &[], Vec::new(), &MeshSettings::default())
    }

    #[test]
    fn workloads_carry_their_deployment_and_canonical_names() {
        let mut replica =
            (*pod("cart-7d9f8c6b5-x2x4z", "shop", "n1", &[("app", "cart"), ("version", "v2")])).clone();
        replica.metadata.labels.insert("pod-template-hash".into(), "7d9f8c6b5".into());
        replica.metadata.owner_references = vec![OwnerReference {
            kind: "ReplicaSet".into(),
            name: "cart-7d9f8c6b5".into(),
            controller: Some(true),
        }];
        let w = encoded(&replica);
        assert_eq!((w.name.as_str(), w.workload_name.as_str()), ("cart-7d9f8c6b5-x2x4z", "cart"));
        assert_eq!((w.canonical_name.as_str(), w.canonical_revision.as_str()), ("cart", "v2"));
        let w = encoded(&pod("debug", "shop", "n1", &[]));
        assert_eq!((w.workload_name.as_str(), w.canonical_name.as_str()), ("debug", "debug"));
        assert_eq!(w.canonical_revision, "latest");
    }

    #[test]
    fn only_a_ready_pod_is_a_healthy_endpoint() {
        use crate::model::PodCondition;
        let healthy = |p: &Pod| encoded(p).status == wl::WorkloadStatus::Healthy as i32;
        let running = (*pod("a", "x", "n1", &[])).clone();
        assert!(healthy(&running), "a running pod with an address and no conditions");
        let mut pending = running.clone();
        pending.status.phase = Some("Pending".into());
        pending.status.pod_ip = None;
        pending.status.pod_ips.clear();
        assert!(!healthy(&pending), "pending, no address");
        let mut no_ip = running.clone();
        no_ip.status.pod_ip = None;
        no_ip.status.pod_ips.clear();
        assert!(!healthy(&no_ip), "no address");
        let condition = |status: &str| PodCondition { kind: "Ready".into(), status: status.into() };
        let mut not_ready = running.clone();
        not_ready.status.conditions = vec![condition("False")];
        assert!(!healthy(&not_ready), "not Ready");
        let mut ready = running.clone();
        ready.status.conditions = vec![condition("True")];
        assert!(healthy(&ready));
        let mut terminating = ready.clone();
        terminating.metadata.deletion_timestamp = Some("2026-12-01T22:00:00Z".into());
        assert!(!healthy(&terminating), "terminating");
        let mut done = running;
        done.status.phase = Some("Succeeded".into());
        assert!(!healthy(&done), "finished");
    }

    #[test]
    fn ipv4_mapped_addresses_are_served_as_ipv4() {
        let mut mapped = (*pod("a", "x", "n1", &[])).clone();
        mapped.status.pod_ip = Some("::ffff:10.0.0.7".into());
        mapped.status.pod_ips = vec![PodIp { ip: "10.0.0.7".into() }];
        assert_eq!(encoded(&mapped).addresses, [vec![10, 0, 0, 7]]);
    }

    #[test]
    fn the_nodemesh_labels_ride_in_an_extension() {
        let labelled = pod(
            "a",
            "x",
            "n1",
            &[("app", "a"), ("nodemesh.io/splice", "disabled"), ("nodemesh.io/intercept", "disabled")],
        );
        let w = encoded(&labelled);
        let names: Vec<&str> = w.extensions.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, [POD_UID_EXTENSION, LABELS_EXTENSION]);
        let config = w.extensions[1].config.as_ref().expect("config");
        assert_eq!(config.type_url, type_urls::LABELS);
        let carried = nm::Labels::decode(config.value.as_slice()).expect("decode").labels;
        let expected: Labels = [("nodemesh.io/intercept", "disabled"), ("nodemesh.io/splice", "disabled")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        assert_eq!(carried, expected, "only the nodemesh.io/ labels");

        // Without such labels, no extension: most pods carry nothing more.
        let w = encoded(&pod("b", "x", "n1", &[("app", "b")]));
        assert_eq!(w.extensions.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), [POD_UID_EXTENSION]);
    }
}
