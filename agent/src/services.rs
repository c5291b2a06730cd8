//! The mesh's services as the proxy routes to them: addresses, ports, the endpoints behind
//! them with where they run, and how to balance over them (the workload API's
//! `LoadBalancing`, and Nodemesh's `ServicePolicy` for what that cannot carry). Built whole
//! with the directory from the control plane's state; a leaf beside `workload`: it imports
//! nothing of the agent's but the workload's names.

pub mod http;
pub mod policy;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

pub use policy::{Algorithm, OutlierDetection, RateLimit, ScaleFromZero, ServicePolicy};

use crate::workload::WorkloadRef;

/// Where a workload runs, as topology labels name it (an empty part is unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

/// A locality scope of a routing preference, as the workload API lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Region,
    Zone,
    Subzone,
    Node,
    /// One cluster and one network are all there is here: always the same.
    Cluster,
    Network,
}

/// What to do when no endpoint matches the whole routing preference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalityMode {
    /// Prefer the endpoints that match the most scopes, in order; fall back to the next
    /// tier when a tier has no healthy endpoint.
    #[default]
    Failover,
    /// Only endpoints that match every scope; none healthy means no endpoint.
    Strict,
    /// No balancing: the connection goes to the address the app dialled (a service whose
    /// address is a load balancer of its own).
    Passthrough,
}

/// The workload API's `LoadBalancing` of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancing {
    /// Scopes in order of importance; empty: no locality preference.
    pub routing_preference: Vec<Scope>,
    pub mode: LocalityMode,
    /// Endpoints that are not healthy count too (`publishNotReadyAddresses`).
    pub allow_unhealthy: bool,
}

/// One workload behind a service. Ten thousand of them cost little: the names, ports and
/// locality are the directory's shared ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Its names, and the (service port, target port) pairs of each service it backs.
    pub workload: Arc<WorkloadRef>,
    pub node: Arc<str>,
    pub locality: Arc<Locality>,
    pub healthy: bool,
}

/// What an endpoint's balancing state is kept under, across directory updates: its pod's
/// namespace and name (unique, and already held by its names).
pub type EndpointKey = (Arc<str>, Arc<str>);

impl Endpoint {
    pub fn key(&self) -> EndpointKey {
        (Arc::clone(&self.workload.namespace), Arc::clone(&self.workload.pod))
    }

    /// Whether `key` is this endpoint's.
    pub fn is(&self, key: &EndpointKey) -> bool {
        key.0 == self.workload.namespace && key.1 == self.workload.pod
    }

    /// The workload's port for `service`'s `service_port` (`declared` is the service's own
    /// target port, 0 when it is named), when it serves it.
    pub fn target_port(&self, service: &str, service_port: u16, declared: u16) -> Option<u16> {
        let ports = self.workload.services.iter().find(|(name, _)| &**name == service).map(|(_, p)| p);
        match ports.and_then(|p| p.iter().find(|(sp, _)| *sp == service_port)) {
            // A named target port this workload does not have.
            Some((_, 0)) => None,
            Some((_, target)) => Some(*target),
            // Listed without this port (an older control plane): the service's own target.
            None => (declared != 0).then_some(declared),
        }
    }

    /// The address of the family `v4` asks for, when the workload has one.
    pub fn ip(&self, v4: bool) -> Option<IpAddr> {
        if v4 { self.ipv4.map(IpAddr::V4) } else { self.ipv6.map(IpAddr::V6) }
    }
}

/// A service, its endpoints and how to balance over them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `namespace/hostname`.
    pub name: Arc<str>,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub load_balancing: LoadBalancing,
    pub policy: Arc<ServicePolicy>,
    pub endpoints: Vec<Endpoint>,
    /// Its HTTPRoutes, for its HTTP ports; none: every request goes to the service itself.
    pub http_routes: Option<Arc<http::HttpRoutes>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    /// 0: named, resolved per endpoint.
    pub target: u16,
    pub protocol: http::AppProtocol,
}

impl ServiceInfo {
    /// The service's port `service_port`, when it has it.
    pub fn port(&self, service_port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == service_port)
    }
}

/// Where this node is: what the routing preference compares endpoints against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Here {
    pub node: Arc<str>,
    pub locality: Locality,
}

impl Here {
    /// How many of `preference`'s scopes, in order, `endpoint` shares with this node: the
    /// endpoint's tier (ztunnel's rank).
    pub fn rank(&self, preference: &[Scope], endpoint: &Endpoint) -> usize {
        preference
            .iter()
            .take_while(|scope| match scope {
                Scope::Region => self.locality.region == endpoint.locality.region,
                Scope::Zone => self.locality.zone == endpoint.locality.zone,
                Scope::Subzone => self.locality.subzone == endpoint.locality.subzone,
                Scope::Node => self.node == endpoint.node,
                Scope::Cluster | Scope::Network => true,
            })
            .count()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::workload::Names;

    /// A service with one port (80 → 8080) and no endpoints.
    pub(crate) fn named(name: &str, vip: &str) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            vips: vec![vip.parse().expect("ip")],
            ports: vec![ServicePort { port: 80, target: 8080, protocol: http::AppProtocol::Tcp }],
            load_balancing: LoadBalancing::default(),
            policy: Arc::default(),
            endpoints: Vec::new(),
            http_routes: None,
        }
    }

    fn endpoint(node: &str, zone: &str) -> Endpoint {
        let mut workload = WorkloadRef::new(Names { namespace: "shop", pod: "p", ..Default::default() });
        workload.services = vec![("shop/cart".into(), vec![(80, 8080), (81, 0)])];
        Endpoint {
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ipv6: None,
            workload: Arc::new(workload),
            node: node.into(),
            locality: Arc::new(Locality { region: "r".into(), zone: zone.into(), subzone: String::new() }),
            healthy: true,
        }
    }

    #[test]
    fn rank_counts_the_scopes_shared_in_order() {
        let here = Here {
            node: "n1".into(),
            locality: Locality { region: "r".into(), zone: "a".into(), subzone: String::new() },
        };
        let close = [Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone, Scope::Node];
        assert_eq!(here.rank(&close, &endpoint("n1", "a")), 5);
        assert_eq!(here.rank(&close, &endpoint("n2", "a")), 4);
        assert_eq!(here.rank(&close, &endpoint("n3", "b")), 2);
        // The order matters: a node match does not count past a zone mismatch.
        assert_eq!(here.rank(&[Scope::Zone, Scope::Node], &endpoint("n1", "b")), 0);
    }

    #[test]
    fn target_ports_resolve_per_endpoint() {
        let e = endpoint("n1", "a");
        assert_eq!(e.target_port("shop/cart", 80, 8080), Some(8080));
        // A named target port this workload does not have.
        assert_eq!(e.target_port("shop/cart", 81, 0), None);
        assert_eq!(e.target_port("shop/cart", 82, 9000), Some(9000));
        assert_eq!(e.target_port("shop/cart", 82, 0), None);
        // Another service's ports are not this one's.
        assert_eq!(e.target_port("shop/other", 80, 0), None);
        assert_eq!((e.ip(true), e.ip(false)), (Some(IpAddr::from([10, 0, 0, 1])), None));
    }
}
