//! Reading HTTPRoutes: a full example, and every kind of refusal naming its field.

use crate::model::{Object, parse_document};

use super::*;

fn parse_with(api: &str, spec: &str) -> Result<HttpRoute, FieldError> {
    let text = format!(
        "apiVersion: {api}\nkind: HTTPRoute\nmetadata: {{name: cart, namespace: shop}}\nspec:\n{spec}"
    );
    match parse_document(serde_yaml::from_str(&text).expect("yaml"))? {
        Some(Object::HttpRoute(route)) => Ok((*route).clone()),
        other => panic!("{other:?}"),
    }
}

fn parse(spec: &str) -> Result<HttpRoute, FieldError> {
    parse_with("gateway.networking.k8s.io/v1", spec)
}

const PARENT: &str = "  parentRefs: [{group: \"\", kind: Service, name: cart, port: 80}]\n";

pub(crate) const FULL: &str = "  parentRefs:
  - {group: \"\", kind: Service, name: cart, port: 80}
  - {kind: Service, name: cart-admin, namespace: ops}
  hostnames: [cart.example.com, \"*.shop.example.com\"]
  rules:
  - matches:
    - path: {type: Exact, value: /checkout}
      method: POST
      headers: [{name: x-canary, value: \"yes\"}, {type: RegularExpression, name: x-user, value: \"^a.*\"}]
      queryParams: [{name: debug, value: \"1\"}]
    - path: {type: RegularExpression, value: \"^/items/[0-9]+$\"}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: b}], add: [{name: x-c, value: d}], remove: [x-e]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {remove: [server]}
    backendRefs:
    - {name: cart-v1, port: 8080, weight: 90}
    - name: cart-v2
      namespace: canary
      port: 8080
      weight: 10
      filters: [{type: URLRewrite, urlRewrite: {hostname: v2.internal, path: {type: ReplaceFullPath, replaceFullPath: /v2}}}]
    timeouts: {request: 10s, backendRequest: 500ms}
    retry: {codes: [502, 503], attempts: 3, backoff: 1m30s}
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: new.example.com, port: 443, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - backendRefs: [{group: \"\", kind: Service, name: cart, port: 80}]
";

#[test]
fn reads_a_full_route() {
    for api in ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"] {
        let route = parse_with(api, FULL).expect("valid");
        assert_eq!(route.spec.parent_refs.len(), 2);
        assert_eq!(route.spec.rules.len(), 3);
        let first = &route.spec.rules[0];
        assert_eq!(first.matches[0].method, Some(Method::Post));
        assert_eq!(first.matches[0].headers[1].kind, ValueType::RegularExpression);
        assert_eq!(first.backend_refs[0].weight, Some(90));
        let t = first.timeouts.as_ref().expect("timeouts");
        assert_eq!(
            (t.request, t.backend_request),
            (Some(Duration::from_millis(10_000)), Some(Duration::from_millis(500)))
        );
        assert_eq!(first.retry.as_ref().and_then(|r| r.backoff), Some(Duration::from_millis(90_000)));
        let redirect = route.spec.rules[1].filters[0].request_redirect.as_ref().expect("redirect");
        assert_eq!(redirect.path.as_ref().map(PathModifier::value), Some("/new"));
    }
    // Defaults: a path without type is a prefix, without value "/".
    let route = parse(&format!("{PARENT}  rules: [{{matches: [{{path: {{}}}}]}}]\n")).expect("valid");
    let path = route.spec.rules[0].matches[0].path.as_ref().expect("path");
    assert_eq!((path.kind, path.value()), (PathType::PathPrefix, "/"));
}

#[test]
fn an_unknown_version_is_refused_at_api_version() {
    let e = parse_with("gateway.networking.k8s.io/v1alpha2", PARENT).expect_err("unknown version");
    assert_eq!(e.field, "apiVersion", "{e}");
}

#[test]
fn errors_name_the_field() {
    let rule = |r: &str| format!("{PARENT}  rules:\n  - {r}\n");
    let many = |n: usize, item: &str| vec![item; n].join(", ");
    for (spec, field, says) in [
        ("  parentRefs: [{name: gw}]\n".to_owned(), "spec.parentRefs[0].kind", "no gateways"),
        (
            "  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n".to_owned(),
            "spec.parentRefs[0].kind",
            "no gateways",
        ),
        (
            "  parentRefs: [{kind: Service, group: apps, name: a}]\n".to_owned(),
            "spec.parentRefs[0].group",
            "core group",
        ),
        (
            "  parentRefs: [{kind: Service, name: a, sectionName: http}]\n".to_owned(),
            "spec.parentRefs[0].sectionName",
            "not supported",
        ),
        (
            "  parentRefs: [{kind: Service, name: a, port: 0}]\n".to_owned(),
            "spec.parentRefs[0].port",
            "1-65535",
        ),
        (
            format!("  parentRefs: [{}]\n", many(17, "{kind: Service, name: a}")),
            "spec.parentRefs",
            "at most 16",
        ),
        (format!("{PARENT}  hostnames: [\"a.*.b\"]\n"), "spec.hostnames[0]", "not a hostname"),
        (format!("{PARENT}  hostnames: [{}]\n", many(17, "a")), "spec.hostnames", "at most 16"),
        (format!("{PARENT}  rules: [{}]\n", many(65, "{}")), "spec.rules", "at most 64"),
        (
            format!("{PARENT}  rules: [{{}}, {{matches: [{{path: {{value: x}}}}]}}]\n"),
            "spec.rules[1].matches[0].path.value",
            "start with '/'",
        ),
        (
            rule("matches: [{path: {type: Exact, value: \"/a b\"}}]"),
            "spec.rules[0].matches[0].path.value",
            "not a path",
        ),
        (
            rule("matches: [{path: {type: RegularExpression, value: \"(\"}}]"),
            "spec.rules[0].matches[0].path.value",
            "not a regular expression",
        ),
        (rule("matches: [{path: {type: Glob}}]"), "spec.rules[0].matches[0].path.type", "unknown variant"),
        (rule("matches: [{method: FETCH}]"), "spec.rules[0].matches[0].method", "unknown variant"),
        (
            rule("matches: [{headers: [{name: \"a b\", value: c}]}]"),
            "spec.rules[0].matches[0].headers[0].name",
            "HTTP token",
        ),
        (
            rule("matches: [{headers: [{name: a, value: c}, {name: A, value: d}]}]"),
            "spec.rules[0].matches[0].headers[1].name",
            "twice",
        ),
        (
            rule("matches: [{queryParams: [{name: a, value: \"\"}]}]"),
            "spec.rules[0].matches[0].queryParams[0].value",
            "1 to 1024",
        ),
        (
            rule(&format!(
                "matches: [{{headers: [{}]}}]",
                (0..17).map(|i| format!("{{name: h{i}, value: v}}")).collect::<Vec<_>>().join(", ")
            )),
            "spec.rules[0].matches[0].headers",
            "at most 16",
        ),
        (
            rule("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}}}]"),
            "spec.rules[0].filters[0].type",
            "not supported",
        ),
        (
            rule("filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]"),
            "spec.rules[0].filters[0].type",
            "not supported",
        ),
        (
            rule("filters: [{type: RequestHeaderModifier}]"),
            "spec.rules[0].filters[0].requestHeaderModifier",
            "required",
        ),
        (
            rule("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}, urlRewrite: {}}]"),
            "spec.rules[0].filters[0].urlRewrite",
            "must be absent",
        ),
        (
            rule("filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]"),
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "301, 302",
        ),
        (
            rule("filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]"),
            "spec.rules[0].filters[0].requestRedirect.scheme",
            "http, https",
        ),
        (
            rule("filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}]"),
            "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath",
            "required",
        ),
        (
            rule(
                "matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]",
            ),
            "spec.rules[0].filters[0].urlRewrite.path.type",
            "PathPrefix",
        ),
        (
            rule(
                "filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]",
            ),
            "spec.rules[0].filters",
            "together",
        ),
        (
            rule(
                "filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {}}, {type: ResponseHeaderModifier, responseHeaderModifier: {}}]",
            ),
            "spec.rules[0].filters[1].type",
            "twice",
        ),
        (
            rule("backendRefs: [{name: a, port: 80, weight: 1000001}]"),
            "spec.rules[0].backendRefs[0].weight",
            "0-1000000",
        ),
        (
            rule("backendRefs: [{name: a, port: 80, weight: -1}]"),
            "spec.rules[0].backendRefs[0].weight",
            "0-1000000",
        ),
        (rule("backendRefs: [{name: a}]"), "spec.rules[0].backendRefs[0].port", "required"),
        (
            rule("backendRefs: [{kind: ServiceImport, name: a, port: 80}]"),
            "spec.rules[0].backendRefs[0].kind",
            "only Service",
        ),
        (
            rule("backendRefs: [{name: a, port: 80, filters: [{type: RequestMirror}]}]"),
            "spec.rules[0].backendRefs[0].filters[0].type",
            "not supported",
        ),
        (
            rule("timeouts: {request: 1s, backendRequest: 2s}"),
            "spec.rules[0].timeouts.backendRequest",
            "must not exceed",
        ),
        (rule("timeouts: {request: 10}"), "spec.rules[0].timeouts.request", "no unit"),
        (rule("retry: {codes: [200]}"), "spec.rules[0].retry.codes[0]", "400-599"),
        (rule("retry: {attempts: -1}"), "spec.rules[0].retry.attempts", "0 or more"),
        (rule("sessionPersistence: {}"), "spec.rules[0].sessionPersistence", "unknown field"),
        (format!("{PARENT}  color: blue\n"), "spec.color", "unknown field"),
    ] {
        let e = parse(&spec).expect_err(&spec);
        assert_eq!(e.field, field, "{spec}: {e}");
        assert!(e.message.contains(says), "{spec}: {e}");
    }
}
