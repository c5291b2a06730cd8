//! Who is at an address: the workloads and services the node knows, for naming both ends of
//! a flow (namespace/name, SPIFFE identity, service) in flows and metrics.
//!
//! Built whole by the spec's source (all addresses from the control plane; the node's own
//! pods from the enrollment file) and swapped in as one `Arc`, so a lookup on the connection
//! path is one hash probe with no lock held across it.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::Serialize;

/// The trust domain assumed for pods from the enrollment file.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// One end of a flow, as the mesh names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadRef {
    pub namespace: String,
    pub name: String,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub identity: String,
    /// Services it backs: (`namespace/hostname`, [(service port, target port)]).
    #[serde(skip)]
    pub services: Vec<(String, Vec<(u16, u16)>)>,
}

impl WorkloadRef {
    pub fn new(namespace: &str, name: &str, trust_domain: &str, service_account: &str) -> Self {
        let sa = if service_account.is_empty() { "default" } else { service_account };
        let td = if trust_domain.is_empty() { DEFAULT_TRUST_DOMAIN } else { trust_domain };
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: format!("spiffe://{td}/ns/{namespace}/sa/{sa}"),
            services: Vec::new(),
        }
    }

    /// The service this workload serves on `port` (its target port), if any.
    pub fn service_on(&self, port: u16) -> Option<&str> {
        self.services
            .iter()
            .find(|(_, ports)| {
                ports
                    .iter()
                    .any(|&(service_port, target)| target == port || (target == 0 && service_port == port))
            })
            .map(|(name, _)| name.as_str())
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Directory {
    workloads: HashMap<IpAddr, Arc<WorkloadRef>>,
    /// Service VIP → `namespace/hostname`.
    services: HashMap<IpAddr, Arc<str>>,
}

impl Directory {
    pub fn insert_workload(&mut self, ips: &[IpAddr], workload: WorkloadRef) {
        let workload = Arc::new(workload);
        for ip in ips {
            self.workloads.insert(*ip, Arc::clone(&workload));
        }
    }

    pub fn insert_service(&mut self, vips: &[IpAddr], name: &str) {
        let name: Arc<str> = name.into();
        for vip in vips {
            self.services.insert(*vip, Arc::clone(&name));
        }
    }

    pub fn workload(&self, ip: &IpAddr) -> Option<Arc<WorkloadRef>> {
        self.workloads.get(ip).cloned()
    }

    /// The service a connection to `dst` is for: a VIP's service, or the service the
    /// destination workload backs on that port.
    pub fn service(&self, dst: &SocketAddr, workload: Option<&WorkloadRef>) -> Option<String> {
        if let Some(name) = self.services.get(&dst.ip()) {
            return Some(name.to_string());
        }
        workload.and_then(|w| w.service_on(dst.port())).map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_both_ends_and_the_service() {
        let mut d = Directory::default();
        let mut w = WorkloadRef::new("shop", "cart-1", "", "cart");
        w.services.push(("shop/cart.shop.svc.cluster.local".into(), vec![(80, 8080)]));
        d.insert_workload(&["10.0.0.5".parse().expect("ip")], w);
        d.insert_service(&["10.96.0.9".parse().expect("ip")], "shop/cart.shop.svc.cluster.local");
        let found = d.workload(&"10.0.0.5".parse().expect("ip")).expect("workload");
        assert_eq!(found.identity, "spiffe://cluster.local/ns/shop/sa/cart");
        let to_pod: SocketAddr = "10.0.0.5:8080".parse().expect("addr");
        assert_eq!(d.service(&to_pod, Some(&found)).as_deref(), Some("shop/cart.shop.svc.cluster.local"));
        let to_vip: SocketAddr = "10.96.0.9:80".parse().expect("addr");
        assert_eq!(d.service(&to_vip, None).as_deref(), Some("shop/cart.shop.svc.cluster.local"));
        assert_eq!(d.service(&"10.0.0.5:9".parse().expect("addr"), Some(&found)), None);
    }
}
