//! What HTTPRoutes become: attachment, flattening, precedence and every field's encoding.

use std::sync::Arc;

use nodemesh_proto::prost::Message as _;

use super::*;
use crate::world::{Audience, World, tests::inputs_from};

const CART: &str = "shop/cart.shop.svc.cluster.local";

fn service(name: &str, ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{clusterIP: 10.96.0.{}, ports: [{{port: 80}}]}}\n---\n",
        name.len() + ns.len()
    )
}

fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}---\n"
    )
}

fn built(yaml: &str) -> BTreeMap<String, nm::HttpRoutes> {
    build(&inputs_from(yaml), &MeshSettings::default())
        .into_iter()
        .map(|(name, any)| {
            assert_eq!(any.type_url, type_urls::HTTP_ROUTES);
            (name, nm::HttpRoutes::decode(any.value.as_slice()).expect("decode"))
        })
        .collect()
}

/// (route, rule, match) of each entry, in order.
fn order(routes: &nm::HttpRoutes) -> Vec<(String, u32, u32)> {
    routes.entries.iter().map(|e| (e.route.clone(), e.rule, e.r#match)).collect()
}

#[test]
fn every_field_is_encoded() {
    let spec = "  parentRefs: [{kind: Service, name: cart, port: 80}]\n  hostnames: [cart.example.com]\n  rules:\n\
                \x20 - matches: [{path: {type: Exact, value: /checkout}, method: POST, headers: [{name: x-canary, value: \"yes\"}], \
                queryParams: [{type: RegularExpression, name: id, value: \"[0-9]+\"}]}]\n\
                \x20   filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}], add: [{name: x-c, value: d}], remove: [x-e]}}]\n\
                \x20   backendRefs:\n    - {name: cart-v1, port: 8080, weight: 90}\n\
                \x20   - {name: gone, namespace: other, port: 81, filters: [{type: URLRewrite, urlRewrite: {hostname: v2, path: {type: ReplaceFullPath, replaceFullPath: /v2}}}]}\n\
                \x20   timeouts: {request: 10s, backendRequest: 500ms}\n    retry: {codes: [503], attempts: 3, backoff: 100ms}\n\
                \x20 - filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 443, path: {type: ReplaceFullPath, replaceFullPath: /new}}}]\n";
    let all = built(&format!("{}{}", service("cart", "shop"), route("cart", spec)));
    let routes = &all[CART];
    assert_eq!(
        (routes.namespace.as_str(), routes.hostname.as_str()),
        ("shop", "cart.shop.svc.cluster.local")
    );
    let want = nm::HttpRouteEntry {
        route: "shop/cart".into(),
        rule: 0,
        r#match: 0,
        port: 80,
        hostnames: vec!["cart.example.com".into()],
        matches: Some(nm::HttpMatch {
            path: Some(nm::PathMatch {
                r#type: nm::path_match::Type::Exact as i32,
                value: "/checkout".into(),
            }),
            headers: vec![nm::ValueMatch { r#type: 0, name: "x-canary".into(), value: "yes".into() }],
            query_params: vec![nm::ValueMatch {
                r#type: nm::value_match::Type::RegularExpression as i32,
                name: "id".into(),
                value: "[0-9]+".into(),
            }],
            method: "POST".into(),
        }),
        action: Some(nm::HttpAction {
            backends: vec![
                nm::WeightedBackend {
                    service: "shop/cart-v1.shop.svc.cluster.local".into(),
                    port: 8080,
                    weight: 90,
                    filters: vec![],
                },
                // No such Service: still sent, so the agent answers 500 for its share.
                nm::WeightedBackend {
                    service: "other/gone.other.svc.cluster.local".into(),
                    port: 81,
                    weight: 1,
                    filters: vec![nm::HttpFilter {
                        kind: Some(nm::http_filter::Kind::UrlRewrite(nm::UrlRewrite {
                            hostname: "v2".into(),
                            path: Some(nm::PathModifier {
                                r#type: nm::path_modifier::Type::ReplaceFullPath as i32,
                                value: "/v2".into(),
                            }),
                        })),
                    }],
                },
            ],
            filters: vec![nm::HttpFilter {
                kind: Some(nm::http_filter::Kind::RequestHeaderModifier(nm::HeaderModifier {
                    set: vec![nm::Header { name: "x-a".into(), value: "b".into() }],
                    add: vec![nm::Header { name: "x-c".into(), value: "d".into() }],
                    remove: vec!["x-e".into()],
                })),
            }],
            request_timeout_ms: 10_000,
            backend_request_timeout_ms: 500,
            retry: Some(nm::HttpRetry { codes: vec![503], attempts: 3, backoff_ms: 100 }),
        }),
    };
    assert_eq!(routes.entries[0], want);
    // A rule without matches is one match of every path, after the exact one.
    let second = &routes.entries[1];
    assert_eq!((second.rule, second.r#match), (1, 0));
    assert_eq!(second.matches, Some(nm::HttpMatch::default()));
    let action = second.action.as_ref().expect("action");
    assert!(action.backends.is_empty(), "no backends: the agent answers 500 (or here, redirects)");
    let Some(nm::http_filter::Kind::RequestRedirect(redirect)) = &action.filters[0].kind else {
        panic!("{action:?}")
    };
    assert_eq!((redirect.scheme.as_str(), redirect.port, redirect.status_code), ("https", 443, 302));
}

#[test]
fn entries_follow_gateway_api_precedence() {
    let matches = [
        "{path: {value: /a}}",                                 // 0: short prefix
        "{path: {type: RegularExpression, value: \"/.*\"}}",   // 1: regex
        "{path: {value: /a/b}}",                               // 2: longer prefix
        "{path: {type: Exact, value: /a}}",                    // 3: exact
        "{path: {value: /a}, method: GET}",                    // 4: short prefix, method
        "{path: {value: /a}, headers: [{name: x, value: y}]}", // 5: short prefix, a header
        "{path: {value: /a}, headers: [{name: x, value: y}, {name: z, value: y}]}", // 6: two headers
        "{path: {value: /a}, queryParams: [{name: q, value: y}]}", // 7: a query parameter
    ];
    let spec = format!(
        "  parentRefs: [{{kind: Service, name: cart}}]\n  rules: [{{matches: [{}]}}]\n",
        matches.join(", ")
    );
    // Another route with a tie to the first's short prefix: by name, after "a-route".
    let tie = "  parentRefs: [{kind: Service, name: cart}]\n  rules: [{matches: [{path: {value: /a}}]}]\n";
    let yaml = format!("{}{}{}", service("cart", "shop"), route("z-route", tie), route("a-route", &spec));
    let routes = &built(&yaml)[CART];
    let a = |m: u32| ("shop/a-route".to_owned(), 0, m);
    let want = [a(3), a(2), a(4), a(6), a(5), a(7), a(0), ("shop/z-route".to_owned(), 0, 0), a(1)];
    assert_eq!(order(routes), want);
    assert!(routes.entries.iter().all(|e| e.port == 0), "no port named: every port");
}

#[test]
fn a_route_attached_to_two_services_serves_both() {
    let spec = "  parentRefs:\n  - {kind: Service, name: cart, port: 80}\n  - {kind: Service, name: web, namespace: front}\n\
                \x20 - {kind: Service, name: missing}\n  rules: [{backendRefs: [{name: cart, port: 80}]}]\n";
    let yaml = format!("{}{}{}", service("cart", "shop"), service("web", "front"), route("r", spec));
    let all = built(&yaml);
    assert_eq!(all.keys().collect::<Vec<_>>(), ["front/web.front.svc.cluster.local", CART]);
    assert_eq!(all[CART].entries[0].port, 80);
    let web = &all["front/web.front.svc.cluster.local"];
    assert_eq!(
        (web.namespace.as_str(), web.entries[0].port, web.entries[0].route.as_str()),
        ("front", 0, "shop/r")
    );
    // The backend is the route's namespace's, whichever service it is attached to.
    let backend = &web.entries[0].action.as_ref().expect("action").backends[0];
    assert_eq!(backend.service, "shop/cart.shop.svc.cluster.local");
}

#[test]
fn a_route_change_re_sends_only_that_service() {
    let spec = |path: &str, svc: &str| {
        format!(
            "  parentRefs: [{{kind: Service, name: {svc}}}]\n  rules: [{{matches: [{{path: {{value: {path}}}}}]}}]\n"
        )
    };
    let yaml = |cart_path: &str, web: bool| {
        let web = if web { route("web", &spec("/w", "web")) } else { String::new() };
        format!(
            "{}{}{}{web}",
            service("cart", "shop"),
            service("web", "shop"),
            route("cart", &spec(cart_path, "cart"))
        )
    };
    let mesh = MeshSettings::default();
    let first = World::build(&inputs_from(&yaml("/a", true)), &mesh, 1, None);
    assert_eq!(first.resources(type_urls::HTTP_ROUTES).map(BTreeMap::len), Some(2));
    assert_eq!(first.http_routes[CART].audience, Audience::Everyone);

    let second = World::build(&inputs_from(&yaml("/b", true)), &mesh, 2, Some(&first));
    let delta = second.delta.as_ref().expect("delta");
    assert_eq!(delta.names(type_urls::HTTP_ROUTES), [Arc::from(CART)]);
    assert!(delta.addresses.is_empty() && delta.service_policies.is_empty());

    let third = World::build(&inputs_from(&yaml("/b", false)), &mesh, 3, Some(&second));
    let web = "shop/web.shop.svc.cluster.local";
    assert_eq!(third.delta.as_ref().expect("delta").http_routes, [Arc::from(web)]);
    assert!(!third.http_routes.contains_key(web));
}
