use serde_json::{Value, json};

use super::*;
use crate::model::Object;

fn kind(name: &str) -> &'static Kind {
    KINDS.iter().find(|k| k.kind == name).expect("kind")
}

fn dynamic(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("a DynamicObject")
}

#[test]
fn a_pod_is_projected_onto_what_the_model_reads() {
    // A list item, as the API server sends it: no kind or apiVersion, much the model ignores.
    let pod = json!({
        "metadata": {"name": "cart-0", "namespace": "shop", "uid": "6a0c1b7e-0000-4000-8000-000000000001",
            "resourceVersion": "7", "labels": {"app": "cart"},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {}}}],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "cart-7d9",
                "uid": "x", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "cart", "image": "cart:1",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m"}}}], "dnsPolicy": "ClusterFirst"},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{"name": "cart", "ready": true}]}
    });
    let projected = project(kind("Pod"), serde_json::to_value(dynamic(pod)).expect("json"));
    assert_eq!(
        projected,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "cart-0", "namespace": "shop", "uid": "6a0c1b7e-0000-4000-8000-000000000001",
                "labels": {"app": "cart"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "cart-7d9", "controller": true}]},
            "spec": {"nodeName": "node-a", "containers": [{"name": "cart",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}]}
        })
    );
    let entry = parse(kind("Pod"), dynamic(projected), None, &options(), 1);
    assert!(entry.error.is_none(), "{:?}", entry.error);
    assert!(entry.held.is_some());
}

#[test]
fn a_custom_resource_keeps_its_spec_whole_and_a_bad_value_names_its_field() {
    let policy = json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "shop", "generation": 3},
        "spec": {"action": "PERMIT"},
        "status": {"validationMessages": []}
    });
    let entry = parse(kind("AuthorizationPolicy"), dynamic(policy), None, &options(), 1);
    let error = entry.error.expect("refused");
    assert_eq!(error.file, "kubernetes:AuthorizationPolicy/shop/p");
    assert_eq!(error.error.field, "spec.action");
    assert!(entry.held.is_none(), "a new bad object serves nothing");

    // A field the model does not support is still refused (not projected away).
    let rule = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "r", "namespace": "shop"},
        "spec": {"host": "cart", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
    });
    let entry = parse(kind("DestinationRule"), dynamic(rule), None, &options(), 1);
    assert!(entry.error.expect("refused").error.field.starts_with("spec.subsets"));
}

#[test]
fn a_bad_change_keeps_the_last_good_version() {
    let good = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "shop"}, "spec": {"action": "DENY"}});
    let first = parse(kind("AuthorizationPolicy"), dynamic(good), None, &options(), 1);
    assert!(first.error.is_none());
    let bad = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "shop"}, "spec": {"action": "PERMIT"}});
    let second = parse(kind("AuthorizationPolicy"), dynamic(bad), Some(&first), &options(), 2);
    assert!(second.error.is_some());
    assert_eq!(second.held.map(|h| h.object), first.held.map(|h| h.object));
}

#[test]
fn every_kind_names_its_collection() {
    let paths: Vec<String> = KINDS.iter().map(|k| format!("{}/{}", k.api_version(), k.plural)).collect();
    assert_eq!(
        paths,
        [
            "v1/namespaces",
            "v1/nodes",
            "v1/pods",
            "v1/services",
            "security.istio.io/v1/authorizationpolicies",
            "security.istio.io/v1/peerauthentications",
            "networking.istio.io/v1/destinationrules",
            "gateway.networking.k8s.io/v1/httproutes",
            "nodemesh.io/v1alpha1/trafficpolicies",
        ]
    );
}

fn options() -> Options {
    Options { domain_suffix: "cluster.local".into(), istio_dataplane_mode: false }
}

#[test]
fn istio_dataplane_mode_is_honoured_only_when_asked_and_never_over_our_own_label() {
    let labels = |entry: Entry| match entry.held.unwrap_or_else(|| panic!("{:?}", entry.error)).object {
        Object::Namespace(ns) => ns.metadata.labels.clone(),
        Object::Pod(pod) => pod.metadata.labels.clone(),
        other => panic!("{other:?}"),
    };
    let ns = |labels: Value| dynamic(json!({"metadata": {"name": "shop", "labels": labels}}));
    let pod = |labels: Value| {
        dynamic(json!({"metadata": {"name": "p", "namespace": "shop", "labels": labels,
            "uid": "6a0c1b7e-0000-4000-8000-000000000002"},
            "status": {"podIP": "10.0.0.1"}}))
    };
    let asked = Options { istio_dataplane_mode: true, ..options() };
    let intercept = |l: &crate::model::Labels| l.get("nodemesh.io/intercept").cloned();

    let ambient = json!({"istio.io/dataplane-mode": "ambient"});
    assert_eq!(intercept(&labels(parse(kind("Namespace"), ns(ambient.clone()), None, &options(), 1))), None);
    assert_eq!(
        intercept(&labels(parse(kind("Namespace"), ns(ambient), None, &asked, 1))).as_deref(),
        Some("enabled")
    );
    let ours = json!({"istio.io/dataplane-mode": "ambient", "nodemesh.io/intercept": "disabled"});
    assert_eq!(
        intercept(&labels(parse(kind("Namespace"), ns(ours), None, &asked, 1))).as_deref(),
        Some("disabled")
    );
    let none = json!({"istio.io/dataplane-mode": "none"});
    assert_eq!(
        intercept(&labels(parse(kind("Pod"), pod(none), None, &asked, 1))).as_deref(),
        Some("disabled")
    );
    // A pod cannot enrol itself with `ambient`, nor a namespace opt out with `none`.
    let pod_ambient = json!({"istio.io/dataplane-mode": "ambient"});
    assert_eq!(intercept(&labels(parse(kind("Pod"), pod(pod_ambient), None, &asked, 1))), None);
}

#[test]
fn an_update_the_model_does_not_read_keeps_the_object_as_it_was() {
    let pod = |phase: &str, heartbeat: &str| {
        dynamic(
            json!({"metadata": {"name": "p", "namespace": "shop", "uid": "6a0c1b7e-0000-4000-8000-000000000003",
            "resourceVersion": heartbeat}, "spec": {"nodeName": "node-a"},
            "status": {"phase": phase, "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": heartbeat}]}}),
        )
    };
    let first = parse(kind("Pod"), pod("Running", "1"), None, &options(), 1);
    let again = parse(kind("Pod"), pod("Running", "2"), Some(&first), &options(), 2);
    let arc = |e: &Entry| match &e.held.as_ref().expect("held").object {
        Object::Pod(p) => Arc::clone(p),
        other => panic!("{other:?}"),
    };
    assert!(Arc::ptr_eq(&arc(&first), &arc(&again)), "the same object, so the world reuses it");
    assert!(first.same(&again));
    let changed = parse(kind("Pod"), pod("Succeeded", "3"), Some(&again), &options(), 3);
    assert!(!again.same(&changed));
}
