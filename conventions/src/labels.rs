//! The labels that put a pod in the mesh, and which of a pod's labels the agent needs.

use std::collections::BTreeMap;

/// A Kubernetes object's labels (or a selector's): key to value.
pub type Labels = BTreeMap<String, String>;

/// The namespace label that turns interception on, and the pod label that opts one pod out.
pub const INTERCEPT_LABEL: &str = "nodemesh.io/intercept";
pub const ENABLED: &str = "enabled";
pub const DISABLED: &str = "disabled";

/// The prefix of every label Nodemesh reads from a pod; the control plane sends the agent
/// these and no others.
pub const MESH_LABEL_PREFIX: &str = "nodemesh.io/";

/// The capture rule: a pod is in the mesh when its namespace has `nodemesh.io/intercept=enabled`
/// (`namespace` is `None` when the namespace is not known), the pod does not opt out with
/// `nodemesh.io/intercept=disabled`, and it is not on the host network (it has no network
/// namespace of its own to intercept in).
pub fn captured(namespace: Option<&Labels>, pod: &Labels, host_network: bool) -> bool {
    let namespace_on = namespace.and_then(|l| l.get(INTERCEPT_LABEL)).is_some_and(|v| v == ENABLED);
    let pod_off = pod.get(INTERCEPT_LABEL).is_some_and(|v| v == DISABLED);
    namespace_on && !pod_off && !host_network
}

/// The labels of a pod that the agent is sent: those under [`MESH_LABEL_PREFIX`].
pub fn mesh_labels(labels: &Labels) -> impl Iterator<Item = (&String, &String)> {
    labels.iter().filter(|(k, _)| k.starts_with(MESH_LABEL_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_namespace_enables_and_a_pod_opts_out() {
        let on = labels(&[(INTERCEPT_LABEL, ENABLED)]);
        let plain = Labels::new();
        assert!(captured(Some(&on), &plain, false));
        assert!(!captured(Some(&on), &labels(&[(INTERCEPT_LABEL, DISABLED)]), false));
        assert!(captured(Some(&on), &labels(&[(INTERCEPT_LABEL, "other")]), false));
        assert!(!captured(Some(&on), &plain, true), "host-network pods are never captured");
        assert!(!captured(Some(&plain), &labels(&[(INTERCEPT_LABEL, ENABLED)]), false));
        assert!(!captured(Some(&labels(&[(INTERCEPT_LABEL, "true")])), &plain, false));
        assert!(!captured(None, &plain, false), "an unknown namespace");
    }

    #[test]
    fn only_nodemesh_labels_are_sent() {
        let l = labels(&[("app", "cart"), ("nodemesh.io/splice", "disabled"), ("nodemesh.iox/a", "b")]);
        let sent: Vec<&str> = mesh_labels(&l).map(|(k, _)| k.as_str()).collect();
        assert_eq!(sent, ["nodemesh.io/splice"]);
    }
}
