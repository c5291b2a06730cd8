//! The labels that put a pod in the mesh.

use std::collections::BTreeMap;

/// A Kubernetes object's labels (or a selector's): key to value.
pub type Labels = BTreeMap<String, String>;

/// The namespace label that turns interception on, and the pod label that opts one pod out.
pub const INTERCEPT_LABEL: &str = "nodemesh.io/intercept";
pub const ENABLED: &str = "enabled";
pub const DISABLED: &str = "disabled";

/// The capture rule: a pod is in the mesh when its namespace has `nodemesh.io/intercept=enabled`
/// (`namespace` is `None` when the namespace is not known), the pod does not opt out with
/// `nodemesh.io/intercept=disabled`, and it is not on the host network (it has no network
/// namespace of its own to intercept in).
pub fn captured(namespace: Option<&Labels>, pod: &Labels, host_network: bool) -> bool {
    let namespace_on = namespace.and_then(|l| l.get(INTERCEPT_LABEL)).is_some_and(|v| v == ENABLED);
    let pod_off = pod.get(INTERCEPT_LABEL).is_some_and(|v| v == DISABLED);
    namespace_on && !pod_off && !host_network
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
}
