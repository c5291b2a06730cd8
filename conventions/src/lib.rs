//! What the node agent and the control plane must agree on, defined once: the labels that put
//! a pod in the mesh and the capture rule, the Workload extensions Nodemesh adds to Istio's
//! workload API, how a pod's workload is named, Kubernetes' syntax rules (addresses above
//! all), the default domain, how much of a peer's text is kept, and the shape of an error
//! that names a field. Plain data and functions: no I/O, no protos, no runtime, so either
//! side (and any tool or test) can depend on it for nothing.

mod field;
pub mod identity;
mod labels;
pub mod naming;
pub mod rules;
pub mod text;

pub use field::FieldError;
pub use identity::SpiffeId;
pub use labels::{DISABLED, ENABLED, INTERCEPT_LABEL, Labels, MESH_LABEL_PREFIX, captured, mesh_labels};
pub use naming::OwnerReference;

/// The Workload extension carrying the pod's Kubernetes UID (a `google.protobuf.StringValue`):
/// the agent finds the pod's cgroup by it. Sent by Nodemesh's control plane; istiod does not
/// send it, and such workloads wait in the agent's `pending`.
pub const POD_UID_EXTENSION: &str = "nodemesh.io/pod-uid";

/// The Workload extension carrying the pod's labels under [`MESH_LABEL_PREFIX`] (a
/// `nodemesh.v1.Labels`), for the per-pod settings the agent reads from labels
/// (`nodemesh.io/splice`). Sent only when the pod has such labels.
pub const LABELS_EXTENSION: &str = "nodemesh.io/labels";

/// The most labels [`LABELS_EXTENSION`] may carry: far above the handful Nodemesh defines,
/// low enough that no workload can make the agent hold much.
pub const MAX_MESH_LABELS: usize = 32;

/// Kubernetes' default cluster domain: services are `<name>.<namespace>.svc.<suffix>`.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";

/// Istio's default trust domain, the `<td>` of `spiffe://<td>/ns/<ns>/sa/<sa>`: the cluster
/// domain, as istiod defaults it.
pub const DEFAULT_TRUST_DOMAIN: &str = DEFAULT_DOMAIN_SUFFIX;
