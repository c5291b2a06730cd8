//! The state accepted from the control plane: resources by type and name, as they arrived
//! (for persistence and for telling a reconnected server what the agent holds) and
//! translated (for use). A response is checked whole before any of it is applied: one bad
//! resource rejects the response and leaves the state as it was.

use std::{collections::BTreeMap, sync::Arc};

use nodemesh_conventions::FieldError;
use nodemesh_proto::{
    envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource},
    nodemesh::v1::{Snapshot, snapshot::TypeState},
    prost_types::Any,
    type_urls,
};

mod directory;

pub use crate::report::status::Counts;

use super::translate::{self, Address, Invalid};
use crate::authz::Authorization;
use crate::services::{ServicePolicy, http::HttpRoutes};
use crate::{
    claims::{Claim, Claims, Clash},
    spec::{NodeSpec, PodSpec},
};

/// One resource as it arrived (version and encoded body, for the snapshot and for telling a
/// new stream what is held) and as translated. The name is the map's key.
#[derive(Clone, Debug)]
struct Held<T> {
    version: Box<str>,
    body: Box<[u8]>,
    value: T,
    /// When the name first arrived (a counter): who keeps a claim when two clash.
    arrival: u64,
}

impl<T> Held<T> {
    fn new(resource: &Resource, value: T) -> (String, Self) {
        let body = resource.resource.as_ref().map(|any| any.value.as_slice()).unwrap_or_default();
        let held = Held { version: resource.version.as_str().into(), body: body.into(), value, arrival: 0 };
        (resource.name.clone(), held)
    }

    fn to_resource(&self, name: &str, type_url: &str) -> Resource {
        Resource {
            name: name.to_owned(),
            version: self.version.to_string(),
            resource: Some(Any { type_url: type_url.to_owned(), value: self.body.to_vec() }),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct State {
    addresses: BTreeMap<String, Held<Address>>,
    authorizations: BTreeMap<String, Held<Authorization>>,
    /// By the service's `namespace/hostname`.
    service_policies: BTreeMap<String, Held<ServicePolicy>>,
    http_routes: BTreeMap<String, Held<Arc<HttpRoutes>>>,
    system_versions: BTreeMap<String, String>,
    /// The next arrival number.
    arrivals: u64,
}

/// A response that passed every check, ready to apply.
pub struct Checked {
    type_url: String,
    system_version: String,
    addresses: Vec<(String, Held<Address>)>,
    authorizations: Vec<(String, Held<Authorization>)>,
    service_policies: Vec<(String, Held<ServicePolicy>)>,
    http_routes: Vec<(String, Held<Arc<HttpRoutes>>)>,
    removed: Vec<String>,
}

/// How many refused resources status lists.
pub const MAX_REFUSED_SHOWN: usize = 32;

impl State {
    pub fn check(response: &DeltaDiscoveryResponse) -> Result<Checked, Invalid> {
        let mut checked = Checked {
            type_url: response.type_url.clone(),
            system_version: response.system_version_info.clone(),
            addresses: Vec::new(),
            authorizations: Vec::new(),
            service_policies: Vec::new(),
            http_routes: Vec::new(),
            removed: response.removed_resources.clone(),
        };
        for resource in &response.resources {
            match response.type_url.as_str() {
                type_urls::ADDRESS => {
                    checked.addresses.push(Held::new(resource, translate::address(resource)?))
                }
                type_urls::AUTHORIZATION => {
                    checked.authorizations.push(Held::new(resource, translate::authorization(resource)?))
                }
                type_urls::SERVICE_POLICY => {
                    let (_, policy) = translate::service_policy(resource)?;
                    checked.service_policies.push(Held::new(resource, policy));
                }
                type_urls::HTTP_ROUTES => {
                    let (_, routes) = translate::http_routes(resource)?;
                    checked.http_routes.push(Held::new(resource, Arc::new(routes)));
                }
                other => {
                    return Err(Invalid {
                        resource: resource.name.clone(),
                        error: FieldError::new("type_url", format!("{other:?} was not asked for")),
                    });
                }
            }
        }
        Ok(checked)
    }

    pub fn apply(&mut self, checked: Checked) {
        let Checked {
            type_url,
            system_version,
            addresses,
            authorizations,
            service_policies,
            http_routes,
            removed,
        } = checked;
        for name in &removed {
            match type_url.as_str() {
                type_urls::ADDRESS => {
                    self.addresses.remove(name);
                }
                type_urls::AUTHORIZATION => {
                    self.authorizations.remove(name);
                }
                type_urls::SERVICE_POLICY => {
                    self.service_policies.remove(name);
                }
                _ => {
                    self.http_routes.remove(name);
                }
            }
        }
        for (name, mut held) in addresses {
            // An update keeps its place: a claim is the name's, not the version's.
            held.arrival = match self.addresses.get(&name) {
                Some(old) => old.arrival,
                None => {
                    self.arrivals += 1;
                    self.arrivals
                }
            };
            self.addresses.insert(name, held);
        }
        self.authorizations.extend(authorizations);
        self.service_policies.extend(service_policies);
        self.http_routes.extend(http_routes);
        self.system_versions.insert(type_url, system_version);
    }

    /// name → version of what the agent holds, for a new stream's initial_resource_versions.
    pub fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        match type_url {
            type_urls::ADDRESS => {
                self.addresses.iter().map(|(n, h)| (n.clone(), h.version.to_string())).collect()
            }
            type_urls::AUTHORIZATION => {
                self.authorizations.iter().map(|(n, h)| (n.clone(), h.version.to_string())).collect()
            }
            type_urls::SERVICE_POLICY => {
                self.service_policies.iter().map(|(n, h)| (n.clone(), h.version.to_string())).collect()
            }
            type_urls::HTTP_ROUTES => {
                self.http_routes.iter().map(|(n, h)| (n.clone(), h.version.to_string())).collect()
            }
            _ => BTreeMap::new(),
        }
    }

    pub fn system_version(&self, type_url: &str) -> Option<&str> {
        self.system_versions.get(type_url).map(String::as_str)
    }

    /// The addresses that hold their claims, in arrival order, and the ones refused: a
    /// workload or service whose address (or a workload whose pod UID or name) another one
    /// claimed first takes no effect until that one is gone (see `claims`).
    fn admitted(&self) -> (Vec<(&String, &Held<Address>)>, Vec<Clash>) {
        let mut by_arrival: Vec<(&String, &Held<Address>)> = self.addresses.iter().collect();
        by_arrival.sort_by_key(|(_, h)| h.arrival);
        let mut claims = Claims::default();
        let (mut admitted, mut refused) = (Vec::with_capacity(by_arrival.len()), Vec::new());
        for (name, held) in by_arrival {
            let wanted: Vec<Claim> = match &held.value {
                Address::Workload(w) => w
                    .ips
                    .iter()
                    .map(|ip| Claim::Address(*ip))
                    .chain(w.pod_uid.iter().map(|uid| Claim::PodUid(uid.clone())))
                    .chain([Claim::PodName(format!("{}/{}", w.namespace, w.name))])
                    .collect(),
                Address::Service(s) => s.vips.iter().map(|ip| Claim::Address(*ip)).collect(),
            };
            match claims.claim_all(name, wanted) {
                Ok(()) => admitted.push((name, held)),
                Err(clash) => refused.push(clash),
            }
        }
        (admitted, refused)
    }

    /// The node's pods: every workload on `node`, intercepted when it is in the mesh.
    pub fn node_spec(&self, node: &str) -> NodeSpec {
        let (admitted, _) = self.admitted();
        let pods = admitted
            .iter()
            .filter_map(|(_, h)| match &h.value {
                Address::Workload(w) if w.node == node => Some(w),
                _ => None,
            })
            .filter_map(|w| {
                Some(PodSpec {
                    uid: w.pod_uid.clone()?,
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                    ips: w.ips.clone(),
                    labels: w.labels.clone(),
                    intercept: w.captured,
                })
            })
            .collect();
        NodeSpec { authoritative: true, pods, directory: Arc::new(self.directory(node)) }
    }

    pub fn counts(&self, node: &str) -> Counts {
        let refused = self.admitted().1;
        if let Some(first) = refused.first() {
            tracing::warn!(refused = refused.len(), %first,
                "address resources clash with ones that arrived first; they take no effect");
        }
        Counts {
            refused: refused.into_iter().take(MAX_REFUSED_SHOWN).collect(),
            addresses: self.addresses.len(),
            authorizations: self.authorizations.len(),
            local_workloads: self.local_workloads(node).count(),
            pending_without_pod_uid: self
                .local_workloads(node)
                .filter(|w| w.captured && w.pod_uid.is_none())
                .map(|w| w.uid.clone())
                .collect(),
        }
    }

    fn local_workloads<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a translate::Workload> + 'a {
        self.addresses.values().filter_map(move |h| match &h.value {
            Address::Workload(w) if w.node == node => Some(w),
            _ => None,
        })
    }

    /// Everything held, for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let addresses: BTreeMap<&String, &Address> =
            self.addresses.iter().map(|(n, h)| (n, &h.value)).collect();
        let authorizations: BTreeMap<&String, &Authorization> =
            self.authorizations.iter().map(|(n, h)| (n, &h.value)).collect();
        let service_policies: BTreeMap<&String, &ServicePolicy> =
            self.service_policies.iter().map(|(n, h)| (n, &h.value)).collect();
        serde_json::json!({
            "system_versions": self.system_versions,
            "addresses": addresses,
            "authorizations": authorizations,
            "service_policies": service_policies,
            // Each service's route entries in the order they are matched, by route, rule and
            // match (the resource itself is in the snapshot).
            "http_routes": self.http_routes.iter().map(|(n, h)| {
                let entries: Vec<String> =
                    h.value.entries.iter().map(|e| format!("{} rule {} match {}", e.route, e.rule, e.index)).collect();
                (n.clone(), entries)
            }).collect::<BTreeMap<_, _>>(),
        })
    }

    pub fn to_snapshot(&self, control_plane: &str, accepted_unix_seconds: i64) -> Snapshot {
        let types = [
            (
                type_urls::ADDRESS,
                self.addresses.iter().map(|(n, h)| h.to_resource(n, type_urls::ADDRESS)).collect::<Vec<_>>(),
            ),
            (
                type_urls::AUTHORIZATION,
                self.authorizations.iter().map(|(n, h)| h.to_resource(n, type_urls::AUTHORIZATION)).collect(),
            ),
            (
                type_urls::SERVICE_POLICY,
                self.service_policies
                    .iter()
                    .map(|(n, h)| h.to_resource(n, type_urls::SERVICE_POLICY))
                    .collect(),
            ),
            (
                type_urls::HTTP_ROUTES,
                self.http_routes.iter().map(|(n, h)| h.to_resource(n, type_urls::HTTP_ROUTES)).collect(),
            ),
        ]
        .into_iter()
        .map(|(type_url, resources)| TypeState {
            type_url: type_url.into(),
            system_version_info: self.system_version(type_url).unwrap_or_default().into(),
            resources,
        })
        .collect();
        Snapshot { types, accepted_unix_seconds, control_plane: control_plane.into() }
    }

    /// Rebuilds the state from a snapshot, checking every resource again (a file from an
    /// older or newer agent must not be trusted blindly).
    pub fn from_snapshot(snapshot: &Snapshot) -> Result<Self, Invalid> {
        let mut state = State::default();
        for t in &snapshot.types {
            let response = DeltaDiscoveryResponse {
                system_version_info: t.system_version_info.clone(),
                type_url: t.type_url.clone(),
                resources: t.resources.clone(),
                ..Default::default()
            };
            state.apply(State::check(&response)?);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use nodemesh_proto::{istio::workload as wl, prost::Message as _};

    use super::*;

    fn workload(name: &str, ip: [u8; 4], pod_uid: &str) -> Resource {
        labelled(name, ip, pod_uid, &[])
    }

    /// A workload whose pod has these `nodemesh.io/` labels.
    fn labelled(name: &str, ip: [u8; 4], pod_uid: &str, labels: &[(&str, &str)]) -> Resource {
        let mut w = wl::Workload {
            uid: format!("Kubernetes//Pod/shop/{name}"),
            name: name.into(),
            namespace: "shop".into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            node: "n1".into(),
            extensions: vec![wl::Extension {
                name: nodemesh_conventions::POD_UID_EXTENSION.into(),
                config: Some(Any {
                    type_url: type_urls::STRING_VALUE.into(),
                    value: pod_uid.to_owned().encode_to_vec(),
                }),
            }],
            ..Default::default()
        };
        if !labels.is_empty() {
            w.extensions.push(translate::labels_extension(labels));
        }
        let value = wl::Address { r#type: Some(wl::address::Type::Workload(w)) }.encode_to_vec();
        Resource {
            name: name.into(),
            version: "1".into(),
            resource: Some(Any { type_url: type_urls::ADDRESS.into(), value }),
            ..Default::default()
        }
    }

    fn apply(state: &mut State, resources: Vec<Resource>, removed: &[&str]) {
        let response = DeltaDiscoveryResponse {
            type_url: type_urls::ADDRESS.into(),
            resources,
            removed_resources: removed.iter().map(|r| (*r).to_owned()).collect(),
            ..Default::default()
        };
        state.apply(State::check(&response).expect("valid"));
    }

    fn pods(state: &State) -> Vec<String> {
        state.node_spec("n1").pods.into_iter().map(|p| p.name).collect()
    }

    #[test]
    fn the_first_to_claim_an_address_keeps_it() {
        let mut state = State::default();
        apply(&mut state, vec![workload("zeta", [10, 0, 0, 5], "aa")], &[]);
        // A newcomer with the same address (sorting before it by name): refused.
        apply(&mut state, vec![workload("alpha", [10, 0, 0, 5], "bb")], &[]);
        assert_eq!(pods(&state), ["zeta"]);
        let refused = state.counts("n1").refused;
        assert_eq!((refused[0].newcomer.as_str(), refused[0].holder.as_str()), ("alpha", "zeta"));
        // An update of the holder keeps its claim.
        apply(&mut state, vec![workload("zeta", [10, 0, 0, 5], "aa")], &[]);
        assert_eq!(pods(&state), ["zeta"]);
        // Removing the newcomer leaves the holder as it was.
        apply(&mut state, vec![], &["alpha"]);
        assert_eq!(pods(&state), ["zeta"]);
        assert!(state.counts("n1").refused.is_empty());
        // A pod UID or a name are claims too; and once the holder goes, the claim is free.
        apply(&mut state, vec![workload("beta", [10, 0, 0, 6], "aa")], &[]);
        assert_eq!(pods(&state), ["zeta"]);
        apply(&mut state, vec![], &["zeta"]);
        assert_eq!(pods(&state), ["beta"]);
    }

    #[test]
    fn a_pods_labels_reach_its_spec() {
        let mut state = State::default();
        let splice_off = [("nodemesh.io/splice", "disabled")];
        apply(
            &mut state,
            vec![labelled("a", [10, 0, 0, 5], "aa", &splice_off), workload("b", [10, 0, 0, 6], "bb")],
            &[],
        );
        let spec = state.node_spec("n1");
        let splice: Vec<(&str, bool)> = spec.pods.iter().map(|p| (p.name.as_str(), p.splice(true))).collect();
        assert_eq!(splice, [("a", false), ("b", true)], "the label overrides the node's default");
        // And from a snapshot, as after a restart without the control plane.
        let restored = State::from_snapshot(&state.to_snapshot("cp", 0)).expect("valid");
        assert!(!restored.node_spec("n1").pods[0].splice(true));
    }
}
