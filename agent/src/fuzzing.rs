//! What the fuzz targets (`fuzz/fuzz_targets/`) run, one function per parser of outside input.
//! Every function must return for any input, quickly and without panicking; the checks
//! inside are the properties each parser promises. The test suite replays the committed
//! corpus and every crashing input ever found through the same functions
//! (`agent/tests/fuzz_corpus.rs`), so a fix stays fixed without cargo-fuzz.

use nodemesh_proto::{
    envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource},
    prost::Message as _,
    prost_types::Any,
    type_urls,
};

use crate::{
    admin::flows_query::FlowQuery,
    claims,
    config::Config,
    enroll,
    xds::{snapshot, state::State, translate},
};

/// A target: the name of its corpus directory, and what it runs on one input.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of the agent's (the control plane's own, `controlplane_yaml`, is in
/// `nodemesh_controlplane::fuzzing` and replayed by its tests).
pub const TARGETS: [Target; 9] = [
    ("enrollment", enrollment),
    ("agent_config", agent_config),
    ("xds_address", xds_address),
    ("xds_authorization", xds_authorization),
    ("xds_service_policy", xds_service_policy),
    ("xds_http_routes", xds_http_routes),
    ("xds_response", xds_response),
    ("snapshot", snapshot_file),
    ("flows_query", flows_query),
];

/// The enrollment file: a spec it accepts never names an address no pod can have, nor the
/// same address, UID or name twice.
pub fn enrollment(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The agent prechecks before it parses; both are fuzzed on every input.
    let _ = nodemesh_input_file::precheck(text, &enroll::LIMITS);
    let Ok(spec) = enroll::parse(text) else { return };
    let mut claims = claims::Claims::default();
    for pod in &spec.pods {
        let who = format!("{}/{}", pod.namespace, pod.name);
        let wanted = pod
            .ips
            .iter()
            .map(|ip| claims::Claim::Address(*ip))
            .chain([claims::Claim::PodUid(pod.uid.clone()), claims::Claim::PodName(who.clone())]);
        assert!(claims.claim_all(&who, wanted).is_ok(), "an accepted spec has a clash: {who}");
        assert!(pod.ips.iter().all(|ip| claims::not_a_pod_address(*ip).is_none()), "{who}: {:?}", pod.ips);
    }
}

/// The agent's own configuration file.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Config::parse(text, "fuzz.yaml");
}

fn resource(type_url: &str, data: &[u8]) -> Resource {
    Resource {
        name: "fuzz".into(),
        version: "1".into(),
        resource: Some(Any { type_url: type_url.into(), value: data.to_vec() }),
        ..Default::default()
    }
}

/// One `istio.workload.Address` body, as a control plane would send it.
pub fn xds_address(data: &[u8]) {
    if let Ok(translate::Address::Workload(w)) = translate::address(&resource(type_urls::ADDRESS, data)) {
        assert!(w.ips.iter().all(|ip| claims::not_a_pod_address(*ip).is_none()), "{:?}", w.ips);
    }
}

/// One `istio.security.Authorization` body.
pub fn xds_authorization(data: &[u8]) {
    let _ = translate::authorization(&resource(type_urls::AUTHORIZATION, data));
}

/// One `nodemesh.v1.ServicePolicy` body, under the name it claims (so that the fuzzer
/// reaches past the name check): an accepted one is never named for another service.
pub fn xds_service_policy(data: &[u8]) {
    use nodemesh_proto::{nodemesh::v1::ServicePolicy, prost::Message as _};
    let name =
        ServicePolicy::decode(data).map(|p| format!("{}/{}", p.namespace, p.hostname)).unwrap_or_default();
    let resource = Resource { name: name.clone(), ..resource(type_urls::SERVICE_POLICY, data) };
    if let Ok((service, policy)) = translate::service_policy(&resource) {
        assert_eq!(service, name);
        assert!(policy.rate_limits.iter().all(|l| l.connections_per_second > 0 || l.max_concurrent > 0));
    }
}

/// One `nodemesh.v1.HttpRoutes` body, under the name it claims: an accepted one has every
/// regular expression compiled, so a request never meets an invalid one.
pub fn xds_http_routes(data: &[u8]) {
    use nodemesh_proto::{nodemesh::v1::HttpRoutes, prost::Message as _};
    let name =
        HttpRoutes::decode(data).map(|r| format!("{}/{}", r.namespace, r.hostname)).unwrap_or_default();
    let resource = Resource { name: name.clone(), ..resource(type_urls::HTTP_ROUTES, data) };
    if let Ok((service, routes)) = translate::http_routes(&resource) {
        assert_eq!(service, name);
        assert!(routes.entries.iter().all(|e| e.action.backends.iter().all(|b| b.weight <= 1_000_000)));
    }
}

/// A whole delta response, applied to a state that already holds it once (updates and
/// clashes with itself), then turned into the node's spec.
pub fn xds_response(data: &[u8]) {
    let Ok(response) = DeltaDiscoveryResponse::decode(data) else { return };
    let mut state = State::default();
    for _ in 0..2 {
        let Ok(checked) = State::check(&response) else { return };
        state.apply(checked);
    }
    let spec = state.node_spec("node1");
    let _ = state.counts("node1");
    let mut seen = std::collections::HashSet::new();
    for ip in spec.pods.iter().flat_map(|p| &p.ips) {
        assert!(seen.insert(claims::canonical(*ip)), "two pods of one spec share {ip}");
    }
}

/// The snapshot file, and the state it rebuilds. Inputs starting with 0xff are taken as a
/// payload and wrapped in a valid envelope first: the checksum would otherwise keep almost
/// every mutation away from the protobuf decoder and the state rebuilt from it.
pub fn snapshot_file(data: &[u8]) {
    let wrapped;
    let data = match data.split_first() {
        Some((0xff, payload)) => {
            wrapped = snapshot::envelope(payload);
            &wrapped[..]
        }
        _ => data,
    };
    if let Ok(snap) = snapshot::decode(data) {
        let _ = State::from_snapshot(&snap);
        assert_eq!(snapshot::decode(&snapshot::encode(&snap)).ok(), Some(snap), "a snapshot round-trips");
    }
}

/// `/flows` query strings.
pub fn flows_query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(query) = serde_urlencoded::from_str::<FlowQuery>(text) {
        let _ = query.apply(Vec::new());
    }
}
