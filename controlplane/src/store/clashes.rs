//! Who holds what, since when: every object's identities (its key; a pod's UID and addresses;
//! a service's cluster IPs; the service a DestinationRule or TrafficPolicy is for), each dated
//! by the scan that first read the object holding it, and clashes resolved in favour of
//! whoever arrived first, whatever the files are called.
//!
//! A newcomer never takes anything from an incumbent: a second definition of an object, a
//! second pod with an address or UID already held, a service VIP that is a pod's address (in
//! either order), or a second DestinationRule (or TrafficPolicy) for one service is refused
//! whole (no workload, no service, no policy), reported with both objects, and the incumbent
//! serves on unchanged. When the incumbent goes, the newcomer is served. (Of two rules for a
//! service Istio keeps the oldest; arrival is the nearest the files have to creation times.)

use std::{collections::HashMap, net::IpAddr, path::Path};

use super::{InputError, Inputs};
use crate::model::{FieldError, Object, ObjectKey};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    Key(ObjectKey),
    PodUid(String),
    /// Canonical: IPv4-mapped IPv6 addresses as IPv4.
    Address(IpAddr),
    /// The service (hostname) a policy of this kind is for.
    PolicyTarget {
        kind: &'static str,
        service: String,
    },
}

/// An identity an object holds, the field that gives it, and since which scan.
#[derive(Clone, Debug)]
pub struct Claim {
    pub identity: Identity,
    pub field: String,
    pub since: u64,
}

/// One accepted object of a file.
#[derive(Clone, Debug)]
pub struct Held {
    pub object: Object,
    /// 1-based, in its file.
    pub document: usize,
    pub claims: Vec<Claim>,
}

impl Held {
    /// `object`, read in scan `generation`. Its claims date from `earlier` (the same object
    /// as held before this scan, in this file or in one it left) where it made them already,
    /// so editing an object, or moving it to another file, keeps its place.
    pub fn new(
        object: Object,
        document: usize,
        earlier: Option<&Held>,
        domain_suffix: &str,
        generation: u64,
    ) -> Self {
        let claims = identities(&object, domain_suffix)
            .into_iter()
            .map(|(identity, field)| {
                let since = earlier
                    .and_then(|e| e.claims.iter().find(|c| c.identity == identity))
                    .map_or(generation, |c| c.since);
                Claim { identity, field, since }
            })
            .collect();
        Self { object, document, claims }
    }
}

impl Held {
    /// Since when its key has been held.
    pub fn key_since(&self) -> u64 {
        self.claims.iter().find(|c| matches!(c.identity, Identity::Key(_))).map_or(u64::MAX, |c| c.since)
    }
}

fn identities(object: &Object, domain_suffix: &str) -> Vec<(Identity, String)> {
    let mut out = vec![(Identity::Key(object.key()), "metadata.name".to_owned())];
    let mut address = |ip: &str, field: String| {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            let identity = Identity::Address(ip.to_canonical());
            if !out.iter().any(|(i, _)| *i == identity) {
                out.push((identity, field));
            }
        }
    };
    match object {
        Object::Pod(pod) => {
            if let Some(ip) = &pod.status.pod_ip {
                address(ip, "status.podIP".into());
            }
            for (i, ip) in pod.status.pod_ips.iter().enumerate() {
                address(&ip.ip, format!("status.podIPs[{i}].ip"));
            }
            if let Some(uid) = &pod.metadata.uid {
                out.push((Identity::PodUid(uid.to_ascii_lowercase()), "metadata.uid".into()));
            }
        }
        Object::Service(svc) => {
            if let Some(ip) = &svc.spec.cluster_ip {
                address(ip, "spec.clusterIP".into());
            }
            for (i, ip) in svc.spec.cluster_ips.iter().enumerate() {
                address(ip, format!("spec.clusterIPs[{i}]"));
            }
        }
        Object::DestinationRule(rule) => {
            let service = rule.service_hostname(domain_suffix);
            out.push((Identity::PolicyTarget { kind: "DestinationRule", service }, "spec.host".into()));
        }
        Object::TrafficPolicy(policy) => {
            let service = policy.service_hostname(domain_suffix);
            out.push((Identity::PolicyTarget { kind: "TrafficPolicy", service }, "spec.targetRef".into()));
        }
        Object::Namespace(_)
        | Object::Node(_)
        | Object::AuthorizationPolicy(_)
        | Object::PeerAuthentication(_)
        | Object::HttpRoute(_) => {}
    }
    out
}

/// Host-network pods on one node all have the node's address: that is sharing, not a clash.
fn shares_address(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Pod(a), Object::Pod(b)) => {
            a.spec.host_network
                && b.spec.host_network
                && a.spec.node_name.is_some()
                && a.spec.node_name == b.spec.node_name
        }
        _ => false,
    }
}

struct Candidate<'a> {
    file: &'a Path,
    held: &'a Held,
}

impl Candidate<'_> {
    /// Who came first: the older claim, then (read in the same scan) file and document order.
    fn arrival(&self, claim: &Claim) -> (u64, &Path, usize) {
        (claim.since, self.file, self.held.document)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layer {
    Key,
    Uid,
    Address,
    PolicyTarget,
}

fn layer(identity: &Identity) -> Layer {
    match identity {
        Identity::Key(_) => Layer::Key,
        Identity::PodUid(_) => Layer::Uid,
        Identity::Address(_) => Layer::Address,
        Identity::PolicyTarget { .. } => Layer::PolicyTarget,
    }
}

/// The objects of every file (in file, then document order), clashes refused.
pub fn resolve<'a>(files: impl Iterator<Item = (&'a Path, &'a [Held])>) -> (Inputs, Vec<InputError>) {
    let all: Vec<Candidate> =
        files.flat_map(|(file, held)| held.iter().map(move |held| Candidate { file, held })).collect();
    let mut refused: Vec<Option<InputError>> = vec![None; all.len()];
    // Layer by layer: a second definition never competes for addresses, and a pod refused
    // for its UID does not hold its addresses against others.
    for current in [Layer::Key, Layer::Uid, Layer::Address, Layer::PolicyTarget] {
        let mut first: HashMap<&Identity, (usize, &Claim)> = HashMap::new();
        for (i, c) in all.iter().enumerate().filter(|(i, _)| refused[*i].is_none()) {
            for claim in c.held.claims.iter().filter(|cl| layer(&cl.identity) == current) {
                let earlier =
                    first.get(&claim.identity).is_some_and(|(w, wc)| all[*w].arrival(wc) <= c.arrival(claim));
                if !earlier {
                    first.insert(&claim.identity, (i, claim));
                }
            }
        }
        for (i, c) in all.iter().enumerate() {
            if refused[i].is_some() {
                continue;
            }
            let lost = c.held.claims.iter().filter(|cl| layer(&cl.identity) == current).find_map(|claim| {
                let (w, _) = *first.get(&claim.identity)?;
                (w != i && !shares_address(&all[w].held.object, &c.held.object)).then_some((claim, w))
            });
            if let Some((claim, w)) = lost {
                refused[i] = Some(refusal(c, claim, &all[w]));
            }
        }
    }
    let mut inputs = Inputs::default();
    let mut errors = Vec::new();
    for (c, refusal) in all.iter().zip(refused) {
        if let Some(error) = refusal {
            errors.push(error);
            continue;
        }
        match c.held.object.clone() {
            Object::Namespace(ns) => {
                inputs.namespaces.insert(ns.metadata.name.clone(), ns);
            }
            Object::Node(node) => {
                inputs.nodes.insert(node.metadata.name.clone(), node);
            }
            Object::Pod(pod) => inputs.pods.push(pod),
            Object::Service(svc) => inputs.services.push(svc),
            Object::AuthorizationPolicy(p) => inputs.policies.push(p),
            Object::PeerAuthentication(p) => inputs.peer_authentications.push(p),
            Object::DestinationRule(r) => inputs.destination_rules.push(r),
            Object::TrafficPolicy(p) => inputs.traffic_policies.push(p),
            Object::HttpRoute(r) => inputs.http_routes.push(r),
        }
    }
    (inputs, errors)
}

fn refusal(newcomer: &Candidate, claim: &Claim, incumbent: &Candidate) -> InputError {
    let key = newcomer.held.object.key();
    let holder = format!(
        "{} ({}, document {})",
        incumbent.held.object.key(),
        incumbent.file.display(),
        incumbent.held.document
    );
    let message = match &claim.identity {
        Identity::Key(_) => format!("{key} is already defined by {holder}, which came first"),
        Identity::PodUid(uid) => format!("UID {uid} is already {holder}'s, which came first"),
        Identity::Address(ip) => format!("{ip} is already the address of {holder}, which came first"),
        Identity::PolicyTarget { service, .. } => format!("{service} already has {holder}, which came first"),
    };
    InputError {
        file: newcomer.file.display().to_string(),
        document: newcomer.held.document,
        object: Some(key.to_string()),
        error: FieldError::new(
            claim.field.clone(),
            format!("{message}; this {} is refused (it serves nothing) until one of them changes", key.kind),
        ),
    }
}
