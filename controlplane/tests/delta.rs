//! The reference control plane's delta xDS semantics, against a real tonic client over
//! loopback: wildcard and named subscriptions, unsubscription, per-resource versions, nonces,
//! ACK and NACK bookkeeping, reconnection with the versions held, chunking, and many streams
//! at once. Input changes arrive through the directory watch (the poll is set to a minute,
//! so only inotify can deliver them in time).

mod common;

use std::time::Duration;

use common::{Cp, QUIET, WAIT, names, namespace, pod, subscribe, uid, versions};
use nodemesh_controlplane::server::CHUNK;
use nodemesh_proto::{
    envoy::service::discovery::v3::{DeltaDiscoveryRequest, Status},
    tonic::Code,
    type_urls::{ADDRESS, AUTHORIZATION, HTTP_ROUTES, SERVICE_POLICY},
};

const WEB: &str = "mesh/web.mesh.svc.cluster.local";

/// mesh (captured): a on node1, b on node2, behind service web; plain: p on node2.
fn base() -> Vec<(&'static str, String)> {
    vec![
        ("namespaces.yaml", format!("{}---\n{}", namespace("mesh", true), namespace("plain", false))),
        (
            "pods.yaml",
            pod("mesh", "a", "node1", "10.1.0.1", "web")
                + &pod("mesh", "b", "node2", "10.2.0.1", "web")
                + &pod("plain", "p", "node2", "10.2.0.2", "p"),
        ),
        (
            "services.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: mesh}\n\
             spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n"
                .into(),
        ),
    ]
}

#[tokio::test]
async fn a_wildcard_subscription_gets_the_nodes_view_then_only_what_changes() {
    let cp = Cp::start(&base()).await;
    let mut s = cp.open(subscribe("node1", &[])).await;
    let first = s.next().await;
    assert_eq!(first.type_url, ADDRESS);
    assert!(!first.nonce.is_empty() && !first.system_version_info.is_empty());
    // node1 sees the mesh's workloads and services; not a plain pod on another node.
    assert_eq!(names(&first), [uid("mesh", "a"), uid("mesh", "b"), WEB.into()]);
    assert!(first.resources.iter().all(|r| !r.version.is_empty() && r.resource.is_some()));
    s.ack(&first).await;
    s.quiet().await;

    // A new pod: only it arrives, under a new nonce.
    cp.write("c.yaml", &pod("mesh", "c", "node2", "10.2.0.3", "c"));
    let added = s.next().await;
    assert_eq!(names(&added), [uid("mesh", "c")]);
    assert!(added.removed_resources.is_empty());
    assert_ne!(added.nonce, first.nonce);
    s.ack(&added).await;

    // It changes: a new version of it alone.
    cp.write("c.yaml", &pod("mesh", "c", "node2", "10.2.0.4", "c"));
    let changed = s.next().await;
    assert_eq!(names(&changed), [uid("mesh", "c")]);
    assert_ne!(versions(&changed)[&uid("mesh", "c")], versions(&added)[&uid("mesh", "c")]);
    s.ack(&changed).await;

    // It goes: removed by name.
    cp.remove("c.yaml");
    let removed = s.next().await;
    assert!(removed.resources.is_empty());
    assert_eq!(removed.removed_resources, [uid("mesh", "c")]);
    s.ack(&removed).await;

    // What node1 does not see does not wake it.
    cp.write("q.yaml", &pod("plain", "q", "node2", "10.2.0.5", "q"));
    s.quiet().await;
}

#[tokio::test]
async fn named_subscriptions_follow_subscribe_and_unsubscribe() {
    let cp = Cp::start(&base()).await;
    let ghost = uid("mesh", "ghost");
    let mut s = cp.open(subscribe("node1", &[&uid("mesh", "a"), &ghost])).await;
    let first = s.next().await;
    assert_eq!(names(&first), [uid("mesh", "a")]);
    // A name that does not exist is reported as removed, once.
    assert_eq!(first.removed_resources, std::slice::from_ref(&ghost));
    s.ack(&first).await;
    s.quiet().await;

    // Even a plain pod on another node can be asked for by name.
    s.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        resource_names_subscribe: vec![uid("plain", "p")],
        ..Default::default()
    })
    .await;
    let more = s.next().await;
    assert_eq!(names(&more), [uid("plain", "p")]);
    s.ack(&more).await;

    // Unsubscribed: changes to a no longer arrive.
    s.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        resource_names_unsubscribe: vec![uid("mesh", "a")],
        ..Default::default()
    })
    .await;
    s.quiet().await;
    cp.write(
        "pods.yaml",
        &(pod("mesh", "a", "node1", "10.1.0.9", "web")
            + &pod("mesh", "b", "node2", "10.2.0.1", "web")
            + &pod("plain", "p", "node2", "10.2.0.2", "p")),
    );
    s.quiet().await;

    // The ghost appears: it was asked for, so it arrives.
    cp.write("ghost.yaml", &pod("mesh", "ghost", "node1", "10.1.0.7", "ghost"));
    let appeared = s.next().await;
    assert_eq!(names(&appeared), [ghost]);
}

#[tokio::test]
async fn a_reconnecting_client_gets_only_what_changed_while_it_was_away() {
    let cp = Cp::start(&base()).await;
    let mut s = cp.open(subscribe("node1", &[])).await;
    let first = s.next().await;
    s.ack(&first).await;
    let held = versions(&first);
    drop(s);

    // While it is away: b changes, and it claims to hold a workload that no longer exists.
    cp.write(
        "pods.yaml",
        &(pod("mesh", "a", "node1", "10.1.0.1", "web")
            + &pod("mesh", "b", "node2", "10.2.0.9", "web")
            + &pod("plain", "p", "node2", "10.2.0.2", "p")),
    );
    tokio::time::sleep(QUIET).await;
    let mut initial = held.clone();
    initial.insert(uid("mesh", "gone"), "1234".into());
    let mut s = cp
        .open(DeltaDiscoveryRequest {
            initial_resource_versions: initial.into_iter().collect(),
            ..subscribe("node1", &[])
        })
        .await;
    let resync = s.next().await;
    assert_eq!(names(&resync), [uid("mesh", "b")]);
    assert_ne!(versions(&resync)[&uid("mesh", "b")], held[&uid("mesh", "b")]);
    assert_eq!(resync.removed_resources, [uid("mesh", "gone")]);

    // A client that holds exactly the current state still gets a (empty) first response to ACK.
    let mut current = held;
    current.extend(versions(&resync));
    let mut s2 = cp
        .open(DeltaDiscoveryRequest {
            initial_resource_versions: current.into_iter().collect(),
            ..subscribe("node1", &[])
        })
        .await;
    let nothing = s2.next().await;
    assert!(
        nothing.resources.is_empty() && nothing.removed_resources.is_empty() && !nothing.nonce.is_empty()
    );
}

#[tokio::test]
async fn acks_and_nacks_are_recorded_per_agent_and_type() {
    let cp = Cp::start(&base()).await;
    let mut s = cp.open(subscribe("node1", &[])).await;
    let addresses = s.next().await;
    s.send(DeltaDiscoveryRequest { type_url: AUTHORIZATION.into(), ..Default::default() }).await;
    let policies = s.next().await;
    assert_eq!(policies.type_url, AUTHORIZATION);
    s.ack(&policies).await;
    s.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        response_nonce: addresses.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "resource \"x\": workload.addresses[0]: 5 bytes".into(),
            details: Vec::new(),
        }),
        ..Default::default()
    })
    .await;
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = cp.status().await;
        if !status["agents"][0]["types"][ADDRESS]["last_nack"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let agent = &status["agents"][0];
    assert_eq!(agent["node"], "node1", "{status}");
    let nack = agent["types"][ADDRESS]["last_nack"].as_str().expect("NACK recorded");
    assert!(nack.contains(&addresses.nonce) && nack.contains("workload.addresses[0]"), "{nack}");
    assert_eq!(agent["types"][AUTHORIZATION]["last_acked_nonce"], policies.nonce.as_str());
    assert_eq!(agent["types"][ADDRESS]["resources_held"], 3);
}

#[tokio::test]
async fn a_large_view_arrives_in_chunks_to_many_streams_at_once() {
    let mut pods = String::new();
    for i in 0..2500 {
        pods += &pod(
            "mesh",
            &format!("w{i}"),
            &format!("node{}", i % 50),
            &format!("10.3.{}.{}", i / 250, i % 250 + 1),
            "w",
        );
    }
    let cp = Cp::start(&[("namespaces.yaml", namespace("mesh", true)), ("pods.yaml", pods)]).await;
    let mut tasks = Vec::new();
    for n in 0..50 {
        let mut s = cp.open(subscribe(&format!("node{n}"), &[])).await;
        tasks.push(tokio::spawn(async move {
            let mut got = std::collections::BTreeSet::new();
            let mut nonces = std::collections::BTreeSet::new();
            while got.len() < 2500 {
                let r = s.next().await;
                assert!(r.resources.len() <= CHUNK, "chunks of at most {CHUNK}");
                assert!(nonces.insert(r.nonce.clone()), "every chunk has its own nonce");
                got.extend(names(&r));
                s.ack(&r).await;
            }
            s.quiet().await;
            nonces.len()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("stream task"), 2500_usize.div_ceil(CHUNK));
    }
}

#[tokio::test]
async fn a_stream_must_say_which_node_and_ask_for_a_served_type() {
    let cp = Cp::start(&base()).await;
    let mut anonymous =
        cp.open(DeltaDiscoveryRequest { type_url: ADDRESS.into(), ..Default::default() }).await;
    let err =
        tokio::time::timeout(WAIT, anonymous.inbound.message()).await.expect("in time").expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("NODE_NAME"), "{}", err.message());

    let mut other = cp
        .open(DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..subscribe("node1", &[])
        })
        .await;
    let err =
        tokio::time::timeout(WAIT, other.inbound.message()).await.expect("in time").expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("is not served"), "{}", err.message());
}

fn rule(service: &str, max_connections: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {service}, namespace: mesh}}\n\
         spec: {{host: {service}, trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {max_connections}}}}}}}}}\n"
    )
}

#[tokio::test]
async fn a_destination_rule_change_re_sends_only_that_service_policy() {
    let mut files = base();
    files.push((
        "api.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: mesh}\n\
         spec: {clusterIP: 10.96.0.2, selector: {app: api}, ports: [{port: 80}]}\n"
            .into(),
    ));
    files.push(("web-rule.yaml", rule("web", 10)));
    files.push(("api-rule.yaml", rule("api", 10)));
    let cp = Cp::start(&files).await;
    let mut s =
        cp.open(DeltaDiscoveryRequest { type_url: SERVICE_POLICY.into(), ..subscribe("node1", &[]) }).await;
    let first = s.next().await;
    assert_eq!(first.type_url, SERVICE_POLICY);
    assert_eq!(names(&first), ["mesh/api.mesh.svc.cluster.local", WEB]);
    s.ack(&first).await;
    s.quiet().await;

    cp.write("web-rule.yaml", &rule("web", 20));
    let changed = s.next().await;
    assert_eq!(names(&changed), [WEB]);
    assert_ne!(versions(&changed)[WEB], versions(&first)[WEB]);
    s.ack(&changed).await;
    s.quiet().await;

    // The rule goes: so does the policy, by name.
    cp.remove("web-rule.yaml");
    let removed = s.next().await;
    assert_eq!(removed.removed_resources, [WEB]);
}

fn http_route(service: &str, path: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {service}, namespace: mesh}}\n\
         spec: {{parentRefs: [{{kind: Service, name: {service}}}], rules: [{{matches: [{{path: {{value: {path}}}}}], \
         backendRefs: [{{name: {service}, port: 80}}]}}]}}\n"
    )
}

#[tokio::test]
async fn an_http_route_change_re_sends_only_that_services_routes() {
    let mut files = base();
    files.push((
        "api.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: mesh}\n\
         spec: {clusterIP: 10.96.0.2, selector: {app: api}, ports: [{port: 80}]}\n"
            .into(),
    ));
    files.push(("web-route.yaml", http_route("web", "/a")));
    files.push(("api-route.yaml", http_route("api", "/a")));
    let cp = Cp::start(&files).await;
    let mut s =
        cp.open(DeltaDiscoveryRequest { type_url: HTTP_ROUTES.into(), ..subscribe("node1", &[]) }).await;
    let first = s.next().await;
    assert_eq!(first.type_url, HTTP_ROUTES);
    assert_eq!(names(&first), ["mesh/api.mesh.svc.cluster.local", WEB]);
    s.ack(&first).await;
    s.quiet().await;

    cp.write("web-route.yaml", &http_route("web", "/b"));
    let changed = s.next().await;
    assert_eq!(names(&changed), [WEB]);
    assert_ne!(versions(&changed)[WEB], versions(&first)[WEB]);
    s.ack(&changed).await;
    s.quiet().await;

    // The route goes: so do the service's routes, by name.
    cp.remove("web-route.yaml");
    let removed = s.next().await;
    assert_eq!(removed.removed_resources, [WEB]);
}
