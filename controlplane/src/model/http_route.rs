//! Gateway API's HTTPRoute (`gateway.networking.k8s.io/v1`, or `v1beta1`) in mesh mode (GAMMA):
//! routes attached to a Service through `parentRefs`, which the node proxy's HTTP stage applies
//! to requests sent to that Service. Nodemesh has no gateways, so a Gateway parent is refused;
//! so is what the HTTP stage cannot do (mirrors, extension filters, section names). The routes
//! reach the agents as the service's `nodemesh.v1.HttpRoutes` (`world/http_routes.rs`).
//!
//! Bounds are the CRD's, so a route Kubernetes would store is one read here, and none makes a
//! resource heavier than the API server would let it.

use serde::{Deserialize, Serialize};

use super::{Duration, FieldError, ObjectMeta, err, rules};

const MAX_PARENT_REFS: usize = 16;
const MAX_HOSTNAMES: usize = 16;
const MAX_RULES: usize = 64;
const MAX_MATCHES: usize = 64;
const MAX_VALUE_MATCHES: usize = 16;
const MAX_FILTERS: usize = 16;
const MAX_BACKEND_REFS: usize = 16;
/// Gateway API's bound on a path match or modifier, and on a regular expression.
const MAX_PATH: usize = 1024;
/// Gateway API's bounds on header names, header values and query parameter values.
const MAX_NAME: usize = 256;
const MAX_HEADER_VALUE: usize = 4096;
const MAX_QUERY_VALUE: usize = 1024;
/// `weight`: Gateway API's range.
const MAX_WEIGHT: i64 = 1_000_000;
/// A compiled regular expression larger than this is refused: the agent holds one per match.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// DNS names, `*.` prefix allowed; empty: any Host.
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    /// The core group: empty or absent.
    #[serde(default)]
    pub group: Option<String>,
    /// Gateway API's default is `Gateway`, which is refused: it must say `Service`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    /// Absent: the route's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Absent: every port of the service.
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub section_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// None: one match of every path (a `/` prefix).
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    #[serde(default)]
    pub retry: Option<Retry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    #[serde(default)]
    pub method: Option<Method>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PathType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, rename = "type")]
    pub kind: PathType,
    /// Absent: `/`.
    #[serde(default)]
    pub value: Option<String>,
}

impl PathMatch {
    pub fn value(&self) -> &str {
        self.value.as_deref().unwrap_or("/")
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueType {
    #[default]
    Exact,
    RegularExpression,
}

/// A header or query parameter match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    #[serde(default, rename = "type")]
    pub kind: ValueType,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl Method {
    /// As HTTP (and Gateway API) spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    RequestMirror,
    ExtensionRef,
}

/// One filter: `type` and the one sub-object that type names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: FilterType,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Read only to refuse them by name (not supported).
    #[serde(default)]
    pub request_mirror: Option<serde_yaml::Value>,
    #[serde(default)]
    pub extension_ref: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<Header>,
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    #[serde(default)]
    pub port: Option<i64>,
    /// 301 or 302 (the default).
    #[serde(default)]
    pub status_code: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

impl PathModifier {
    /// The replacement its type names (validation has checked it is there).
    pub fn value(&self) -> &str {
        match self.kind {
            PathModifierType::ReplaceFullPath => self.replace_full_path.as_deref(),
            PathModifierType::ReplacePrefixMatch => self.replace_prefix_match.as_deref(),
        }
        .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    #[serde(default)]
    pub group: Option<String>,
    /// Absent: Service.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    /// Absent: the route's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Required: Gateway API requires it for a Service.
    #[serde(default)]
    pub port: Option<i64>,
    /// Absent: 1.
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// Gateway API writes durations as `10s`, `500ms`, `1h`, `1m30s`: a subset of what
/// [`Duration`] reads (Istio's form, which also takes fractions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default)]
    pub request: Option<Duration>,
    #[serde(default)]
    pub backend_request: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default)]
    pub codes: Vec<i64>,
    #[serde(default)]
    pub attempts: Option<i64>,
    #[serde(default)]
    pub backoff: Option<Duration>,
}

impl HttpRoute {
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or_default()
    }
}

mod validate;
pub(super) use validate::validate;

#[cfg(test)]
mod tests;
