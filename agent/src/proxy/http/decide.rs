//! What a request's route says, decided without any socket: which route entry matches it,
//! which weighted backend takes it, and what the filters do to it (header modifiers,
//! redirect, URL rewrite). Pure functions over the request's head, tested here.

use std::{sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue, StatusCode, Uri, header, request::Parts};

use crate::services::{
    ServiceInfo,
    http::{
        Backend, Filter, HeaderModifier, HttpRoutes, PathMatch, PathModifier, Redirect, Request, Retry,
        RouteAction, RouteEntry,
    },
};

/// Gateway API's retry codes when a route's `retry` names none.
pub const DEFAULT_RETRY_CODES: [u16; 4] = [500, 502, 503, 504];
/// Attempts after the first when a route's `retry` does not say.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Envoy's base retry interval, when the route does not set a backoff.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// Where a request goes, before any endpoint is picked.
#[derive(Debug)]
pub enum Decision {
    /// Answered by the proxy itself: a redirect filter's 30x.
    Redirect {
        status: StatusCode,
        location: String,
    },
    /// Routes are attached to the port and none matches: 404.
    NoRoute,
    /// The rule matched but has no backend that may take traffic: 500, as Gateway API says.
    NoBackend,
    Forward(Plan),
}

/// What forwarding one request needs to know.
#[derive(Debug)]
pub struct Plan {
    /// `namespace/hostname` of the backend service, and its port.
    pub service: Arc<str>,
    pub port: u16,
    /// The route entry that matched (none: the service without routes).
    pub route: Option<Arc<str>>,
    pub response_headers: Vec<HeaderModifier>,
    pub request_timeout: Option<Duration>,
    pub backend_request_timeout: Option<Duration>,
    pub retry: Option<Retry>,
}

/// The request's host as routes compare it: lower-case, without a port.
pub fn host_of(parts: &Parts) -> String {
    let raw = parts
        .uri
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(strip_port))
        .unwrap_or_default();
    raw.to_ascii_lowercase()
}

fn strip_port(host: &str) -> String {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| h).trim_start_matches('[').to_owned();
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h).to_owned()
}

/// Decides the request to `front`'s `port`, whose head `parts` the filters may change; `draw`
/// is a uniform random number for the weighted choice.
pub fn decide(front: &ServiceInfo, port: u16, parts: &mut Parts, draw: u64) -> Decision {
    let routes = front.http_routes.as_deref().filter(|r| applies(r, port));
    let Some(routes) = routes else {
        // No route on this port: every request goes to the service itself.
        return Decision::Forward(Plan {
            service: Arc::clone(&front.name),
            port,
            route: None,
            response_headers: Vec::new(),
            request_timeout: None,
            backend_request_timeout: None,
            retry: None,
        });
    };
    let host = host_of(parts);
    let entry = {
        let request = Request {
            port,
            host: &host,
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
        };
        match routes.route(&request) {
            Some(entry) => entry,
            None => return Decision::NoRoute,
        }
    };
    let action: &RouteAction = &entry.action;
    let mut response_headers = Vec::new();
    if let Some(redirect) = apply(&action.filters, entry, parts, &mut response_headers) {
        return redirect;
    }
    let Some(backend) = choose_backend(&action.backends, draw) else { return Decision::NoBackend };
    if let Some(redirect) = apply(&backend.filters, entry, parts, &mut response_headers) {
        return redirect;
    }
    Decision::Forward(Plan {
        service: Arc::clone(&backend.service),
        port: backend.port,
        route: Some(Arc::clone(&entry.route)),
        response_headers,
        request_timeout: action.request_timeout,
        backend_request_timeout: action.backend_request_timeout,
        retry: action.retry.clone(),
    })
}

/// Whether any entry is attached to `port` (or to every port).
fn applies(routes: &HttpRoutes, port: u16) -> bool {
    routes.entries.iter().any(|e| e.port == 0 || e.port == port)
}

/// One of `backends` with probability proportional to its weight; none when every weight is
/// zero (or there is no backend).
pub fn choose_backend(backends: &[Backend], draw: u64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = draw % total;
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if point < w {
            return true;
        }
        point -= w;
        false
    })
}

/// Applies `filters` in order; a redirect ends the request there.
fn apply(
    filters: &[Filter],
    entry: &RouteEntry,
    parts: &mut Parts,
    response_headers: &mut Vec<HeaderModifier>,
) -> Option<Decision> {
    for filter in filters {
        match filter {
            Filter::RequestHeaders(m) => modify(&mut parts.headers, m),
            Filter::ResponseHeaders(m) => response_headers.push(m.clone()),
            Filter::Redirect(r) => {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
                return Some(Decision::Redirect { status, location: location(r, entry, parts) });
            }
            Filter::Rewrite(r) => {
                if let Some(hostname) = &r.hostname
                    && let Ok(value) = HeaderValue::from_str(hostname)
                {
                    parts.headers.insert(header::HOST, value);
                    set_uri(parts, Some(hostname), None);
                }
                if let Some(path) = &r.path {
                    let new = rewrite_path(parts.uri.path(), path, &entry.matches.path);
                    set_uri(parts, None, Some(&new));
                }
            }
        }
    }
    None
}

/// Set replaces, add appends, remove deletes: Gateway API's header modifier.
pub fn modify(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

/// The path after a path modifier: a full replacement, or the matched prefix replaced.
fn rewrite_path(path: &str, modifier: &PathModifier, matched: &PathMatch) -> String {
    match modifier {
        PathModifier::Full(full) => full.clone(),
        PathModifier::Prefix(prefix) => {
            let matched = match matched {
                PathMatch::Prefix(p) => p.trim_end_matches('/'),
                // Gateway API allows a prefix replacement only with a prefix match.
                _ => return path.to_owned(),
            };
            let rest = path.strip_prefix(matched).unwrap_or(path);
            let prefix = prefix.trim_end_matches('/');
            match (prefix.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.to_owned(),
                (false, _) => format!("{prefix}{rest}"),
            }
        }
    }
}

/// Replaces the URI's host and/or path, keeping its query.
fn set_uri(parts: &mut Parts, host: Option<&str>, path: Option<&str>) {
    let old = &parts.uri;
    let mut builder = Uri::builder();
    if let Some(scheme) = old.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    match (host, old.authority()) {
        (Some(h), Some(a)) => {
            builder = builder.authority(a.port().map_or(h.to_owned(), |p| format!("{h}:{p}")))
        }
        (None, Some(a)) => builder = builder.authority(a.clone()),
        _ => {}
    }
    let path = path.unwrap_or(old.path());
    let pq = match old.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    if let Ok(uri) = builder.path_and_query(pq).build() {
        parts.uri = uri;
    }
}

/// A redirect's `Location`: each part the filter sets, the request's otherwise. The port is
/// left out when it is the scheme's own.
fn location(r: &Redirect, entry: &RouteEntry, parts: &Parts) -> String {
    let scheme = r.scheme.clone().unwrap_or_else(|| "http".to_owned());
    let host = r.hostname.clone().unwrap_or_else(|| host_of(parts));
    let port = r.port.or_else(|| {
        // Gateway API: with a new scheme and no port, the scheme's well-known port.
        if r.scheme.is_some() {
            return None;
        }
        parts
            .uri
            .port_u16()
            .or_else(|| parts.headers.get(header::HOST)?.to_str().ok()?.rsplit_once(':')?.1.parse().ok())
    });
    let port = port.filter(|p| !matches!((scheme.as_str(), *p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some(m) => rewrite_path(parts.uri.path(), m, &entry.matches.path),
        None => parts.uri.path().to_owned(),
    };
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}{query}"),
        None => format!("{scheme}://{host}{path}{query}"),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
