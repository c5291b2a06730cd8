//! The mesh's workloads and services as the control plane describes them, checked
//! (`translate.rs` builds them from the protos) and kept in the xDS state and its snapshot.

use std::net::IpAddr;

use nodemesh_conventions::Labels;

use crate::services::{LoadBalancing, Locality, http::AppProtocol};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    pub service_port: u16,
    /// 0: the service names its target port and this workload did not resolve it.
    pub target_port: u16,
    #[serde(default, skip_serializing_if = "AppProtocol::is_tcp")]
    pub protocol: AppProtocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub uid: String,
    pub pod_uid: Option<String>,
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    pub node: String,
    /// In the mesh (HBONE): its node proxy intercepts it.
    pub captured: bool,
    pub trust_domain: String,
    pub service_account: String,
    /// The Deployment (StatefulSet, ...) the pod belongs to, and its canonical service and
    /// revision: what metrics report. Empty when it is the default (the pod, the workload,
    /// `latest`) or the control plane does not say: most are, and 10,000 workloads held
    /// cost no heap for them.
    pub workload_name: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    /// Services it backs: ("namespace/hostname", ports). (A list, not a map: most workloads
    /// back one service, and a map's node would cost more than the entry.)
    pub services: Vec<(String, Vec<PortMap>)>,
    pub authorization_policies: Vec<String>,
    pub healthy: bool,
    /// Its pod's labels under `nodemesh.io/` (the `nodemesh.io/labels` extension): the
    /// per-pod settings (`nodemesh.io/splice`). Most pods have none, and an empty map costs
    /// no heap.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Where it runs, for locality-aware balancing; none when the control plane does not say
    /// (most meshes: boxed, so that 10,000 workloads without one cost a pointer each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Box<Locality>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortMap>,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Address {
    Workload(Workload),
    Service(Service),
}
