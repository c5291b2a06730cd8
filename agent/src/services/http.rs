//! A service's HTTP routes (the `nodemesh.v1.HttpRoutes` resource, from Gateway API
//! HTTPRoutes attached to the service), checked and ready to match requests against: what the
//! proxy's HTTP stage decides each request by. The entries come in precedence order, so the
//! first that matches decides.

use std::{sync::Arc, time::Duration};

use regex::Regex;

/// Which ports of a service speak HTTP, as its `appProtocol` or port name says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppProtocol {
    /// Opaque TCP (also when the service does not say).
    #[default]
    Tcp,
    Http1,
    Http2,
    Grpc,
}

impl AppProtocol {
    pub fn is_http(self) -> bool {
        self != AppProtocol::Tcp
    }

    pub fn is_tcp(&self) -> bool {
        *self == AppProtocol::Tcp
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRoutes {
    pub entries: Vec<RouteEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// `namespace/name` of the HTTPRoute, and the rule's and the match's index in it.
    pub route: Arc<str>,
    pub rule: u32,
    pub index: u32,
    /// The service port it is attached to; 0: every HTTP port.
    pub port: u16,
    /// Lower-case; a leading `*.` matches one or more labels. Empty: any Host.
    pub hostnames: Vec<String>,
    pub matches: RequestMatch,
    /// Shared by the entries of one rule.
    pub action: Arc<RouteAction>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMatch {
    pub path: PathMatch,
    pub headers: Vec<ValueMatch>,
    pub query: Vec<ValueMatch>,
    pub method: Option<http::Method>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// By whole path segments: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    Regex(Pattern),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".into())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueMatch {
    /// Lower-case for headers (their names compare case-insensitively).
    pub name: String,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Exact(String),
    Regex(Pattern),
}

/// A regular expression matched against the whole value, as Gateway API means it.
#[derive(Clone, Debug)]
pub struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

impl Pattern {
    /// Compiles `source` anchored at both ends.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Regex::new(&format!("^(?:{source})$")).map(Pattern)
    }

    fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteAction {
    pub backends: Vec<Backend>,
    pub filters: Vec<Filter>,
    pub request_timeout: Option<Duration>,
    pub backend_request_timeout: Option<Duration>,
    pub retry: Option<Retry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `namespace/hostname` of the backend Service.
    pub service: Arc<str>,
    pub port: u16,
    pub weight: u32,
    pub filters: Vec<Filter>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    Rewrite(Rewrite),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    Prefix(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    pub codes: Vec<u16>,
    pub attempts: u32,
    pub backoff: Option<Duration>,
}

/// What the match looks at in a request.
pub struct Request<'a> {
    pub port: u16,
    /// Without the port, lower-case.
    pub host: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl HttpRoutes {
    /// The first entry that matches the request.
    pub fn route(&self, request: &Request<'_>) -> Option<&RouteEntry> {
        self.entries.iter().find(|e| e.matches(request))
    }
}

impl RouteEntry {
    pub fn matches(&self, r: &Request<'_>) -> bool {
        (self.port == 0 || self.port == r.port)
            && (self.hostnames.is_empty() || self.hostnames.iter().any(|h| host_matches(h, r.host)))
            && self.matches.matches(r)
    }
}

impl RequestMatch {
    fn matches(&self, r: &Request<'_>) -> bool {
        self.method.as_ref().is_none_or(|m| m == r.method)
            && self.path.matches(r.path)
            && self.headers.iter().all(|h| {
                r.headers
                    .get_all(h.name.as_str())
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| h.value.matches(v)))
            })
            && self.query.iter().all(|q| {
                // Gateway API: the first value of a repeated parameter is the one compared.
                let first = r.query.and_then(|query| {
                    query
                        .split('&')
                        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                        .find(|(k, _)| *k == q.name)
                });
                first.is_some_and(|(_, v)| q.value.matches(v))
            })
    }
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty() || path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

impl Value {
    fn matches(&self, text: &str) -> bool {
        match self {
            Value::Exact(v) => v == text,
            Value::Regex(re) => re.is_match(text),
        }
    }
}

/// `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(path: &'a str, query: Option<&'a str>, headers: &'a http::HeaderMap) -> Request<'a> {
        Request { port: 80, host: "cart.shop", method: &http::Method::GET, path, query, headers }
    }

    fn entry(matches: RequestMatch) -> RouteEntry {
        RouteEntry {
            route: "shop/cart".into(),
            rule: 0,
            index: 0,
            port: 0,
            hostnames: Vec::new(),
            matches,
            action: Arc::default(),
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let none = http::HeaderMap::new();
        let prefix = PathMatch::Prefix("/foo".into());
        for (path, expected) in
            [("/foo", true), ("/foo/", true), ("/foo/bar", true), ("/foobar", false), ("/", false)]
        {
            assert_eq!(prefix.matches(path), expected, "{path}");
        }
        assert!(PathMatch::Prefix("/foo/".into()).matches("/foo/bar"));
        assert!(PathMatch::default().matches("/anything"));
        assert!(
            PathMatch::Exact("/foo".into()).matches("/foo")
                && !PathMatch::Exact("/foo".into()).matches("/foo/")
        );
        let re = PathMatch::Regex(Pattern::new("/v[0-9]+/.*").expect("regex"));
        assert!(re.matches("/v2/items") && !re.matches("/x/v2/items"));
        let _ = request("/", None, &none);
    }

    #[test]
    fn headers_query_and_method_all_must_match() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-canary", "yes".parse().expect("value"));
        let m = RequestMatch {
            headers: vec![ValueMatch { name: "x-canary".into(), value: Value::Exact("yes".into()) }],
            query: vec![ValueMatch {
                name: "v".into(),
                value: Value::Regex(Pattern::new("[0-9]+").expect("re")),
            }],
            method: Some(http::Method::GET),
            ..Default::default()
        };
        let e = entry(m);
        assert!(e.matches(&request("/", Some("a=1&v=2&v=x"), &headers)));
        // The first value of a repeated parameter is the one compared.
        assert!(!e.matches(&request("/", Some("v=x&v=2"), &headers)));
        assert!(!e.matches(&request("/", Some("v=2"), &http::HeaderMap::new())));
        let post = Request { method: &http::Method::POST, ..request("/", Some("v=2"), &headers) };
        assert!(!e.matches(&post));
    }

    #[test]
    fn hostnames_and_ports_narrow_an_entry() {
        let none = http::HeaderMap::new();
        let mut e = entry(RequestMatch::default());
        e.hostnames = vec!["*.shop".into()];
        assert!(e.matches(&request("/", None, &none)));
        e.hostnames = vec!["web.shop".into()];
        assert!(!e.matches(&request("/", None, &none)));
        e.hostnames.clear();
        e.port = 8080;
        assert!(!e.matches(&request("/", None, &none)));
        assert!(
            host_matches("*.example.com", "a.b.example.com") && !host_matches("*.example.com", "example.com")
        );
    }
}
