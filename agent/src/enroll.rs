//! The local enrollment file: the node's pods and namespaces in YAML, for running with no
//! control plane (documented in docs/enrollment.md). This module parses and validates one
//! version (errors name the field at fault); `source` watches the file and keeps the last good
//! version in force.

mod source;

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use nodemesh_conventions::{DEFAULT_TRUST_DOMAIN, FieldError, Labels, OwnerReference, captured, naming};
use serde::Deserialize;

pub use source::{FileSource, LIMITS, SourceStatus};

use crate::{
    claims::{self, Claim, Claims},
    directory::{DirectoryBuilder, Names},
    spec::{NodeSpec, PodSpec},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollmentFile {
    #[serde(default)]
    namespaces: Vec<NamespaceEntry>,
    /// Required: emptying the node must be said (`pods: []`), never what a file cut short or
    /// a document without the key looks like.
    pods: Option<Vec<PodEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceEntry {
    name: String,
    #[serde(default, deserialize_with = "string_map")]
    labels: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodEntry {
    uid: String,
    namespace: String,
    name: String,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default, deserialize_with = "string_map")]
    labels: Labels,
    /// For the pod's SPIFFE identity in flows and metrics (`default` when absent).
    #[serde(default, rename = "serviceAccount")]
    service_account: String,
    /// Its controller (ReplicaSet, StatefulSet, Job, ...), as Kubernetes lists it: names the
    /// workload in flows and metrics, the pod itself when absent.
    #[serde(default, rename = "ownerReferences")]
    owner_references: Vec<OwnerReference>,
}

/// A label map as the API server types it: keys and values are strings. YAML would read
/// `app: 1` or `on: true` as a number or a boolean, and serde would quietly turn it into the
/// string "1"; Kubernetes refuses such a manifest, so this does too.
fn string_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
    #[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
    struct Strict(#[serde(deserialize_with = "strict_string")] String);
    let map: BTreeMap<Strict, Strict> = BTreeMap::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k.0, v.0)).collect())
}

fn strict_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string (quote numbers and booleans: \"1\", \"true\")")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
    }
    d.deserialize_any(Visitor)
}

/// An error in the document: its field (e.g. `pods[2].ips[0]`) and what is wrong with it.
fn error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

/// Parses and validates an enrollment document.
pub fn parse(text: &str) -> Result<NodeSpec, FieldError> {
    parse_after(text, &NodeSpec::default())
}

/// Parses and validates an enrollment document that replaces `previous` (the version in
/// force): pods already serving keep their addresses and names against newcomers.
pub fn parse_after(text: &str, previous: &NodeSpec) -> Result<NodeSpec, FieldError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let file: EnrollmentFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        error(if path == "." { "(document)".into() } else { path }, e.into_inner().to_string())
    })?;

    let Some(file_pods) = file.pods else {
        return Err(error("pods", "required (write `pods: []` to enroll no pod)"));
    };
    let mut namespaces: BTreeMap<String, Labels> = BTreeMap::new();
    for (i, ns) in file.namespaces.into_iter().enumerate() {
        validate_name(&format!("namespaces[{i}].name"), &ns.name)?;
        if namespaces.contains_key(&ns.name) {
            return Err(error(format!("namespaces[{i}].name"), format!("duplicate namespace {:?}", ns.name)));
        }
        namespaces.insert(ns.name, ns.labels);
    }
    // The mesh's capture rule. The file says nothing of the host network: a host-network
    // pod is refused when the agent looks for its network namespace (`pods::locate`).
    let intercepts = |pod: &PodEntry| captured(namespaces.get(&pod.namespace), &pod.labels, false);

    let mut pods = Vec::with_capacity(file_pods.len());
    let mut directory = DirectoryBuilder::default();
    // Incumbents (pods of the version in force) claim first, newcomers in file order.
    let serving: HashSet<&str> = previous.pods.iter().map(|p| p.uid.as_str()).collect();
    let mut order: Vec<usize> = (0..file_pods.len()).collect();
    order.sort_by_key(|&i| !serving.contains(file_pods[i].uid.as_str()));
    let mut claims = Claims::default();
    for &i in &order {
        let pod = &file_pods[i];
        let at = |field: &str| format!("pods[{i}].{field}");
        validate_uid(&at("uid"), &pod.uid)?;
        validate_name(&at("namespace"), &pod.namespace)?;
        validate_name(&at("name"), &pod.name)?;
        let who = format!("pods[{i}] ({}/{})", pod.namespace, pod.name);
        let mut claim = |field: String, what: Claim| {
            claims.claim_all(&who, [what]).map_err(|clash| error(field, clash.to_string()))
        };
        claim(at("uid"), Claim::PodUid(pod.uid.clone()))?;
        claim(at("name"), Claim::PodName(format!("{}/{}", pod.namespace, pod.name)))?;
        for (j, ip) in pod.ips.iter().enumerate() {
            let field = at(&format!("ips[{j}]"));
            let parsed: IpAddr =
                ip.parse().map_err(|_| error(&field, format!("{ip:?} is not an IP address")))?;
            if let Some(why) = claims::not_a_pod_address(parsed) {
                return Err(error(field, why));
            }
            claim(field, Claim::Address(parsed))?;
        }
    }
    for pod in file_pods {
        let ips: Vec<IpAddr> = pod.ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        let intercept = intercepts(&pod);
        let workload = naming::workload_name(&pod.name, &pod.labels, &pod.owner_references);
        let names = Names {
            namespace: &pod.namespace,
            pod: &pod.name,
            workload: &workload,
            trust_domain: DEFAULT_TRUST_DOMAIN,
            service_account: &pod.service_account,
            canonical_service: &naming::canonical_service(&pod.labels, &workload),
            canonical_revision: &naming::canonical_revision(&pod.labels),
            policies: &[],
            // The local file has no CA and no other node: no HBONE.
            captured: false,
        };
        directory.workload(&ips, names, []);
        pods.push(PodSpec {
            uid: pod.uid,
            namespace: pod.namespace,
            name: pod.name,
            ips,
            labels: pod.labels,
            intercept,
        });
    }
    Ok(NodeSpec { authoritative: true, pods, directory: Arc::new(directory.build()) })
}

/// Kubernetes names (RFC 1123 labels, also the rule for namespaces).
fn validate_name(path: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok { Ok(()) } else { Err(error(path, format!("{name:?} is not a valid Kubernetes name"))) }
}

/// UIDs become cgroup path components, so only what kubelet ever produces is accepted.
fn validate_uid(path: &str, uid: &str) -> Result<(), FieldError> {
    let ok = !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok { Ok(()) } else { Err(error(path, format!("{uid:?} is not a pod UID (hex digits and dashes)"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const GOOD: &str = r#"
namespaces:
  - name: shop
    labels: {nodemesh.io/intercept: enabled}
pods:
  - uid: 6b1f0d2e-1111-2222-3333-444455556666
    namespace: shop
    name: cart-0
    ips: [10.244.1.5, "fd00:10:244:1::5"]
    labels: {app: cart}
"#;

    #[test]
    fn parses_a_good_file() {
        let spec = parse(GOOD).expect("valid");
        assert_eq!(spec.pods.len(), 1);
        assert_eq!(spec.pods[0].ips.len(), 2);
        assert!(spec.pods[0].intercept);
    }

    #[test]
    fn namespace_label_enables_and_pod_label_opts_out() {
        let text = r#"
namespaces:
  - {name: on, labels: {nodemesh.io/intercept: enabled}}
  - {name: off}
pods:
  - {uid: a1, namespace: on, name: in}
  - {uid: a2, namespace: on, name: out, labels: {nodemesh.io/intercept: disabled}}
  - {uid: a3, namespace: off, name: plain}
  - {uid: a4, namespace: unknown, name: stray}
"#;
        let spec = parse(text).expect("valid");
        let intercepted: Vec<&str> = spec.intercepted().map(|p| p.name.as_str()).collect();
        assert_eq!(intercepted, ["in"]);
    }

    #[test]
    fn owners_and_labels_name_the_workload() {
        let text = r#"
pods:
  - uid: b1
    namespace: shop
    name: cart-7d9f8c6b5-x2x4z
    ips: [10.244.1.9]
    labels: {app: cart, version: v2, pod-template-hash: 7d9f8c6b5}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: cart-7d9f8c6b5, controller: true}]
"#;
        let spec = parse(text).expect("valid");
        let w = spec.directory.workload(&"10.244.1.9".parse().expect("ip")).expect("in the directory");
        assert_eq!((&*w.pod, &*w.workload), ("cart-7d9f8c6b5-x2x4z", "cart"));
        assert_eq!((&*w.canonical_service, &*w.canonical_revision), ("cart", "v2"));
        let bad = text.replace("kind: ReplicaSet, ", "");
        assert!(parse(&bad).expect_err("owner without kind").field.starts_with("pods[0].ownerReferences[0]"));
    }

    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../../docs/enrollment.md");
        let yaml = doc.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("a yaml block");
        let spec = parse(yaml).expect("docs/enrollment.md's example");
        let cart = spec.directory.workload(&"10.244.1.5".parse().expect("ip")).expect("cart-0");
        assert_eq!((&*cart.pod, &*cart.workload, &*cart.canonical_service), ("cart-0", "cart", "cart"));
    }

    #[test]
    fn errors_name_the_field() {
        let bad_ip = GOOD.replace("10.244.1.5", "10.244.1.x");
        assert_eq!(parse(&bad_ip).expect_err("bad ip").field, "pods[0].ips[0]");

        let bad_uid = GOOD.replace("6b1f0d2e-1111", "../../etc");
        assert_eq!(parse(&bad_uid).expect_err("bad uid").field, "pods[0].uid");

        let unknown = GOOD.replace("    labels: {app: cart}", "    label: {app: cart}");
        let e = parse(&unknown).expect_err("unknown field");
        assert!(e.field.starts_with("pods[0]"), "{e}");
        assert!(e.message.contains("label"), "{e}");

        let wrong_type = GOOD.replace("ips: [10.244.1.5, \"fd00:10:244:1::5\"]", "ips: 7");
        assert_eq!(parse(&wrong_type).expect_err("type").field, "pods[0].ips");
    }

    #[test]
    fn rejects_duplicates() {
        let twice = format!("{GOOD}{}", &GOOD[GOOD.find("  - uid").expect("pod")..]);
        let e = parse(&twice).expect_err("dup");
        assert_eq!(e.field, "pods[1].uid");
    }

    #[test]
    fn label_values_are_strings() {
        let text = GOOD.replace("labels: {app: cart}", "labels: {app: 1}");
        let e = parse(&text).expect_err("a number is not a label value");
        assert!(e.field.contains("labels"), "{e}");
    }
}
