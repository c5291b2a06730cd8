use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

use super::*;
use crate::services::{
    ServicePort,
    http::{AppProtocol, HttpRoutes, RequestMatch, Rewrite, Value, ValueMatch},
    tests::named,
};

fn backend(name: &str, weight: u32) -> Backend {
    Backend {
        service: format!("shop/{name}.shop.svc.cluster.local").into(),
        port: 80,
        weight,
        filters: Vec::new(),
    }
}

fn entry(index: u32, matches: RequestMatch, action: RouteAction) -> RouteEntry {
    RouteEntry {
        route: "shop/reviews".into(),
        rule: index,
        index: 0,
        port: 0,
        hostnames: Vec::new(),
        matches,
        action: Arc::new(action),
    }
}

fn service(entries: Vec<RouteEntry>) -> ServiceInfo {
    let mut s = named("shop/reviews.shop.svc.cluster.local", "10.96.0.1");
    s.ports = vec![
        ServicePort { port: 80, target: 8080, protocol: AppProtocol::Http1 },
        ServicePort { port: 81, target: 8080, protocol: AppProtocol::Http1 },
    ];
    s.http_routes = Some(Arc::new(HttpRoutes { entries }));
    s
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::get(uri).header("host", "reviews.shop:80");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request").into_parts().0
}

fn forwarded(d: Decision) -> Plan {
    match d {
        Decision::Forward(plan) => plan,
        other => panic!("not forwarded: {other:?}"),
    }
}

#[test]
fn the_weighted_choice_follows_the_weights_and_skips_zero() {
    let b = [backend("v1", 90), backend("v2", 10), backend("off", 0)];
    let picks: Vec<&str> = (0..100).map(|d| &*choose_backend(&b, d).expect("one").service).collect();
    assert_eq!(picks.iter().filter(|s| s.contains("v1")).count(), 90);
    assert_eq!(picks.iter().filter(|s| s.contains("v2")).count(), 10);
    assert!(choose_backend(&[backend("off", 0)], 7).is_none(), "every weight zero: no backend");
}

#[test]
fn a_header_match_wins_and_an_unmatched_request_is_404_when_routes_are_attached() {
    let header = RequestMatch {
        headers: vec![ValueMatch { name: "x-canary".into(), value: Value::Exact("yes".into()) }],
        path: PathMatch::Prefix("/api".into()),
        ..Default::default()
    };
    let s = service(vec![entry(
        0,
        header,
        RouteAction { backends: vec![backend("v2", 1)], ..Default::default() },
    )]);
    let plan = forwarded(decide(&s, 80, &mut parts("/api/x", &[("x-canary", "yes")]), 0));
    assert_eq!(&*plan.service, "shop/v2.shop.svc.cluster.local");
    assert_eq!(plan.route.as_deref(), Some("shop/reviews"));
    assert!(matches!(decide(&s, 80, &mut parts("/api/x", &[]), 0), Decision::NoRoute));
    // Without routes the service itself takes every request.
    let plain = named("shop/plain.shop.svc.cluster.local", "10.96.0.2");
    assert_eq!(&*forwarded(decide(&plain, 80, &mut parts("/", &[]), 0)).service, &*plain.name);
}

#[test]
fn filters_modify_headers_rewrite_the_prefix_and_redirect() {
    let set = |name: &str, value: &str| {
        (HeaderName::from_bytes(name.as_bytes()).expect("name"), HeaderValue::from_str(value).expect("value"))
    };
    let action = RouteAction {
        backends: vec![backend("v1", 1)],
        filters: vec![
            Filter::RequestHeaders(HeaderModifier {
                set: vec![set("x-set", "1")],
                add: vec![set("x-add", "2")],
                remove: vec![HeaderName::from_static("x-drop")],
            }),
            Filter::Rewrite(Rewrite {
                hostname: Some("v1.internal".into()),
                path: Some(PathModifier::Prefix("/v1".into())),
            }),
            Filter::ResponseHeaders(HeaderModifier { set: vec![set("x-route", "r")], ..Default::default() }),
        ],
        ..Default::default()
    };
    let m = RequestMatch { path: PathMatch::Prefix("/api".into()), ..Default::default() };
    let s = service(vec![entry(0, m, action)]);
    let mut p = parts("/api/items?q=1", &[("x-drop", "x"), ("x-add", "1")]);
    let plan = forwarded(decide(&s, 80, &mut p, 0));
    assert_eq!(p.uri.to_string(), "/v1/items?q=1");
    assert_eq!(p.headers["host"], "v1.internal");
    assert_eq!(p.headers["x-set"], "1");
    assert_eq!(p.headers.get_all("x-add").iter().count(), 2);
    assert!(p.headers.get("x-drop").is_none());
    assert_eq!(plan.response_headers.len(), 1);

    let redirect = RouteAction {
        filters: vec![Filter::Redirect(Redirect {
            scheme: Some("https".into()),
            hostname: None,
            path: Some(PathModifier::Full("/new".into())),
            port: None,
            status: 301,
        })],
        ..Default::default()
    };
    let s =
        service(vec![entry(0, RequestMatch { method: Some(Method::GET), ..Default::default() }, redirect)]);
    match decide(&s, 80, &mut parts("/old?x=1", &[]), 0) {
        Decision::Redirect { status, location } => {
            assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
            assert_eq!(location, "https://reviews.shop/new?x=1", "a new scheme drops the old port");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_prefix_replaced_by_slash_keeps_one_slash() {
    let m = PathMatch::Prefix("/ratings".into());
    assert_eq!(rewrite_path("/ratings/stars", &PathModifier::Prefix("/".into()), &m), "/stars");
    assert_eq!(rewrite_path("/ratings", &PathModifier::Prefix("/".into()), &m), "/");
    assert_eq!(rewrite_path("/ratings/a", &PathModifier::Prefix("/r2/".into()), &m), "/r2/a");
    assert_eq!(strip_port("[fd00::1]:80"), "fd00::1");
    assert_eq!(strip_port("cart:8080"), "cart");
}

#[test]
fn a_rule_with_only_zero_weights_is_no_backend() {
    let s = service(vec![entry(
        0,
        RequestMatch::default(),
        RouteAction { backends: vec![backend("v1", 0)], ..Default::default() },
    )]);
    assert!(matches!(decide(&s, 81, &mut parts("/", &[]), 3), Decision::NoBackend));
}
