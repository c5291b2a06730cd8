//! The `nodemesh.v1.HttpRoutes` resource: a service's HTTP routes, every field checked (a
//! regular expression that does not compile, a header that is not one, a weight past
//! Gateway API's bound) before any of it is used, errors naming the field.

use std::{sync::Arc, time::Duration};

use nodemesh_proto::{
    envoy::service::discovery::v3::Resource, nodemesh::v1 as nm, prost::Message as _, type_urls,
};

use super::{Ctx, Invalid, MAX_STRING};
use crate::services::http::{
    Backend, Filter, HeaderModifier, HttpRoutes, PathMatch, PathModifier, Pattern, Redirect, RequestMatch,
    Retry, Rewrite, RouteAction, RouteEntry, Value, ValueMatch,
};

/// Far above Gateway API's own bounds (64 rules × 64 matches per route, several routes per
/// service), low enough that no resource makes a request's match long.
const MAX_ENTRIES: usize = 4_096;
const MAX_LIST: usize = 64;

/// Decodes and checks one HttpRoutes resource; returns the service's `namespace/hostname`.
pub fn http_routes(resource: &Resource) -> Result<(String, HttpRoutes), Invalid> {
    let ctx = Ctx { resource: &resource.name };
    if resource.name.len() > MAX_STRING {
        return Err(ctx.err("name", format!("{} bytes, more than {MAX_STRING}", resource.name.len())));
    }
    let body = ctx.body(resource, type_urls::HTTP_ROUTES)?;
    let nm::HttpRoutes { namespace, hostname, entries } =
        nm::HttpRoutes::decode(body).map_err(|e| ctx.err("resource.value", e.to_string()))?;
    let service =
        format!("{}/{}", ctx.nonempty("namespace", &namespace)?, ctx.nonempty("hostname", &hostname)?);
    if resource.name != service {
        return Err(ctx.err("hostname", format!("{service:?} is not the service the resource is named for")));
    }
    if entries.len() > MAX_ENTRIES {
        return Err(ctx.err("entries", format!("{} entries, more than {MAX_ENTRIES}", entries.len())));
    }
    let mut checked = Vec::with_capacity(entries.len());
    // Entries of one rule share its action.
    let mut last: Option<(String, u32, Arc<RouteAction>)> = None;
    for (i, e) in entries.into_iter().enumerate() {
        let at = format!("entries[{i}]");
        let nm::HttpRouteEntry { route, rule, r#match, port, hostnames, matches, action } = e;
        let route_name = ctx.nonempty(&format!("{at}.route"), &route)?;
        let action = match (&last, action) {
            (Some((r, n, shared)), _) if *r == route_name && *n == rule => Arc::clone(shared),
            (_, action) => Arc::new(route_action(&ctx, &format!("{at}.action"), action.unwrap_or_default())?),
        };
        last = Some((route_name.clone(), rule, Arc::clone(&action)));
        checked.push(RouteEntry {
            route: route_name.into(),
            rule,
            index: r#match,
            port: ctx.port(format!("{at}.port"), port, true)?,
            hostnames: bounded_list(&ctx, &format!("{at}.hostnames"), &hostnames)?
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            matches: request_match(&ctx, &format!("{at}.matches"), matches.unwrap_or_default())?,
            action,
        });
    }
    Ok((service, HttpRoutes { entries: checked }))
}

fn bounded_list(ctx: &Ctx<'_>, at: &str, list: &[String]) -> Result<Vec<String>, Invalid> {
    if list.len() > MAX_LIST {
        return Err(ctx.err(at, format!("{} items, more than {MAX_LIST}", list.len())));
    }
    list.iter().enumerate().map(|(i, v)| ctx.nonempty(&format!("{at}[{i}]"), v)).collect()
}

fn pattern(ctx: &Ctx<'_>, at: &str, source: &str) -> Result<Pattern, Invalid> {
    let source = ctx.nonempty(at, source)?;
    Pattern::new(&source).map_err(|e| ctx.err(at, format!("not a regular expression: {e}")))
}

fn request_match(ctx: &Ctx<'_>, at: &str, m: nm::HttpMatch) -> Result<RequestMatch, Invalid> {
    let nm::HttpMatch { path, headers, query_params, method } = m;
    let path = match path {
        None => PathMatch::default(),
        Some(nm::PathMatch { r#type, value }) => {
            let field = format!("{at}.path.value");
            match nm::path_match::Type::try_from(r#type) {
                Ok(nm::path_match::Type::RegularExpression) => {
                    PathMatch::Regex(pattern(ctx, &field, &value)?)
                }
                Ok(kind) => {
                    let value = ctx.bounded(&field, &value)?;
                    if !value.starts_with('/') {
                        return Err(ctx.err(field, format!("{value:?} does not start with /")));
                    }
                    if kind == nm::path_match::Type::Exact {
                        PathMatch::Exact(value)
                    } else {
                        PathMatch::Prefix(value)
                    }
                }
                Err(_) => {
                    return Err(
                        ctx.err(format!("{at}.path.type"), format!("unknown value {type}", type = r#type))
                    );
                }
            }
        }
    };
    let values = |name: &str, list: Vec<nm::ValueMatch>, header: bool| -> Result<Vec<ValueMatch>, Invalid> {
        if list.len() > MAX_LIST {
            return Err(
                ctx.err(format!("{at}.{name}"), format!("{} items, more than {MAX_LIST}", list.len()))
            );
        }
        list.into_iter()
            .enumerate()
            .map(|(i, nm::ValueMatch { r#type, name: key, value })| {
                let at = format!("{at}.{name}[{i}]");
                let key = ctx.nonempty(&format!("{at}.name"), &key)?;
                if header && http::HeaderName::from_bytes(key.as_bytes()).is_err() {
                    return Err(ctx.err(format!("{at}.name"), format!("{key:?} is not a header name")));
                }
                let value = match nm::value_match::Type::try_from(r#type) {
                    Ok(nm::value_match::Type::Exact) => {
                        Value::Exact(ctx.bounded(&format!("{at}.value"), &value)?)
                    }
                    Ok(nm::value_match::Type::RegularExpression) => {
                        Value::Regex(pattern(ctx, &format!("{at}.value"), &value)?)
                    }
                    Err(_) => return Err(ctx.err(format!("{at}.type"), format!("unknown value {}", r#type))),
                };
                Ok(ValueMatch { name: if header { key.to_ascii_lowercase() } else { key }, value })
            })
            .collect()
    };
    let method = (!method.is_empty())
        .then(|| {
            http::Method::from_bytes(method.as_bytes())
                .map_err(|_| ctx.err(format!("{at}.method"), format!("{method:?} is not a method")))
        })
        .transpose()?;
    Ok(RequestMatch {
        path,
        headers: values("headers", headers, true)?,
        query: values("query_params", query_params, false)?,
        method,
    })
}

fn route_action(ctx: &Ctx<'_>, at: &str, a: nm::HttpAction) -> Result<RouteAction, Invalid> {
    let nm::HttpAction { backends, filters, request_timeout_ms, backend_request_timeout_ms, retry } = a;
    if backends.len() > MAX_LIST {
        return Err(
            ctx.err(format!("{at}.backends"), format!("{} items, more than {MAX_LIST}", backends.len()))
        );
    }
    let backends = backends
        .into_iter()
        .enumerate()
        .map(|(i, nm::WeightedBackend { service, port, weight, filters })| {
            let at = format!("{at}.backends[{i}]");
            let service = ctx.nonempty(&format!("{at}.service"), &service)?;
            if weight > 1_000_000 {
                return Err(ctx.err(format!("{at}.weight"), format!("{weight} is more than 1000000")));
            }
            Ok(Backend {
                service: service.into(),
                port: ctx.port(format!("{at}.port"), port, false)?,
                weight,
                filters: filter_list(ctx, &format!("{at}.filters"), filters)?,
            })
        })
        .collect::<Result<_, _>>()?;
    let millis = |ms: u32| (ms > 0).then(|| Duration::from_millis(ms.into()));
    let retry = retry
        .map(|nm::HttpRetry { codes, attempts, backoff_ms }| {
            let codes = codes
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    u16::try_from(*c).ok().filter(|c| (400..=599).contains(c)).ok_or_else(|| {
                        ctx.err(format!("{at}.retry.codes[{i}]"), format!("{c} is not a 4xx or 5xx code"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Retry { codes, attempts, backoff: millis(backoff_ms) })
        })
        .transpose()?;
    Ok(RouteAction {
        backends,
        filters: filter_list(ctx, &format!("{at}.filters"), filters)?,
        request_timeout: millis(request_timeout_ms),
        backend_request_timeout: millis(backend_request_timeout_ms),
        retry,
    })
}

fn filter_list(ctx: &Ctx<'_>, at: &str, filters: Vec<nm::HttpFilter>) -> Result<Vec<Filter>, Invalid> {
    if filters.len() > MAX_LIST {
        return Err(ctx.err(at, format!("{} items, more than {MAX_LIST}", filters.len())));
    }
    filters
        .into_iter()
        .enumerate()
        .map(|(i, nm::HttpFilter { kind })| {
            let at = format!("{at}[{i}]");
            use nm::http_filter::Kind;
            Ok(match kind {
                Some(Kind::RequestHeaderModifier(m)) => Filter::RequestHeaders(headers(ctx, &at, m)?),
                Some(Kind::ResponseHeaderModifier(m)) => Filter::ResponseHeaders(headers(ctx, &at, m)?),
                Some(Kind::RequestRedirect(nm::RequestRedirect {
                    scheme,
                    hostname,
                    path,
                    port,
                    status_code,
                })) => {
                    if !matches!(scheme.as_str(), "" | "http" | "https") {
                        return Err(
                            ctx.err(format!("{at}.scheme"), format!("{scheme:?} is not http or https"))
                        );
                    }
                    let status = match status_code {
                        0 => 302,
                        301 | 302 => status_code as u16,
                        other => {
                            return Err(
                                ctx.err(format!("{at}.status_code"), format!("{other} is not 301 or 302"))
                            );
                        }
                    };
                    Filter::Redirect(Redirect {
                        scheme: (!scheme.is_empty()).then_some(scheme),
                        hostname: optional(ctx, &format!("{at}.hostname"), &hostname)?,
                        path: path.map(|p| path_modifier(ctx, &format!("{at}.path"), p)).transpose()?,
                        port: (port != 0).then(|| ctx.port(format!("{at}.port"), port, false)).transpose()?,
                        status,
                    })
                }
                Some(Kind::UrlRewrite(nm::UrlRewrite { hostname, path })) => Filter::Rewrite(Rewrite {
                    hostname: optional(ctx, &format!("{at}.hostname"), &hostname)?,
                    path: path.map(|p| path_modifier(ctx, &format!("{at}.path"), p)).transpose()?,
                }),
                None => return Err(ctx.err(at, "empty filter")),
            })
        })
        .collect()
}

fn optional(ctx: &Ctx<'_>, at: &str, value: &str) -> Result<Option<String>, Invalid> {
    (!value.is_empty()).then(|| ctx.bounded(at, value)).transpose()
}

fn path_modifier(ctx: &Ctx<'_>, at: &str, p: nm::PathModifier) -> Result<PathModifier, Invalid> {
    let nm::PathModifier { r#type, value } = p;
    let value = ctx.bounded(&format!("{at}.value"), &value)?;
    if !value.starts_with('/') {
        return Err(ctx.err(format!("{at}.value"), format!("{value:?} does not start with /")));
    }
    match nm::path_modifier::Type::try_from(r#type) {
        Ok(nm::path_modifier::Type::ReplaceFullPath) => Ok(PathModifier::Full(value)),
        Ok(nm::path_modifier::Type::ReplacePrefixMatch) => Ok(PathModifier::Prefix(value)),
        Err(_) => Err(ctx.err(format!("{at}.type"), format!("unknown value {}", r#type))),
    }
}

fn headers(ctx: &Ctx<'_>, at: &str, m: nm::HeaderModifier) -> Result<HeaderModifier, Invalid> {
    let nm::HeaderModifier { set, add, remove } = m;
    let name = |at: &str, n: &str| {
        http::HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| ctx.err(at, format!("{n:?} is not a header name")))
    };
    let pairs = |kind: &str, list: Vec<nm::Header>| -> Result<Vec<_>, Invalid> {
        if list.len() > MAX_LIST {
            return Err(
                ctx.err(format!("{at}.{kind}"), format!("{} items, more than {MAX_LIST}", list.len()))
            );
        }
        list.into_iter()
            .enumerate()
            .map(|(i, nm::Header { name: n, value })| {
                let at = format!("{at}.{kind}[{i}]");
                let value = http::HeaderValue::from_str(&value)
                    .map_err(|_| ctx.err(format!("{at}.value"), "not a header value"))?;
                Ok((name(&format!("{at}.name"), &n)?, value))
            })
            .collect()
    };
    if remove.len() > MAX_LIST {
        return Err(ctx.err(format!("{at}.remove"), format!("{} items, more than {MAX_LIST}", remove.len())));
    }
    Ok(HeaderModifier {
        set: pairs("set", set)?,
        add: pairs("add", add)?,
        remove: remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(&format!("{at}.remove[{i}]"), n))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use nodemesh_proto::prost_types::Any;

    use super::*;

    fn resource(routes: &nm::HttpRoutes) -> Resource {
        Resource {
            name: format!("{}/{}", routes.namespace, routes.hostname),
            resource: Some(Any { type_url: type_urls::HTTP_ROUTES.into(), value: routes.encode_to_vec() }),
            ..Default::default()
        }
    }

    fn entry(route: &str, rule: u32, path: &str) -> nm::HttpRouteEntry {
        nm::HttpRouteEntry {
            route: route.into(),
            rule,
            matches: Some(nm::HttpMatch {
                path: Some(nm::PathMatch {
                    r#type: nm::path_match::Type::PathPrefix as i32,
                    value: path.into(),
                }),
                ..Default::default()
            }),
            action: Some(nm::HttpAction {
                backends: vec![nm::WeightedBackend {
                    service: "shop/reviews-v2.shop.svc.cluster.local".into(),
                    port: 9080,
                    weight: 10,
                    filters: Vec::new(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn routes(entries: Vec<nm::HttpRouteEntry>) -> nm::HttpRoutes {
        nm::HttpRoutes {
            namespace: "shop".into(),
            hostname: "reviews.shop.svc.cluster.local".into(),
            entries,
        }
    }

    #[test]
    fn reads_entries_and_shares_a_rules_action() {
        let r = routes(vec![entry("shop/r", 0, "/api"), entry("shop/r", 0, "/v2"), entry("shop/r", 1, "/")]);
        let (service, checked) = http_routes(&resource(&r)).expect("valid");
        assert_eq!(service, "shop/reviews.shop.svc.cluster.local");
        assert_eq!(checked.entries.len(), 3);
        assert!(Arc::ptr_eq(&checked.entries[0].action, &checked.entries[1].action));
        assert!(!Arc::ptr_eq(&checked.entries[1].action, &checked.entries[2].action));
        assert_eq!(checked.entries[0].action.backends[0].weight, 10);
    }

    #[test]
    fn errors_name_the_field() {
        let mut bad = entry("shop/r", 0, "/");
        bad.matches = Some(nm::HttpMatch {
            path: Some(nm::PathMatch {
                r#type: nm::path_match::Type::RegularExpression as i32,
                value: "(".into(),
            }),
            ..Default::default()
        });
        let e = http_routes(&resource(&routes(vec![bad]))).expect_err("bad regex");
        assert_eq!(e.error.field, "entries[0].matches.path.value");

        let mut bad = entry("shop/r", 0, "no-slash");
        let e = http_routes(&resource(&routes(vec![bad.clone()]))).expect_err("bad path");
        assert_eq!(e.error.field, "entries[0].matches.path.value");

        bad = entry("shop/r", 0, "/");
        if let Some(a) = bad.action.as_mut() {
            a.backends[0].weight = 2_000_000;
        }
        let e = http_routes(&resource(&routes(vec![bad.clone()]))).expect_err("weight");
        assert_eq!(e.error.field, "entries[0].action.backends[0].weight");

        bad = entry("shop/r", 0, "/");
        if let Some(a) = bad.action.as_mut() {
            a.filters = vec![nm::HttpFilter {
                kind: Some(nm::http_filter::Kind::RequestHeaderModifier(nm::HeaderModifier {
                    set: vec![nm::Header { name: "bad name".into(), value: "v".into() }],
                    ..Default::default()
                })),
            }];
        }
        let e = http_routes(&resource(&routes(vec![bad]))).expect_err("header");
        assert_eq!(e.error.field, "entries[0].action.filters[0].set[0].name");
    }
}
