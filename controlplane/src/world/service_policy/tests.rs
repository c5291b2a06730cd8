//! What each field of a DestinationRule and a TrafficPolicy becomes in a ServicePolicy.

use nodemesh_proto::prost::Message as _;

use super::*;
use crate::world::tests::inputs_from;

const CART: &str = "shop/cart.shop.svc.cluster.local";
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\n\
                       spec: {clusterIP: 10.96.0.9, selector: {app: cart}, ports: [{port: 80}]}\n---\n";

fn rule(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: cart, namespace: shop}}\nspec: {spec}\n---\n"
    )
}

fn traffic_policy(spec: &str) -> String {
    format!(
        "apiVersion: nodemesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: cart, namespace: shop}}\n\
         spec: {{targetRef: {{kind: Service, name: cart}}, {spec}}}\n---\n"
    )
}

fn built(yaml: &str) -> BTreeMap<String, nm::ServicePolicy> {
    build(&inputs_from(yaml), &MeshSettings::default())
        .into_iter()
        .map(|(name, any)| {
            assert_eq!(any.type_url, type_urls::SERVICE_POLICY);
            (name, nm::ServicePolicy::decode(any.value.as_slice()).expect("decode"))
        })
        .collect()
}

fn cart(yaml: &str) -> nm::ServicePolicy {
    let mut all = built(yaml);
    assert_eq!(all.keys().collect::<Vec<_>>(), [CART], "{yaml}");
    all.remove(CART).expect("cart")
}

#[test]
fn a_destination_rule_fills_algorithm_pool_and_outlier_detection() {
    let policy = cart(&format!(
        "{SERVICE}{}",
        rule(
            "{host: cart.shop.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: RANDOM}, \
             connectionPool: {tcp: {maxConnections: 100, connectTimeout: 250ms}}, \
             outlierDetection: {consecutiveGatewayErrors: 3, interval: 1s, baseEjectionTime: 2m, maxEjectionPercent: 40}}}"
        )
    ));
    let want = nm::ServicePolicy {
        namespace: "shop".into(),
        hostname: "cart.shop.svc.cluster.local".into(),
        algorithm: Algorithm::Random as i32,
        connect_timeout_ms: 250,
        max_connections: 100,
        outlier_detection: Some(nm::OutlierDetection {
            consecutive_errors: 3,
            interval_ms: 1_000,
            base_ejection_time_ms: 120_000,
            max_ejection_percent: 40,
        }),
        ..Default::default()
    };
    assert_eq!(policy, want);
}

#[test]
fn outlier_detection_takes_istios_defaults() {
    let od = |fields: &str| {
        cart(&format!("{SERVICE}{}", rule(&format!(
        "{{host: cart, trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}, outlierDetection: {{{fields}}}}}}}"
    ))))
    .outlier_detection
    };
    let defaults = nm::OutlierDetection {
        consecutive_errors: 5,
        interval_ms: 10_000,
        base_ejection_time_ms: 30_000,
        max_ejection_percent: 10,
    };
    assert_eq!(od(""), Some(defaults));
    let errors = |n| Some(nm::OutlierDetection { consecutive_errors: n, ..defaults });
    // Both counts see every connect failure: the lower live one ejects first.
    assert_eq!(od("consecutive5xxErrors: 7"), errors(7));
    assert_eq!(od("consecutiveGatewayErrors: 2"), errors(2));
    assert_eq!(od("consecutiveGatewayErrors: 9"), errors(5), "the 5xx count's default is lower");
    assert_eq!(od("consecutiveGatewayErrors: 9, consecutive5xxErrors: 0"), errors(9));
    assert_eq!(od("consecutive5xxErrors: 0"), None, "no live count: no ejection");
    assert_eq!(od("maxEjectionPercent: 0"), None, "at most none ejected: no ejection");
    // Split: the local-origin count alone (5 unless above 0, as Istio sets it).
    assert_eq!(od("splitExternalLocalOriginErrors: true, consecutiveGatewayErrors: 1"), errors(5));
    assert_eq!(od("splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 3"), errors(3));
    assert_eq!(od("consecutiveLocalOriginFailures: 3"), errors(5), "not split: not counted");
}

#[test]
fn a_traffic_policy_fills_limits_fallback_and_scale_from_zero() {
    let policy = cart(&format!(
        "{SERVICE}{}",
        traffic_policy(
            "rateLimits: [{principals: [\"cluster.local/ns/shop/sa/web\"], connectionsPerSecond: 10, maxConcurrent: 5}, \
             {principals: [\"*\"], connectionsPerSecond: 1, burst: 3}, {maxConcurrent: 50}], \
             fallback: {service: cart-static}, scaleFromZero: {autoscalerURL: \"http://10.0.0.1:9090/scale\"}"
        )
    ));
    let limit = |principals: &[&str], cps, burst, max| nm::RateLimit {
        principals: principals.iter().map(|p| (*p).to_owned()).collect(),
        connections_per_second: cps,
        burst,
        max_concurrent: max,
    };
    assert_eq!(
        policy.rate_limits,
        [limit(&["cluster.local/ns/shop/sa/web"], 10, 10, 5), limit(&["*"], 1, 3, 0), limit(&[], 0, 0, 50)]
    );
    assert_eq!(policy.fallback, "shop/cart-static.shop.svc.cluster.local", "named though it does not exist");
    assert_eq!(
        policy.scale_from_zero,
        Some(nm::ScaleFromZero {
            autoscaler_url: "http://10.0.0.1:9090/scale".into(),
            hold_timeout_ms: 30_000,
            max_held: 100,
        })
    );
    assert_eq!(policy.algorithm, Algorithm::P2cEwma as i32);
    let elsewhere = cart(&format!("{SERVICE}{}", traffic_policy("fallback: {service: static.web}")));
    assert_eq!(elsewhere.fallback, "web/static.web.svc.cluster.local");
}

#[test]
fn rule_and_policy_together_make_one_resource() {
    let policy = cart(&format!(
        "{SERVICE}{}{}",
        rule("{host: cart.shop, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}"),
        traffic_policy("rateLimits: [{maxConcurrent: 1}]")
    ));
    assert_eq!(policy.algorithm, Algorithm::RoundRobin as i32);
    assert_eq!(policy.rate_limits.len(), 1);
}

#[test]
fn no_effect_no_resource() {
    for (yaml, why) in [
        (rule("{host: cart}"), "no trafficPolicy"),
        (
            rule("{host: cart, exportTo: [\".\"], trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}"),
            "the default algorithm",
        ),
        (
            rule("{host: cart, trafficPolicy: {connectionPool: {tcp: {tcpKeepalive: {time: 10s}}}}}"),
            "keepalive is ignored",
        ),
        (
            rule("{host: cart, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 0}}}"),
            "nothing ejected",
        ),
        (traffic_policy("rateLimits: []"), "a policy that limits nothing"),
        (rule("{host: other, trafficPolicy: {loadBalancer: {simple: RANDOM}}}"), "a host naming no service"),
        (
            rule("{host: cart.shop.svc.example.org, trafficPolicy: {loadBalancer: {simple: RANDOM}}}"),
            "another domain",
        ),
    ] {
        assert!(built(&format!("{SERVICE}{yaml}")).is_empty(), "{why}");
    }
    // A rule whose service comes later takes effect then.
    let early = rule("{host: cart, trafficPolicy: {loadBalancer: {simple: RANDOM}}}");
    assert!(built(&early).is_empty());
    assert_eq!(cart(&format!("{early}{SERVICE}")).algorithm, Algorithm::Random as i32);
}

#[test]
fn a_rule_from_another_namespace_reaches_the_service_by_its_name() {
    let other = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x, namespace: web}\n\
                 spec: {host: cart.shop.svc, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n";
    assert_eq!(cart(&format!("{SERVICE}{other}")).algorithm, Algorithm::Random as i32);
    // Short, it would mean a cart in web.
    let short = other.replace("host: cart.shop.svc", "host: cart");
    assert!(built(&format!("{SERVICE}{short}")).is_empty());
}
