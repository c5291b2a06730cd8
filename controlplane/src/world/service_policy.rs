//! Each Service's `nodemesh.v1.ServicePolicy`: its DestinationRule's settings (algorithm,
//! connection pool, outlier detection, with Istio's defaults) and its TrafficPolicy's (rate
//! limits, fallback, scale from zero), in one resource named like the service's Address
//! resource. A service gets one only when a rule or policy for it changes something: one
//! that only restates the defaults is no resource, as no rule is.

use std::collections::{BTreeMap, HashMap};

use nodemesh_proto::{
    nodemesh::v1::{self as nm, service_policy::Algorithm},
    prost::Message as _,
    prost_types::Any,
    type_urls,
};

use super::MeshSettings;
use crate::{
    model::{
        DestinationRule, Service, TrafficPolicy,
        destination_rule::{OutlierDetection, SimpleLb},
        service_fqdn,
        traffic_policy::{DEFAULT_HOLD_TIMEOUT, DEFAULT_MAX_HELD},
    },
    store::Inputs,
};

/// Istio's defaults for a field of `outlierDetection` left out (Envoy's, which Istio keeps).
const DEFAULT_CONSECUTIVE_ERRORS: u32 = 5;
const DEFAULT_INTERVAL_MS: u32 = 10_000;
const DEFAULT_BASE_EJECTION_MS: u32 = 30_000;
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// The rule and the policy for one service.
#[derive(Default)]
struct Found<'a> {
    rule: Option<&'a DestinationRule>,
    policy: Option<&'a TrafficPolicy>,
}

/// Every service's policy, as (resource name, body), by name. Of two rules (or policies) for
/// one service the first in `inputs` is used; the store has refused the second already.
pub fn build(inputs: &Inputs, mesh: &MeshSettings) -> BTreeMap<String, Any> {
    let services: HashMap<String, &Service> = inputs
        .services
        .iter()
        .map(|svc| {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            (service_fqdn(&svc.metadata.name, ns, &mesh.domain_suffix), &**svc)
        })
        .collect();
    // A rule or policy naming no known service has no effect until that service exists.
    let mut by_service: BTreeMap<String, Found> = BTreeMap::new();
    for rule in &inputs.destination_rules {
        let host = rule.service_hostname(&mesh.domain_suffix);
        if services.contains_key(&host) {
            by_service.entry(host).or_default().rule.get_or_insert(rule);
        }
    }
    for policy in &inputs.traffic_policies {
        let host = policy.service_hostname(&mesh.domain_suffix);
        if services.contains_key(&host) {
            by_service.entry(host).or_default().policy.get_or_insert(policy);
        }
    }
    by_service
        .into_iter()
        .filter_map(|(hostname, found)| {
            let namespace = services[&hostname].metadata.namespace.clone().unwrap_or_default();
            let bare = nm::ServicePolicy { namespace, hostname, ..Default::default() };
            let mut policy = bare.clone();
            if let Some(rule) = found.rule {
                apply_rule(&mut policy, rule);
            }
            if let Some(tp) = found.policy {
                apply_traffic_policy(&mut policy, tp, mesh);
            }
            (policy != bare).then(|| {
                let name = format!("{}/{}", policy.namespace, policy.hostname);
                (name, Any { type_url: type_urls::SERVICE_POLICY.into(), value: policy.encode_to_vec() })
            })
        })
        .collect()
}

fn apply_rule(out: &mut nm::ServicePolicy, rule: &DestinationRule) {
    let Some(policy) = &rule.spec.traffic_policy else { return };
    out.algorithm = match policy.load_balancer.as_ref().and_then(|lb| lb.simple) {
        Some(SimpleLb::RoundRobin) => Algorithm::RoundRobin,
        Some(SimpleLb::Random) => Algorithm::Random,
        // The agent's least-connections choice is what Istio's default and LEAST_REQUEST
        // ask for; PASSTHROUGH never gets this far (validation refuses it).
        Some(
            SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified | SimpleLb::Passthrough,
        )
        | None => Algorithm::P2cEwma,
    } as i32;
    if let Some(tcp) = policy.connection_pool.as_ref().and_then(|p| p.tcp.as_ref()) {
        out.connect_timeout_ms = tcp.connect_timeout.map_or(0, |d| d.millis());
        out.max_connections = tcp.max_connections.and_then(|m| u32::try_from(m).ok()).unwrap_or(0);
    }
    out.outlier_detection = policy.outlier_detection.as_ref().and_then(outlier_detection);
}

/// None when nothing would ever be ejected.
fn outlier_detection(od: &OutlierDetection) -> Option<nm::OutlierDetection> {
    // At L4 every failure is a connect failure. Envoy counts those as local-origin when
    // told to split them, else as both 5xx and gateway errors, with a detector for each
    // (a count of 0 turns one off; Istio sets the split threshold only when above 0): the
    // lower live count ejects first.
    let consecutive_errors = if od.split_external_local_origin_errors {
        od.consecutive_local_origin_failures.filter(|n| *n > 0).unwrap_or(DEFAULT_CONSECUTIVE_ERRORS)
    } else {
        let five_xx = od.consecutive_5xx_errors.unwrap_or(DEFAULT_CONSECUTIVE_ERRORS);
        let gateway = od.consecutive_gateway_errors.unwrap_or(0);
        [five_xx, gateway].into_iter().filter(|n| *n > 0).min().unwrap_or(0)
    };
    let max_ejection_percent =
        od.max_ejection_percent.and_then(|p| u32::try_from(p).ok()).unwrap_or(DEFAULT_MAX_EJECTION_PERCENT);
    // Ejecting at no count, or at most none of the endpoints, is no ejection.
    (consecutive_errors > 0 && max_ejection_percent > 0).then(|| nm::OutlierDetection {
        consecutive_errors,
        interval_ms: od.interval.map_or(DEFAULT_INTERVAL_MS, |d| d.millis()),
        base_ejection_time_ms: od.base_ejection_time.map_or(DEFAULT_BASE_EJECTION_MS, |d| d.millis()),
        max_ejection_percent,
    })
}

fn apply_traffic_policy(out: &mut nm::ServicePolicy, tp: &TrafficPolicy, mesh: &MeshSettings) {
    let count = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    out.rate_limits = tp
        .spec
        .rate_limits
        .iter()
        .map(|limit| nm::RateLimit {
            principals: limit.principals.clone(),
            connections_per_second: count(limit.connections_per_second),
            burst: count(limit.burst.or(limit.connections_per_second)),
            max_concurrent: count(limit.max_concurrent),
        })
        .collect();
    // Named whether or not that service exists yet: it may come later.
    if let Some((ns, name)) = tp.fallback() {
        out.fallback = format!("{ns}/{}", service_fqdn(name, ns, &mesh.domain_suffix));
    }
    out.scale_from_zero = tp.spec.scale_from_zero.as_ref().map(|s| nm::ScaleFromZero {
        autoscaler_url: s.autoscaler_url.clone(),
        hold_timeout_ms: s.hold_timeout.unwrap_or(DEFAULT_HOLD_TIMEOUT).millis(),
        max_held: s.max_held.and_then(|m| u32::try_from(m).ok()).unwrap_or(DEFAULT_MAX_HELD),
    });
}

#[cfg(test)]
mod tests;
