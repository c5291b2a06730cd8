//! What the mesh calls a workload: its names and identity, shared by the directory that
//! holds them, the policies that match on them and the flows that report them. A leaf: it
//! imports nothing of the agent's.

use std::sync::Arc;

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
    /// In the mesh: its node proxy takes HBONE for it on port 15008 (the workload API's
    /// `tunnel_protocol: HBONE`).
    pub captured: bool,
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
    /// Its node proxy takes HBONE for it.
    pub captured: bool,
}

impl WorkloadRef {
    /// A workload outside any directory (nothing shared).
    pub fn new(names: Names<'_>) -> Self {
        Self::build(names, &mut |name| name.into())
    }

    pub(crate) fn build(names: Names<'_>, intern: &mut impl FnMut(&str) -> Arc<str>) -> Self {
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
            captured: names.captured,
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

/// `given`, or `default` when it is empty.
fn or<'s>(default: &'s str, given: &'s str) -> &'s str {
    if given.is_empty() { default } else { given }
}
