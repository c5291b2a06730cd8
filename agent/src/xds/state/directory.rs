//! The node's directory from the held state: every workload and service that holds its
//! claims, each service with its endpoints, policy and routes, and where this node is.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use super::{Address, State, translate};
use crate::{
    directory::{Directory, DirectoryBuilder, Names},
    services::{Endpoint, Here, Locality, ServiceInfo, ServicePort},
};

impl State {
    /// Every workload and service held (that holds its claims), by address, with each
    /// service's endpoints and settings, and the policies that guard them.
    pub(super) fn directory(&self, node: &str) -> Directory {
        let mut directory = DirectoryBuilder::default();
        let admitted = self.admitted().0;
        let mut endpoints: HashMap<&str, Vec<Endpoint>> = HashMap::new();
        let mut here = Here { node: directory.intern(node), locality: Locality::default() };
        // A handful of localities among thousands of workloads: one allocation each.
        let mut localities: HashMap<&Locality, Arc<Locality>> = HashMap::new();
        let nowhere = Arc::new(Locality::default());
        for (_, held) in &admitted {
            let Address::Workload(w) = &held.value else { continue };
            let names = Names {
                namespace: &w.namespace,
                pod: &w.name,
                workload: &w.workload_name,
                trust_domain: &w.trust_domain,
                service_account: &w.service_account,
                canonical_service: &w.canonical_name,
                canonical_revision: &w.canonical_revision,
                policies: &w.authorization_policies,
                captured: w.captured,
            };
            let ports = |list: &[translate::PortMap]| -> Vec<(u16, u16)> {
                list.iter().map(|p| (p.service_port, p.target_port)).collect()
            };
            let services = w.services.iter().map(|(name, list)| (name.as_str(), ports(list)));
            let workload = directory.workload(&w.ips, names, services);
            if let (true, true, Some(locality)) = (w.node == node, here.locality.is_empty(), &w.locality) {
                here.locality = Locality::clone(locality);
            }
            if w.services.is_empty() {
                continue;
            }
            let locality = match &w.locality {
                Some(l) => Arc::clone(localities.entry(l).or_insert_with(|| Arc::new(Locality::clone(l)))),
                None => Arc::clone(&nowhere),
            };
            let endpoint = Endpoint {
                ipv4: w.ips.iter().find_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                }),
                ipv6: w.ips.iter().find_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                }),
                workload,
                node: directory.intern(&w.node),
                locality,
                healthy: w.healthy,
            };
            for (name, _) in &w.services {
                endpoints.entry(name.as_str()).or_default().push(endpoint.clone());
            }
        }
        for (_, held) in &admitted {
            let Address::Service(s) = &held.value else { continue };
            let name = format!("{}/{}", s.namespace, s.hostname);
            let policy =
                self.service_policies.get(&name).map(|h| Arc::new(h.value.clone())).unwrap_or_default();
            let interned = directory.intern(&name);
            directory.service(ServiceInfo {
                endpoints: endpoints.remove(name.as_str()).unwrap_or_default(),
                name: interned,
                vips: s.vips.clone(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        port: p.service_port,
                        target: p.target_port,
                        protocol: p.protocol,
                    })
                    .collect(),
                http_routes: self.http_routes.get(&name).map(|h| Arc::clone(&h.value)),
                load_balancing: s.load_balancing.clone(),
                policy,
            });
        }
        directory.here(here);
        for held in self.authorizations.values() {
            directory.policy(held.value.clone());
        }
        directory.build()
    }
}
