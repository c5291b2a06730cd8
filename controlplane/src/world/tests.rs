//! Views, versions and rebuilds.

use nodemesh_conventions::{INTERCEPT_LABEL, POD_UID_EXTENSION};
use nodemesh_proto::{istio::workload as wl, prost::Message as _};

use super::*;
use crate::model::{ObjectMeta, PodSpec, PodStatus};

pub(super) fn pod(name: &str, ns: &str, node: &str, labels: &[(&str, &str)]) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some(ns.into()),
            uid: Some(format!("00{}", name.len())),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            ..Default::default()
        },
        spec: PodSpec { node_name: Some(node.into()), ..Default::default() },
        status: PodStatus { pod_ip: Some("10.0.0.1".into()), ..Default::default() },
    })
}

fn decode(entry: &Entry) -> wl::Workload {
    match wl::Address::decode(entry.body.value.as_slice()).expect("decode").r#type {
        Some(wl::address::Type::Workload(w)) => w,
        other => panic!("not a workload: {other:?}"),
    }
}

#[test]
fn captured_workloads_and_views() {
    let mut inputs = Inputs::default();
    let mut ns =
        crate::model::Namespace { metadata: ObjectMeta { name: "shop".into(), ..Default::default() } };
    ns.metadata.labels.insert(INTERCEPT_LABEL.into(), "enabled".into());
    inputs.namespaces.insert("shop".into(), Arc::new(ns));
    inputs.pods.push(pod("cart", "shop", "n1", &[("app", "cart")]));
    inputs.pods.push(pod("batch", "shop", "n1", &[(INTERCEPT_LABEL, "disabled")]));
    inputs.pods.push(pod("legacy", "other", "n2", &[]));
    let world = World::build(&inputs, &MeshSettings::default(), 1, None);

    let cart = &world.addresses["Kubernetes//Pod/shop/cart"];
    let w = decode(cart);
    assert_eq!(w.tunnel_protocol, wl::TunnelProtocol::Hbone as i32);
    assert_eq!(w.extensions[0].name, POD_UID_EXTENSION);
    assert!(world.visible(cart, "n2"), "mesh workloads are visible everywhere");
    let batch = &world.addresses["Kubernetes//Pod/shop/batch"];
    assert_eq!(decode(batch).tunnel_protocol, wl::TunnelProtocol::None as i32, "the pod opted out");
    let legacy = &world.addresses["Kubernetes//Pod/other/legacy"];
    assert!(world.visible(legacy, "n2") && !world.visible(legacy, "n1"), "outside the mesh: its node only");
}

#[test]
fn versions_follow_content() {
    let mut inputs = Inputs::default();
    inputs.pods.push(pod("a", "x", "n1", &[]));
    let v1 = World::build(&inputs, &MeshSettings::default(), 1, None).addresses["Kubernetes//Pod/x/a"]
        .version
        .clone();
    let v2 = World::build(&inputs, &MeshSettings::default(), 2, None).addresses["Kubernetes//Pod/x/a"]
        .version
        .clone();
    assert_eq!(v1, v2);
    let changed = Arc::make_mut(&mut inputs.pods[0]);
    changed.metadata.labels.insert("k".into(), "v".into());
    changed.spec.service_account_name = Some("other".into());
    let v3 = World::build(&inputs, &MeshSettings::default(), 3, None).addresses["Kubernetes//Pod/x/a"]
        .version
        .clone();
    assert_ne!(v1, v3);
}

#[test]
fn a_workload_behind_many_services_keeps_its_version_across_builds() {
    let mut inputs = Inputs::default();
    inputs.pods.push(pod("a", "x", "n1", &[("app", "a"), ("tier", "web")]));
    for (name, key, value) in
        [("s1", "app", "a"), ("s2", "tier", "web"), ("s3", "app", "a"), ("s4", "app", "b")]
    {
        let svc = crate::model::Service {
            metadata: ObjectMeta { name: name.into(), namespace: Some("x".into()), ..Default::default() },
            spec: crate::model::ServiceSpec {
                selector: Some([(key.to_owned(), value.to_owned())].into()),
                cluster_ip: Some("10.96.0.1".into()),
                cluster_ips: Vec::new(),
                ports: vec![crate::model::ServicePort {
                    name: None,
                    port: 80,
                    target_port: None,
                    protocol: None,
                    app_protocol: None,
                }],
            },
        };
        inputs.services.push(Arc::new(svc));
    }
    let mesh = MeshSettings::default();
    let first = World::build(&inputs, &mesh, 1, None);
    let w = decode(&first.addresses["Kubernetes//Pod/x/a"]);
    let keys: Vec<&str> = w.services.keys().map(String::as_str).collect();
    assert_eq!(keys, ["x/s1.x.svc.cluster.local", "x/s2.x.svc.cluster.local", "x/s3.x.svc.cluster.local"]);
    for g in 2..20 {
        // Built afresh (no memo to reuse), so the encoding itself must be stable.
        let fresh = World::build(&inputs, &mesh, g, None);
        let again = World::build(&inputs, &mesh, g, Some(&fresh));
        let fresh_vs_first = World::build(&inputs, &mesh, g + 100, Some(&first));
        assert!(fresh.addresses.iter().all(|(n, e)| first.addresses[n].hash == e.hash));
        assert_eq!(fresh_vs_first.delta.as_ref().map(|d| d.addresses.len()), Some(0));
        assert_eq!(again.delta.as_ref().map(|d| d.addresses.len()), Some(0), "build {g} changed something");
    }
}

#[test]
fn a_rebuild_reuses_what_did_not_change_and_redoes_what_did() {
    let mut inputs = Inputs::default();
    let ns = crate::model::Namespace { metadata: ObjectMeta { name: "shop".into(), ..Default::default() } };
    inputs.namespaces.insert("shop".into(), Arc::new(ns.clone()));
    inputs.pods.push(pod("a", "shop", "n1", &[]));
    inputs.pods.push(pod("b", "shop", "n1", &[]));
    inputs.pods.push(pod("c", "other", "n2", &[]));
    let mesh = MeshSettings::default();
    let first = World::build(&inputs, &mesh, 1, None);

    // One pod changes: only it is rebuilt, and the delta names only it.
    Arc::make_mut(&mut inputs.pods[0]).spec.service_account_name = Some("sa".into());
    let second = World::build(&inputs, &mesh, 2, Some(&first));
    let b = "Kubernetes//Pod/shop/b";
    assert!(Arc::ptr_eq(&first.addresses[b], &second.addresses[b]), "b reused");
    let delta = second.delta.as_ref().expect("delta");
    assert_eq!(delta.addresses.iter().map(|n| &**n).collect::<Vec<_>>(), ["Kubernetes//Pod/shop/a"]);
    assert_eq!(delta.from_generation, 1);

    // The namespace turns interception on: both of its pods change, the other does not.
    let mut labelled = ns;
    labelled.metadata.labels.insert(INTERCEPT_LABEL.into(), "enabled".into());
    inputs.namespaces.insert("shop".into(), Arc::new(labelled));
    let third = World::build(&inputs, &mesh, 3, Some(&second));
    let mut names: Vec<&str> = third.delta.as_ref().expect("delta").addresses.iter().map(|n| &**n).collect();
    names.sort_unstable();
    assert_eq!(names, ["Kubernetes//Pod/shop/a", b]);
    assert_eq!(decode(&third.addresses[b]).tunnel_protocol, wl::TunnelProtocol::Hbone as i32);

    // A pod goes away: named in the delta, as removed.
    inputs.pods.remove(2);
    let fourth = World::build(&inputs, &mesh, 4, Some(&third));
    let delta = fourth.delta.as_ref().expect("delta");
    assert_eq!(delta.addresses.iter().map(|n| &**n).collect::<Vec<_>>(), ["Kubernetes//Pod/other/c"]);
    assert!(delta.nodes.contains("n2"), "n2 hosts nothing any more");
}
