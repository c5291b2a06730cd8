//! What the node should do, whatever the source (the local enrollment file now, the control
//! plane later): its pods and namespaces, and which pods are intercepted.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// The namespace label that turns interception on, and the pod label that opts one pod out.
pub const INTERCEPT_LABEL: &str = "nodemesh.io/intercept";
pub const ENABLED: &str = "enabled";
pub const DISABLED: &str = "disabled";

/// The pod label that turns the kernel splice on or off for one workload (`enabled` /
/// `disabled`), whatever the node's default.
pub const SPLICE_LABEL: &str = "nodemesh.io/splice";

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSpec {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// `metadata.uid`: how the pod's cgroup is found.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub namespaces: BTreeMap<String, NamespaceSpec>,
    pub pods: Vec<PodSpec>,
}

impl NodeSpec {
    /// Whether traffic of `pod` is intercepted: its namespace says so and the pod does not
    /// opt out.
    pub fn intercepts(&self, pod: &PodSpec) -> bool {
        let namespace_on = self
            .namespaces
            .get(&pod.namespace)
            .and_then(|ns| ns.labels.get(INTERCEPT_LABEL))
            .is_some_and(|v| v == ENABLED);
        let pod_off = pod.labels.get(INTERCEPT_LABEL).is_some_and(|v| v == DISABLED);
        namespace_on && !pod_off
    }

    pub fn intercepted(&self) -> impl Iterator<Item = &PodSpec> {
        self.pods.iter().filter(|p| self.intercepts(p))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, labels: &[(&str, &str)]) -> PodSpec {
        PodSpec {
            uid: "u".into(),
            namespace: ns.into(),
            name: "p".into(),
            ips: vec![],
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        }
    }

    #[test]
    fn namespace_label_enables_and_pod_label_opts_out() {
        let mut spec = NodeSpec::default();
        spec.namespaces.insert(
            "on".into(),
            NamespaceSpec { name: "on".into(), labels: [(INTERCEPT_LABEL.into(), ENABLED.into())].into() },
        );
        spec.namespaces.insert("off".into(), NamespaceSpec { name: "off".into(), labels: Labels::new() });
        assert!(spec.intercepts(&pod("on", &[])));
        assert!(!spec.intercepts(&pod("on", &[(INTERCEPT_LABEL, DISABLED)])));
        assert!(!spec.intercepts(&pod("off", &[])));
        assert!(!spec.intercepts(&pod("unknown", &[])));
    }
}
