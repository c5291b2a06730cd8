//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and every crashing input ever found
//! (`fuzz/regressions/<target>/`) through the same functions the fuzz targets run, so the
//! test suite keeps them fixed without cargo-fuzz. `cargo xtask fuzz` runs the fuzzers.
//!
//! The hand-made seeds (`seed-*`: valid examples of each input, for the fuzzers to start from)
//! are built here and must match the committed files; `UPDATE_SEEDS=1 cargo test -p nodemesh-agent
//! --test fuzz_corpus` rewrites them after a deliberate change.

use std::{fs, path::PathBuf};

use nodemesh_agent::fuzzing::TARGETS;
use nodemesh_proto::{
    envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource},
    istio::{security as sec, workload as wl},
    nodemesh::v1::{Snapshot, snapshot::TypeState},
    prost::Message as _,
    prost_types::Any,
    type_urls,
};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_corpus_and_every_crash_found_replay_cleanly() {
    for (target, run) in TARGETS {
        let corpus = inputs("corpus", target);
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty: the replay would prove nothing");
        for (path, bytes) in corpus.iter().chain(&inputs("regressions", target)) {
            let outcome = std::panic::catch_unwind(|| run(bytes));
            assert!(outcome.is_ok(), "{target}: {} makes the parser panic", path.display());
        }
    }
}

#[test]
fn the_committed_seeds_are_the_built_ones() {
    let seeds: Vec<(&str, &str, Vec<u8>)> = vec![
        ("enrollment", "docs-example", docs_example("enrollment.md").into_bytes()),
        (
            "enrollment",
            "two-pods",
            b"namespaces:\n  - {name: shop, labels: {nodemesh.io/intercept: enabled}}\npods:\n  - {uid: 0a1b, namespace: shop, name: cart-0, ips: [10.244.1.5, \"fd00::5\"], labels: {app: cart}}\n  - {uid: 0a1c, namespace: shop, name: cart-1, ips: [10.244.1.6], serviceAccount: cart, ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: cart-7d9f, controller: true}]}\n".to_vec(),
        ),
        (
            "agent_config",
            "full",
            b"node_name: n1\nbpffs_dir: /sys/fs/bpf/nodemesh\nenrollment_file: /etc/nodemesh/pods.yaml\nports: {outbound: 15001, inbound: 15006, hbone: 15008}\nexcluded_outbound_ports: [22]\nconnect_timeout: 5000\nsplice: true\nidle_timeout: 0\nlog: info\n".to_vec(),
        ),
        ("xds_address", "workload", workload().encode_to_vec()),
        ("xds_address", "service", service().encode_to_vec()),
        ("xds_authorization", "allow", authorization().encode_to_vec()),
        ("xds_service_policy", "full", service_policy().encode_to_vec()),
        ("xds_http_routes", "canary", http_routes().encode_to_vec()),
        ("xds_response", "sync", response().encode_to_vec()),
        ("snapshot", "state", nodemesh_agent::xds::snapshot::encode(&snapshot())),
        ("snapshot", "payload", [&[0xff][..], &snapshot().encode_to_vec()].concat()),
        ("flows_query", "top", b"namespace=shop&top=5&by=bytes".to_vec()),
        ("flows_query", "verdict", b"verdict=denied&state=closed&limit=10&pod=shop/cart-0".to_vec()),
    ];
    let update = std::env::var_os("UPDATE_SEEDS").is_some();
    for (target, name, bytes) in seeds {
        let dir = fuzz_dir().join("corpus").join(target);
        let path = dir.join(format!("seed-{name}"));
        if update {
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(&path, &bytes).expect("write");
        }
        let committed = fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} differs from the seed built here (UPDATE_SEEDS=1 rewrites it)",
            path.display()
        );
    }
}

fn docs_example(doc: &str) -> String {
    let text =
        fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs").join(doc)).expect("doc");
    text.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("a yaml block").to_owned()
}

fn workload() -> wl::Address {
    let w = wl::Workload {
        uid: "Kubernetes//Pod/shop/cart-0".into(),
        name: "cart-0".into(),
        namespace: "shop".into(),
        addresses: vec![vec![10, 244, 1, 5]],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        node: "node1".into(),
        service_account: "cart".into(),
        trust_domain: "cluster.local".into(),
        extensions: vec![wl::Extension {
            name: "nodemesh.io/pod-uid".into(),
            config: Some(Any {
                type_url: type_urls::STRING_VALUE.into(),
                value: "0a1b".to_owned().encode_to_vec(),
            }),
        }],
        ..Default::default()
    };
    wl::Address { r#type: Some(wl::address::Type::Workload(w)) }
}

fn service() -> wl::Address {
    let s = wl::Service {
        name: "cart".into(),
        namespace: "shop".into(),
        hostname: "cart.shop.svc.cluster.local".into(),
        addresses: vec![wl::NetworkAddress { address: vec![10, 96, 0, 10], ..Default::default() }],
        ports: vec![wl::Port { service_port: 80, target_port: 8080, ..Default::default() }],
        ..Default::default()
    };
    wl::Address { r#type: Some(wl::address::Type::Service(s)) }
}

fn authorization() -> sec::Authorization {
    let exact =
        |s: &str| sec::StringMatch { match_type: Some(sec::string_match::MatchType::Exact(s.into())) };
    sec::Authorization {
        name: "allow-web".into(),
        namespace: "shop".into(),
        scope: sec::Scope::Namespace as i32,
        action: sec::Action::Allow as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    namespaces: vec![exact("web")],
                    principals: vec![exact("cluster.local/ns/web/sa/frontend")],
                    destination_ports: vec![8080],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    }
}

fn any_resource(name: &str, type_url: &str, value: Vec<u8>) -> Resource {
    Resource {
        name: name.into(),
        version: "1".into(),
        resource: Some(Any { type_url: type_url.into(), value }),
        ..Default::default()
    }
}

fn response() -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_urls::ADDRESS.into(),
        system_version_info: "1".into(),
        resources: vec![
            any_resource("shop/cart-0", type_urls::ADDRESS, workload().encode_to_vec()),
            any_resource("shop/cart", type_urls::ADDRESS, service().encode_to_vec()),
        ],
        removed_resources: vec!["shop/gone".into()],
        nonce: "n1".into(),
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        types: vec![
            TypeState {
                type_url: type_urls::ADDRESS.into(),
                system_version_info: "1".into(),
                resources: response().resources,
            },
            TypeState {
                type_url: type_urls::AUTHORIZATION.into(),
                system_version_info: "1".into(),
                resources: vec![any_resource(
                    "shop/allow-web",
                    type_urls::AUTHORIZATION,
                    authorization().encode_to_vec(),
                )],
            },
        ],
        accepted_unix_seconds: 1_700_000_000,
        control_plane: "http://cp:15010".into(),
    }
}

/// The hand-made seeds are valid inputs, so the fuzzers start from the accepting paths.
#[test]
fn the_seeds_are_accepted() {
    let seed = |target: &str, name: &str| {
        fs::read(fuzz_dir().join("corpus").join(target).join(format!("seed-{name}"))).expect("seed")
    };
    for name in ["docs-example", "two-pods"] {
        let text = String::from_utf8(seed("enrollment", name)).expect("utf-8");
        nodemesh_agent::enroll::parse(&text).unwrap_or_else(|e| panic!("enrollment {name}: {e}"));
    }
    nodemesh_agent::config::Config::parse(
        &String::from_utf8(seed("agent_config", "full")).expect("utf-8"),
        "seed",
    )
    .expect("config");
    let snap = nodemesh_agent::xds::snapshot::decode(&seed("snapshot", "state")).expect("snapshot");
    nodemesh_agent::xds::state::State::from_snapshot(&snap).expect("its resources check");
    let response = DeltaDiscoveryResponse::decode(seed("xds_response", "sync").as_slice()).expect("response");
    nodemesh_agent::xds::state::State::check(&response).unwrap_or_else(|e| panic!("response: {e}"));
}

fn service_policy() -> nodemesh_proto::nodemesh::v1::ServicePolicy {
    use nodemesh_proto::nodemesh::v1 as nm;
    nm::ServicePolicy {
        namespace: "shop".into(),
        hostname: "cart.shop.svc.cluster.local".into(),
        algorithm: nm::service_policy::Algorithm::RoundRobin as i32,
        connect_timeout_ms: 2000,
        max_connections: 100,
        outlier_detection: Some(nm::OutlierDetection {
            consecutive_errors: 5,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
        }),
        rate_limits: vec![nm::RateLimit {
            principals: vec!["cluster.local/ns/shop/sa/web".into()],
            connections_per_second: 10,
            burst: 20,
            max_concurrent: 5,
        }],
        fallback: "shop/cart-static.shop.svc.cluster.local".into(),
        scale_from_zero: Some(nm::ScaleFromZero {
            autoscaler_url: "http://autoscaler.shop:9090/scale".into(),
            hold_timeout_ms: 30_000,
            max_held: 100,
        }),
    }
}

fn http_routes() -> nodemesh_proto::nodemesh::v1::HttpRoutes {
    use nodemesh_proto::nodemesh::v1 as nm;
    let backend = |service: &str, weight| nm::WeightedBackend {
        service: service.into(),
        port: 9080,
        weight,
        filters: Vec::new(),
    };
    nm::HttpRoutes {
        namespace: "shop".into(),
        hostname: "reviews.shop.svc.cluster.local".into(),
        entries: vec![
            nm::HttpRouteEntry {
                route: "shop/reviews".into(),
                rule: 0,
                r#match: 0,
                port: 9080,
                hostnames: Vec::new(),
                matches: Some(nm::HttpMatch {
                    path: Some(nm::PathMatch {
                        r#type: nm::path_match::Type::RegularExpression as i32,
                        value: "/v[0-9]+/.*".into(),
                    }),
                    headers: vec![nm::ValueMatch { r#type: 0, name: "x-canary".into(), value: "yes".into() }],
                    query_params: Vec::new(),
                    method: "GET".into(),
                }),
                action: Some(nm::HttpAction {
                    backends: vec![backend("shop/reviews-v2.shop.svc.cluster.local", 1)],
                    filters: vec![nm::HttpFilter {
                        kind: Some(nm::http_filter::Kind::RequestHeaderModifier(nm::HeaderModifier {
                            set: vec![nm::Header { name: "x-route".into(), value: "canary".into() }],
                            add: Vec::new(),
                            remove: vec!["x-debug".into()],
                        })),
                    }],
                    request_timeout_ms: 5_000,
                    backend_request_timeout_ms: 1_000,
                    retry: Some(nm::HttpRetry { codes: vec![503], attempts: 2, backoff_ms: 50 }),
                }),
            },
            nm::HttpRouteEntry {
                route: "shop/reviews".into(),
                rule: 1,
                r#match: 0,
                port: 9080,
                hostnames: Vec::new(),
                matches: None,
                action: Some(nm::HttpAction {
                    backends: vec![
                        backend("shop/reviews-v1.shop.svc.cluster.local", 90),
                        backend("shop/reviews-v2.shop.svc.cluster.local", 10),
                    ],
                    ..Default::default()
                }),
            },
        ],
    }
}
