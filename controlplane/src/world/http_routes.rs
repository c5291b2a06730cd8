//! Each Service's `nodemesh.v1.HttpRoutes`: every HTTPRoute attached to it (a `parentRefs`
//! entry of kind Service naming it, in mesh mode), flattened to one entry per (rule, match)
//! and sorted in Gateway API's precedence, so the agent takes the first entry that matches a
//! request. One resource per service that has any, named like the service's Address resource.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
};

use nodemesh_proto::{nodemesh::v1 as nm, prost::Message as _, prost_types::Any, type_urls};

use super::MeshSettings;
use crate::{
    model::{
        HttpRoute,
        http_route::{
            BackendRef, Filter, HeaderModifier, Match, PathModifier, PathModifierType, PathType, Rule,
            ValueMatch, ValueType,
        },
        service_fqdn,
    },
    store::Inputs,
};

/// One flattened entry and what it sorts by.
struct Sorted {
    key: PrecedenceKey,
    entry: nm::HttpRouteEntry,
}

/// Gateway API's precedence, most specific first: an exact path, then a prefix (longer
/// first), then a regular expression; a method; more header matches; more query parameter
/// matches. Then the older route, which YAML cannot say (no creation timestamps), so ties
/// fall to the route's namespace and then its name, Gateway API's last tie-breaker; then the
/// rule's and the match's order in the route.
type PrecedenceKey = (u8, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>, String, String, usize, usize);

fn precedence(route: &HttpRoute, rule: usize, index: usize, m: &Match) -> PrecedenceKey {
    let (rank, length) = match &m.path {
        None => (1, 1),
        Some(p) => match p.kind {
            PathType::Exact => (0, 0),
            PathType::PathPrefix => (1, p.value().len()),
            PathType::RegularExpression => (2, 0),
        },
    };
    (
        rank,
        Reverse(length),
        m.method.is_none(),
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
        route.namespace().to_owned(),
        route.metadata.name.clone(),
        rule,
        index,
    )
}

/// Every service's routes, as (resource name, body), by name.
pub fn build(inputs: &Inputs, mesh: &MeshSettings) -> BTreeMap<String, Any> {
    // (namespace, name) → hostname: only existing services get routes.
    let services: HashMap<(&str, &str), String> = inputs
        .services
        .iter()
        .map(|svc| {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            ((ns, svc.metadata.name.as_str()), service_fqdn(&svc.metadata.name, ns, &mesh.domain_suffix))
        })
        .collect();
    // (namespace, hostname) → entries, in input order until sorted.
    let mut by_service: BTreeMap<(String, String), Vec<Sorted>> = BTreeMap::new();
    for route in &inputs.http_routes {
        let mut attached: Vec<(&str, &str, u32)> = Vec::new();
        for parent in &route.spec.parent_refs {
            let ns = parent.namespace.as_deref().unwrap_or(route.namespace());
            let port = parent.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
            // The same service and port twice is one attachment.
            if !attached.contains(&(ns, &parent.name, port)) {
                attached.push((ns, &parent.name, port));
            }
        }
        for (ns, name, port) in attached {
            // A parent naming no Service attaches nothing until that Service exists.
            let Some(hostname) = services.get(&(ns, name)) else { continue };
            let entries = by_service.entry((ns.to_owned(), hostname.clone())).or_default();
            for (r, rule) in route.spec.rules.iter().enumerate() {
                let action = action(route, rule, mesh);
                let every_path = [Match::default()];
                let matches = if rule.matches.is_empty() { &every_path[..] } else { &rule.matches };
                for (m, matched) in matches.iter().enumerate() {
                    entries.push(Sorted {
                        key: precedence(route, r, m, matched),
                        entry: nm::HttpRouteEntry {
                            route: format!("{}/{}", route.namespace(), route.metadata.name),
                            rule: index(r),
                            r#match: index(m),
                            port,
                            hostnames: route.spec.hostnames.clone(),
                            matches: Some(http_match(matched)),
                            action: Some(action.clone()),
                        },
                    });
                }
            }
        }
    }
    by_service
        .into_iter()
        .filter(|(_, entries)| !entries.is_empty())
        .map(|((namespace, hostname), mut entries)| {
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            let name = format!("{namespace}/{hostname}");
            let routes = nm::HttpRoutes {
                namespace,
                hostname,
                entries: entries.into_iter().map(|s| s.entry).collect(),
            };
            (name, Any { type_url: type_urls::HTTP_ROUTES.into(), value: routes.encode_to_vec() })
        })
        .collect()
}

/// Indices are bounded by validation (64 rules, 64 matches).
fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

fn http_match(m: &Match) -> nm::HttpMatch {
    use nm::path_match::Type;
    nm::HttpMatch {
        path: m.path.as_ref().map(|p| nm::PathMatch {
            r#type: match p.kind {
                PathType::Exact => Type::Exact,
                PathType::PathPrefix => Type::PathPrefix,
                PathType::RegularExpression => Type::RegularExpression,
            } as i32,
            value: p.value().to_owned(),
        }),
        headers: m.headers.iter().map(value_match).collect(),
        query_params: m.query_params.iter().map(value_match).collect(),
        method: m.method.map(|m| m.as_str().to_owned()).unwrap_or_default(),
    }
}

fn value_match(v: &ValueMatch) -> nm::ValueMatch {
    use nm::value_match::Type;
    let kind = match v.kind {
        ValueType::Exact => Type::Exact,
        ValueType::RegularExpression => Type::RegularExpression,
    };
    nm::ValueMatch { r#type: kind as i32, name: v.name.clone(), value: v.value.clone() }
}

fn action(route: &HttpRoute, rule: &Rule, mesh: &MeshSettings) -> nm::HttpAction {
    let timeouts = rule.timeouts.as_ref();
    nm::HttpAction {
        backends: rule.backend_refs.iter().map(|b| backend(route, b, mesh)).collect(),
        filters: rule.filters.iter().filter_map(filter).collect(),
        request_timeout_ms: timeouts.and_then(|t| t.request).map_or(0, |d| d.millis()),
        backend_request_timeout_ms: timeouts.and_then(|t| t.backend_request).map_or(0, |d| d.millis()),
        retry: rule.retry.as_ref().map(|r| nm::HttpRetry {
            codes: r.codes.iter().filter_map(|c| u32::try_from(*c).ok()).collect(),
            attempts: r.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(0),
            backoff_ms: r.backoff.map_or(0, |d| d.millis()),
        }),
    }
}

/// Named whether or not that Service exists: the agent answers 500 for a backend it cannot
/// resolve, as Gateway API requires, rather than the route silently losing a backend (which
/// would shift its weight onto the others).
fn backend(route: &HttpRoute, b: &BackendRef, mesh: &MeshSettings) -> nm::WeightedBackend {
    let ns = b.namespace.as_deref().unwrap_or(route.namespace());
    nm::WeightedBackend {
        service: format!("{ns}/{}", service_fqdn(&b.name, ns, &mesh.domain_suffix)),
        port: b.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        weight: b.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1),
        filters: b.filters.iter().filter_map(filter).collect(),
    }
}

/// None only for the kinds validation refuses (mirrors, extensions).
fn filter(f: &Filter) -> Option<nm::HttpFilter> {
    use nm::http_filter::Kind;
    let kind = if let Some(m) = &f.request_header_modifier {
        Kind::RequestHeaderModifier(header_modifier(m))
    } else if let Some(m) = &f.response_header_modifier {
        Kind::ResponseHeaderModifier(header_modifier(m))
    } else if let Some(r) = &f.request_redirect {
        Kind::RequestRedirect(nm::RequestRedirect {
            scheme: r.scheme.clone().unwrap_or_default(),
            hostname: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().map(path_modifier),
            port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            status_code: r.status_code.and_then(|c| u32::try_from(c).ok()).unwrap_or(302),
        })
    } else if let Some(r) = &f.url_rewrite {
        Kind::UrlRewrite(nm::UrlRewrite {
            hostname: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().map(path_modifier),
        })
    } else {
        return None;
    };
    Some(nm::HttpFilter { kind: Some(kind) })
}

fn header_modifier(m: &HeaderModifier) -> nm::HeaderModifier {
    let headers = |list: &[crate::model::http_route::Header]| {
        list.iter().map(|h| nm::Header { name: h.name.clone(), value: h.value.clone() }).collect()
    };
    nm::HeaderModifier { set: headers(&m.set), add: headers(&m.add), remove: m.remove.clone() }
}

fn path_modifier(p: &PathModifier) -> nm::PathModifier {
    use nm::path_modifier::Type;
    let kind = match p.kind {
        PathModifierType::ReplaceFullPath => Type::ReplaceFullPath,
        PathModifierType::ReplacePrefixMatch => Type::ReplacePrefixMatch,
    };
    nm::PathModifier { r#type: kind as i32, value: p.value().to_owned() }
}

#[cfg(test)]
mod tests;
