//! Views, versions and rebuilds.

use nodemesh_conventions::{INTERCEPT_LABEL, POD_UID_EXTENSION};
use nodemesh_proto::{istio::workload as wl, prost::Message as _};

use super::*;
use crate::model::{Object, ObjectMeta, PodSpec, PodStatus, parse_document};

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

/// Inputs from YAML documents, each checked as the store checks it (clashes aside).
pub(super) fn inputs_from(yaml: &str) -> Inputs {
    use serde::Deserialize as _;
    let mut inputs = Inputs::default();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(document).expect("yaml");
        let Some(object) = parse_document(value).expect("valid") else { continue };
        match object {
            Object::Namespace(o) => drop(inputs.namespaces.insert(o.metadata.name.clone(), o)),
            Object::Node(o) => drop(inputs.nodes.insert(o.metadata.name.clone(), o)),
            Object::Pod(o) => inputs.pods.push(o),
            Object::Service(o) => inputs.services.push(o),
            Object::AuthorizationPolicy(o) => inputs.policies.push(o),
            Object::PeerAuthentication(o) => inputs.peer_authentications.push(o),
            Object::DestinationRule(o) => inputs.destination_rules.push(o),
            Object::TrafficPolicy(o) => inputs.traffic_policies.push(o),
            Object::HttpRoute(o) => inputs.http_routes.push(o),
        }
    }
    inputs
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
                ..Default::default()
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

#[test]
fn a_node_label_change_re_encodes_the_pods_on_it_alone() {
    let node = |name: &str, zone: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: {zone}}}\n"
        )
    };
    let mut inputs = inputs_from(&format!("{}---\n{}", node("n1", "eu-1a"), node("n2", "eu-1b")));
    inputs.pods.push(pod("a", "shop", "n1", &[]));
    inputs.pods.push(pod("b", "shop", "n2", &[]));
    inputs.pods.push(pod("c", "shop", "n3", &[]));
    let mesh = MeshSettings::default();
    let first = World::build(&inputs, &mesh, 1, None);
    let (a, b, c) = ("Kubernetes//Pod/shop/a", "Kubernetes//Pod/shop/b", "Kubernetes//Pod/shop/c");
    let zone = |world: &World, name: &str| decode(&world.addresses[name]).locality.map(|l| l.zone);
    assert_eq!(zone(&first, a).as_deref(), Some("eu-1a"));
    assert_eq!(zone(&first, c), None, "n3 is not known");

    // n1 moves zone; n2 is read again unchanged (a new object with the same labels).
    let moved = inputs_from(&format!("{}---\n{}", node("n1", "eu-1c"), node("n2", "eu-1b")));
    inputs.nodes = moved.nodes;
    let second = World::build(&inputs, &mesh, 2, Some(&first));
    assert_eq!(second.delta.as_ref().map(|d| d.addresses.clone()), Some(vec![Arc::from(a)]));
    assert_eq!(zone(&second, a).as_deref(), Some("eu-1c"));
    assert!(Arc::ptr_eq(&first.addresses[b], &second.addresses[b]), "b's node kept its locality: reused");
}

#[test]
fn a_destination_rule_change_re_sends_only_its_service_policy() {
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{clusterIP: 10.96.0.{}, ports: [{{port: 80}}]}}\n---\n",
            name.len()
        )
    };
    let rule = |name: &str, max: u32| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{host: {name}, trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {max}}}}}}}}}\n---\n"
        )
    };
    let yaml = |cart_max: u32, web: bool| {
        let web = if web { rule("web", 5) } else { String::new() };
        format!("{}{}{}{web}", service("cart"), service("web"), rule("cart", cart_max))
    };
    let mesh = MeshSettings::default();
    let first = World::build(&inputs_from(&yaml(10, true)), &mesh, 1, None);
    let names = |m: &BTreeMap<Arc<str>, Arc<Entry>>| m.keys().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(&first.service_policies),
        ["shop/cart.shop.svc.cluster.local", "shop/web.shop.svc.cluster.local"]
    );
    let entry = &first.service_policies["shop/cart.shop.svc.cluster.local"];
    assert_eq!(
        (entry.body.type_url.as_str(), &entry.audience),
        (type_urls::SERVICE_POLICY, &Audience::Everyone)
    );
    assert_eq!(first.resources(type_urls::SERVICE_POLICY).map(BTreeMap::len), Some(2));

    let second = World::build(&inputs_from(&yaml(20, true)), &mesh, 2, Some(&first));
    let delta = second.delta.as_ref().expect("delta");
    assert_eq!(delta.names(type_urls::SERVICE_POLICY), [Arc::from("shop/cart.shop.svc.cluster.local")]);
    assert!(delta.addresses.is_empty(), "the services themselves did not change");

    // web's rule goes: its policy is named as removed.
    let third = World::build(&inputs_from(&yaml(20, false)), &mesh, 3, Some(&second));
    let delta = third.delta.as_ref().expect("delta");
    assert_eq!(delta.service_policies, [Arc::from("shop/web.shop.svc.cluster.local")]);
    assert!(!third.service_policies.contains_key("shop/web.shop.svc.cluster.local"));
}
