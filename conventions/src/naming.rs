//! What a pod is called beyond its own name: the workload it belongs to (its Deployment,
//! StatefulSet, CronJob, ...) and its canonical service and revision. Istio derives these the
//! same way and labels its metrics with them (`source_workload`, `source_canonical_service`),
//! so dashboards group the replicas of one Deployment rather than one series per pod.

use serde::{Deserialize, Serialize};

use crate::Labels;

/// One of an object's owners, as Kubernetes lists them in `metadata.ownerReferences` (the
/// fields naming needs; others are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    /// The managing controller among the owners.
    #[serde(default)]
    pub controller: Option<bool>,
}

/// Label the ReplicaSet controller puts on its pods: the suffix it added to the Deployment's
/// name to name the ReplicaSet.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The workload a pod belongs to: the Deployment behind its ReplicaSet, the CronJob behind
/// its Job, any other controller by name, and the pod itself when nothing owns it.
pub fn workload_name(pod_name: &str, labels: &Labels, owners: &[OwnerReference]) -> String {
    let Some(owner) = owners.iter().find(|o| o.controller == Some(true)).or_else(|| owners.first()) else {
        return pod_name.to_owned();
    };
    match owner.kind.as_str() {
        "ReplicaSet" => labels
            .get(POD_TEMPLATE_HASH)
            .and_then(|hash| owner.name.strip_suffix(hash.as_str())?.strip_suffix('-'))
            .filter(|deployment| !deployment.is_empty())
            .unwrap_or(&owner.name)
            .to_owned(),
        // The CronJob controller names its Jobs `<cronjob>-<scheduled minute>`.
        "Job" => owner
            .name
            .rsplit_once('-')
            .filter(|(cronjob, minute)| {
                !cronjob.is_empty() && minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit())
            })
            .map_or(owner.name.as_str(), |(cronjob, _)| cronjob)
            .to_owned(),
        _ => owner.name.clone(),
    }
}

/// The service the pod is a version of, by Istio's labels, then the common app labels, then
/// the workload name.
pub fn canonical_service(labels: &Labels, workload: &str) -> String {
    first_label(labels, &["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"])
        .unwrap_or(workload)
        .to_owned()
}

/// Which version of its canonical service the pod runs; `latest` when unlabelled.
pub fn canonical_revision(labels: &Labels) -> String {
    first_label(labels, &["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"])
        .unwrap_or("latest")
        .to_owned()
}

fn first_label<'l>(labels: &'l Labels, keys: &[&str]) -> Option<&'l str> {
    keys.iter().find_map(|k| labels.get(*k)).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference { kind: kind.into(), name: name.into(), controller: Some(true) }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_deployment_pod_is_named_after_its_deployment() {
        let l = labels(&[("pod-template-hash", "7d9f8c6b5")]);
        let rs = [owner("ReplicaSet", "cart-7d9f8c6b5")];
        assert_eq!(workload_name("cart-7d9f8c6b5-x2x4z", &l, &rs), "cart");
        // A ReplicaSet of its own (no hash label, or a hash it does not end with) keeps its name.
        assert_eq!(workload_name("rs-abcde", &Labels::new(), &[owner("ReplicaSet", "rs")]), "rs");
        let other = labels(&[("pod-template-hash", "ffff")]);
        assert_eq!(workload_name("cart-7d9f8c6b5-x2x4z", &other, &rs), "cart-7d9f8c6b5");
    }

    #[test]
    fn jobs_of_a_cronjob_are_named_after_the_cronjob() {
        let none = Labels::new();
        assert_eq!(
            workload_name("backup-29180160-abcde", &none, &[owner("Job", "backup-29180160")]),
            "backup"
        );
        assert_eq!(workload_name("migrate-xyz12", &none, &[owner("Job", "migrate")]), "migrate");
        assert_eq!(workload_name("web-0", &none, &[owner("StatefulSet", "web")]), "web");
    }

    #[test]
    fn the_controller_wins_and_an_unowned_pod_is_its_own_workload() {
        let owners = [
            OwnerReference { kind: "ConfigMap".into(), name: "x".into(), controller: None },
            owner("DaemonSet", "logs"),
        ];
        assert_eq!(workload_name("logs-q8w7e", &Labels::new(), &owners), "logs");
        assert_eq!(workload_name("debug", &Labels::new(), &[]), "debug");
    }

    #[test]
    fn canonical_names_prefer_istio_labels_then_app_labels() {
        let l = labels(&[("app", "cart"), ("version", "v2"), ("app.kubernetes.io/name", "shop-cart")]);
        assert_eq!(canonical_service(&l, "cart-deploy"), "shop-cart");
        assert_eq!(canonical_revision(&l), "v2");
        assert_eq!(canonical_service(&Labels::new(), "cart-deploy"), "cart-deploy");
        assert_eq!(canonical_revision(&Labels::new()), "latest");
    }
}
