//! Who is at an address: the workloads and services the node knows, for naming both ends of
//! a flow (namespace, pod, workload, SPIFFE identity, service) in flows and metrics, and the
//! authorization policies that say who may reach them.
//!
//! Built whole by the spec's source (all addresses from the control plane; the node's own
//! pods from the enrollment file) and swapped in as one `Arc`, so a lookup on the connection
//! path is one hash probe with no lock held across it.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::authz::{Authorization, Policies};
use crate::services::{Here, ServiceInfo};
pub use crate::workload::{Names, PortPairs, WorkloadRef};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Directory {
    workloads: HashMap<IpAddr, Arc<WorkloadRef>>,
    /// Service VIP → the service, its endpoints and how to balance over them.
    services: HashMap<IpAddr, Arc<ServiceInfo>>,
    /// `namespace/hostname` → the service (a fallback is named, not addressed).
    services_by_name: HashMap<Arc<str>, Arc<ServiceInfo>>,
    /// What each workload admits: published with the names it refers to, in one swap.
    pub policies: Policies,
    /// This node and its locality, which routing preferences compare endpoints against.
    pub here: Here,
}

impl Directory {
    pub fn workload(&self, ip: &IpAddr) -> Option<Arc<WorkloadRef>> {
        self.workloads.get(ip).cloned()
    }

    /// The service a connection to `dst` is for: a VIP's service, or the service the
    /// destination workload backs on that port.
    pub fn service(&self, dst: &SocketAddr, workload: Option<&WorkloadRef>) -> Option<String> {
        if let Some(service) = self.services.get(&dst.ip()) {
            return Some(service.name.to_string());
        }
        workload.and_then(|w| w.service_on(dst.port())).map(str::to_owned)
    }

    /// The service whose address `ip` is.
    pub fn service_at(&self, ip: &IpAddr) -> Option<&Arc<ServiceInfo>> {
        self.services.get(ip)
    }

    /// A service by `namespace/hostname`.
    pub fn service_named(&self, name: &str) -> Option<&Arc<ServiceInfo>> {
        self.services_by_name.get(name)
    }

    /// Every service, for status.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceInfo>> {
        self.services_by_name.values()
    }
}

/// Fills a [`Directory`], handing out one allocation per distinct name; the interning table
/// goes away with the builder.
#[derive(Debug, Default)]
pub struct DirectoryBuilder {
    directory: Directory,
    interned: HashSet<Arc<str>>,
}

impl DirectoryBuilder {
    /// Adds a workload at `ips`, backing `services` (`namespace/hostname`, port pairs).
    pub fn workload<'s>(
        &mut self,
        ips: &[IpAddr],
        names: Names<'_>,
        services: impl IntoIterator<Item = (&'s str, PortPairs)>,
    ) -> Arc<WorkloadRef> {
        let mut intern = |name: &str| intern(&mut self.interned, name);
        let mut workload = WorkloadRef::build(names, &mut intern);
        workload.services = services.into_iter().map(|(name, ports)| (intern(name), ports)).collect();
        let workload = Arc::new(workload);
        for ip in ips {
            self.directory.workloads.insert(*ip, Arc::clone(&workload));
        }
        workload
    }

    /// Names shared with the workloads' (one allocation per distinct name).
    pub fn intern(&mut self, name: &str) -> Arc<str> {
        intern(&mut self.interned, name)
    }

    pub fn policy(&mut self, policy: Authorization) {
        self.directory.policies.insert(policy);
    }

    pub fn service(&mut self, service: ServiceInfo) {
        let service = Arc::new(service);
        for vip in &service.vips {
            self.directory.services.insert(*vip, Arc::clone(&service));
        }
        self.directory.services_by_name.insert(Arc::clone(&service.name), service);
    }

    pub fn here(&mut self, here: Here) {
        self.directory.here = here;
    }

    pub fn build(self) -> Directory {
        self.directory
    }
}

fn intern(interned: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(known) = interned.get(name) {
        return Arc::clone(known);
    }
    let name: Arc<str> = name.into();
    interned.insert(Arc::clone(&name));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_both_ends_and_the_service() {
        let mut d = DirectoryBuilder::default();
        let names = Names { namespace: "shop", pod: "cart-1", service_account: "cart", ..Default::default() };
        let backs = [("shop/cart.shop.svc.cluster.local", vec![(80, 8080)])];
        d.workload(&["10.0.0.5".parse().expect("ip")], names, backs);
        d.service(crate::services::tests::named("shop/cart.shop.svc.cluster.local", "10.96.0.9"));
        let d = d.build();
        let found = d.workload(&"10.0.0.5".parse().expect("ip")).expect("workload");
        assert_eq!(&*found.identity, "spiffe://cluster.local/ns/shop/sa/cart");
        // Unnamed, the pod is its own workload and canonical service, at revision `latest`.
        assert_eq!(
            (&*found.workload, &*found.canonical_service, &*found.canonical_revision),
            ("cart-1", "cart-1", "latest")
        );
        let to_pod: SocketAddr = "10.0.0.5:8080".parse().expect("addr");
        assert_eq!(d.service(&to_pod, Some(&found)).as_deref(), Some("shop/cart.shop.svc.cluster.local"));
        let to_vip: SocketAddr = "10.96.0.9:80".parse().expect("addr");
        assert_eq!(d.service(&to_vip, None).as_deref(), Some("shop/cart.shop.svc.cluster.local"));
        assert_eq!(d.service(&"10.0.0.5:9".parse().expect("addr"), Some(&found)), None);
    }
}

#[cfg(test)]
mod interning {
    use super::*;

    #[test]
    fn replicas_share_their_names() {
        let mut d = DirectoryBuilder::default();
        for (i, pod) in ["cart-7d9f8c6b5-a", "cart-7d9f8c6b5-b"].into_iter().enumerate() {
            let names = Names {
                namespace: "shop",
                pod,
                workload: "cart",
                canonical_service: "cart",
                canonical_revision: "v2",
                ..Default::default()
            };
            d.workload(&[IpAddr::from([10, 0, 0, 10 + i as u8])], names, []);
        }
        let d = d.build();
        let a = d.workload(&IpAddr::from([10, 0, 0, 10])).expect("a");
        let b = d.workload(&IpAddr::from([10, 0, 0, 11])).expect("b");
        assert_ne!(a.pod, b.pod);
        assert!(Arc::ptr_eq(&a.workload, &b.workload) && Arc::ptr_eq(&a.identity, &b.identity));
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace) && Arc::ptr_eq(&a.canonical_service, &a.workload));
        assert_eq!(&*a.identity, "spiffe://cluster.local/ns/shop/sa/default");
    }
}
