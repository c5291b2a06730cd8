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

use crate::{authz::Policies, xds::translate::Authorization};

/// The trust domain assumed for pods from the enrollment file.
pub use nodemesh_conventions::DEFAULT_TRUST_DOMAIN;

/// One end of a flow, as the mesh names it. Names shared by many workloads (namespace,
/// workload, identity, canonical names) are one allocation per directory, not one per pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRef {
    pub namespace: Arc<str>,
    /// The pod (the workload API's `name`).
    pub pod: Arc<str>,
    /// What the pod is an instance of (its Deployment, StatefulSet, ...; the workload API's
    /// `workload_name`), which Istio's metrics report as `*_workload`.
    pub workload: Arc<str>,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub identity: Arc<str>,
    pub canonical_service: Arc<str>,
    pub canonical_revision: Arc<str>,
    /// Services it backs.
    pub services: Vec<(Arc<str>, PortPairs)>,
    /// The selector policies (`namespace/name`) that select it.
    pub policies: Vec<Arc<str>>,
}

/// A service's (service port, target port) pairs, behind its `namespace/hostname`.
pub type PortPairs = Vec<(u16, u16)>;

/// A workload's names as its source gives them; empty fields take the defaults Istio uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct Names<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    /// Empty: the pod is its own workload.
    pub workload: &'a str,
    pub trust_domain: &'a str,
    pub service_account: &'a str,
    /// Empty: the workload name.
    pub canonical_service: &'a str,
    /// Empty: `latest`.
    pub canonical_revision: &'a str,
    /// Selector policies that select it (`namespace/name`).
    pub policies: &'a [String],
}

impl WorkloadRef {
    /// A workload outside any directory (nothing shared).
    pub fn new(names: Names<'_>) -> Self {
        Self::build(names, &mut |name| name.into())
    }

    fn build(names: Names<'_>, intern: &mut impl FnMut(&str) -> Arc<str>) -> Self {
        let workload = or(names.pod, names.workload);
        let identity = format!(
            "spiffe://{}/ns/{}/sa/{}",
            or(DEFAULT_TRUST_DOMAIN, names.trust_domain),
            names.namespace,
            or("default", names.service_account)
        );
        // Pod names are unique: not worth a table entry. An unowned pod is its own workload,
        // one allocation for both.
        let pod: Arc<str> = names.pod.into();
        Self {
            namespace: intern(names.namespace),
            workload: if workload == names.pod { Arc::clone(&pod) } else { intern(workload) },
            pod,
            identity: intern(&identity),
            canonical_service: intern(or(workload, names.canonical_service)),
            canonical_revision: intern(or("latest", names.canonical_revision)),
            services: Vec::new(),
            policies: names.policies.iter().map(|p| intern(p)).collect(),
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
            .map(|(name, _)| &**name)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Directory {
    workloads: HashMap<IpAddr, Arc<WorkloadRef>>,
    /// Service VIP → `namespace/hostname`.
    services: HashMap<IpAddr, Arc<str>>,
    /// What each workload admits: published with the names it refers to, in one swap.
    pub policies: Policies,
}

impl Directory {
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
    ) {
        let mut intern = |name: &str| intern(&mut self.interned, name);
        let mut workload = WorkloadRef::build(names, &mut intern);
        workload.services = services.into_iter().map(|(name, ports)| (intern(name), ports)).collect();
        let workload = Arc::new(workload);
        for ip in ips {
            self.directory.workloads.insert(*ip, Arc::clone(&workload));
        }
    }

    pub fn policy(&mut self, policy: Authorization) {
        self.directory.policies.insert(policy);
    }

    pub fn service(&mut self, vips: &[IpAddr], name: &str) {
        let name = intern(&mut self.interned, name);
        for vip in vips {
            self.directory.services.insert(*vip, Arc::clone(&name));
        }
    }

    pub fn build(self) -> Directory {
        self.directory
    }
}

/// `given`, or `default` when it is empty.
fn or<'s>(default: &'s str, given: &'s str) -> &'s str {
    if given.is_empty() { default } else { given }
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
        d.service(&["10.96.0.9".parse().expect("ip")], "shop/cart.shop.svc.cluster.local");
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
