//! What the node should do, whatever the source (the local enrollment file, or the control
//! plane): its pods, and which of them are intercepted. Each source decides interception its
//! own way (labels in the file; the workload's HBONE tunnel protocol from the control plane),
//! so the reconciler does not care where a spec came from.

use std::{net::IpAddr, sync::Arc};

pub use nodemesh_conventions::Labels;
use nodemesh_conventions::{DISABLED, ENABLED};
use serde::{Deserialize, Serialize};

use crate::directory::Directory;

/// The pod label that turns the kernel splice on or off for one workload (`enabled` /
/// `disabled`), whatever the node's default. Under `nodemesh.io/`, so the control plane
/// sends it (the `nodemesh.io/labels` Workload extension).
pub const SPLICE_LABEL: &str = "nodemesh.io/splice";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// The Kubernetes pod UID: how the pod's cgroup is found.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// All of the pod's labels from the enrollment file; from the control plane, those under
    /// `nodemesh.io/` (all the agent reads).
    pub labels: Labels,
    /// Whether the mesh captures this pod's traffic.
    pub intercept: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Whether this spec comes from a state its source accepted (a valid file, a control
    /// plane's response, a valid snapshot). Until the first one arrives the agent enrolls
    /// nothing and, above all, removes nothing an earlier agent pinned: an empty spec from an
    /// unreadable source must never look like "no pod is in the mesh".
    #[serde(default)]
    pub authoritative: bool,
    pub pods: Vec<PodSpec>,
    /// Every workload and service the source knows, to name the ends of flows.
    #[serde(skip)]
    pub directory: Arc<Directory>,
}

impl NodeSpec {
    pub fn intercepted(&self) -> impl Iterator<Item = &PodSpec> {
        self.pods.iter().filter(|p| p.intercept)
    }
}

impl PodSpec {
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this pod's connections are spliced, given the node's default.
    pub fn splice(&self, node_default: bool) -> bool {
        match self.labels.get(SPLICE_LABEL).map(String::as_str) {
            Some(ENABLED) => true,
            Some(DISABLED) => false,
            _ => node_default,
        }
    }
}
