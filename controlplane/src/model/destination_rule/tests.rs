//! Reading DestinationRules: what is served, how hosts resolve, what is refused and where.

use crate::model::{Object, parse_document};

use super::*;

fn parse(spec: &str) -> Result<DestinationRule, FieldError> {
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: cart, namespace: shop}}\nspec:\n{spec}"
    );
    match parse_document(serde_yaml::from_str(&text).expect("yaml"))? {
        Some(Object::DestinationRule(rule)) => Ok((*rule).clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reads_what_a_node_proxy_applies() {
    let rule = parse(
        "  host: cart\n  exportTo: [\".\"]\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n\
         \x20   connectionPool:\n      tcp: {maxConnections: 100, connectTimeout: 1.5s, tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}}\n\
         \x20   outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 50, minHealthPercent: 0}\n",
    )
    .expect("valid");
    let policy = rule.spec.traffic_policy.as_ref().expect("policy");
    assert_eq!(policy.load_balancer.as_ref().and_then(|lb| lb.simple), Some(SimpleLb::RoundRobin));
    let tcp = policy.connection_pool.as_ref().and_then(|p| p.tcp.as_ref()).expect("tcp");
    assert_eq!((tcp.max_connections, tcp.connect_timeout), (Some(100), Some(Duration::from_millis(1500))));
    let od = policy.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(od.consecutive_5xx_errors, Some(3));
    assert_eq!(od.base_ejection_time, Some(Duration::from_millis(60_000)));
    for version in ["v1beta1", "v1alpha3"] {
        let text = format!(
            "apiVersion: networking.istio.io/{version}\nkind: DestinationRule\nmetadata: {{name: a}}\nspec: {{host: a}}\n"
        );
        assert!(parse_document(serde_yaml::from_str(&text).expect("yaml")).is_ok(), "{version}");
    }
}

#[test]
fn host_forms_resolve_to_the_service() {
    let hostname = |host: &str| {
        let mut rule = parse("  host: x\n").expect("valid");
        rule.spec.host = host.into();
        rule.service_hostname("cluster.local")
    };
    for host in ["cart", "cart.shop", "cart.shop.svc", "cart.shop.svc.cluster.local"] {
        assert_eq!(hostname(host), "cart.shop.svc.cluster.local", "{host}");
    }
    assert_eq!(hostname("cart.web"), "cart.web.svc.cluster.local", "another namespace");
    assert_eq!(hostname("cart.shop.svc.other.suffix"), "cart.shop.svc.other.suffix", "as written");
    assert_eq!(hostname("example.com.org"), "example.com.org");
}

#[test]
fn what_is_refused_is_named() {
    for (spec, field, says) in [
        ("  trafficPolicy: {}\n", "spec.host", "required"),
        ("  host: \"*.shop.svc.cluster.local\"\n", "spec.host", "wildcard"),
        ("  host: Cart\n", "spec.host", ""),
        ("  host: cart\n  subsets: [{name: v1, labels: {version: v1}}]\n", "spec.subsets", "L4"),
        ("  host: cart\n  workloadSelector: {matchLabels: {app: web}}\n", "spec.workloadSelector", "L4"),
        ("  host: cart\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n", "spec.trafficPolicy.tls", "L4"),
        (
            "  host: cart\n  trafficPolicy: {portLevelSettings: []}\n",
            "spec.trafficPolicy.portLevelSettings",
            "L4",
        ),
        (
            "  host: cart\n  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}\n",
            "spec.trafficPolicy.loadBalancer.simple",
            "L4",
        ),
        (
            "  host: cart\n  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n",
            "spec.trafficPolicy.loadBalancer.simple",
            "unknown variant",
        ),
        (
            "  host: cart\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}\n",
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "L4",
        ),
        (
            "  host: cart\n  trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: true}}}\n",
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
            "trafficDistribution",
        ),
        (
            "  host: cart\n  trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: 1}}}\n",
            "spec.trafficPolicy.connectionPool.http",
            "L4",
        ),
        (
            "  host: cart\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 0}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "at least 1",
        ),
        (
            "  host: cart\n  trafficPolicy: {connectionPool: {tcp: {connectTimeout: 0s}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "longer than 0",
        ),
        (
            "  host: cart\n  trafficPolicy: {connectionPool: {tcp: {connectTimeout: 10}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "no unit",
        ),
        (
            "  host: cart\n  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 1h}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.idleTimeout",
            "L4",
        ),
        (
            "  host: cart\n  trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}\n",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "0-100",
        ),
        (
            "  host: cart\n  trafficPolicy: {outlierDetection: {interval: 0ms}}\n",
            "spec.trafficPolicy.outlierDetection.interval",
            "longer than 0",
        ),
        (
            "  host: cart\n  trafficPolicy: {outlierDetection: {minHealthPercent: 50}}\n",
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
            "panic threshold",
        ),
    ] {
        let e = parse(spec).expect_err(spec);
        assert_eq!(e.field, field, "{spec}: {e}");
        assert!(e.message.contains(says), "{spec}: {e}");
    }
}

#[test]
fn a_misspelt_field_is_refused() {
    let e = parse("  host: cart\n  trafficPolicy: {outlierDetection: {consecutiveErrorz: 1}}\n")
        .expect_err("typo");
    assert_eq!(e.field, "spec.trafficPolicy.outlierDetection.consecutiveErrorz", "{e}");
}
