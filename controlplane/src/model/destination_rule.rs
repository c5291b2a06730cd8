//! Istio's DestinationRule (`networking.istio.io/v1`, also `v1beta1` and `v1alpha3`): what of
//! it a node proxy applies to a connection, for the one Service its `host` names: the
//! load-balancing algorithm, the TCP connection pool and outlier detection. They reach the
//! agents in that service's ServicePolicy (`world/service_policy.rs`).
//!
//! Every other field Istio defines is refused, named, with the reason: served without it,
//! the rule would do something other than what it says. `exportTo` and `tcpKeepalive` are
//! the exceptions, accepted and ignored (why is at each).

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::{Duration, FieldError, ObjectMeta, err, rules, service_fqdn};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRule {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DestinationRuleSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The Service: `cart`, `cart.shop`, `cart.shop.svc` or `cart.shop.svc.<domain suffix>`.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<DestinationTrafficPolicy>,
    /// Which namespaces' clients the rule is for. Ignored: one ServicePolicy per service
    /// serves the clients of every namespace, so a rule meant for some applies to all. It
    /// tunes how connections are made (how many, how fast, to which endpoint), never whether
    /// one is allowed, so ignoring it widens no access.
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subsets: Option<Value>,
    #[serde(default)]
    pub workload_selector: Option<Value>,
}

/// Istio's `TrafficPolicy` message (not Nodemesh's TrafficPolicy kind).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationTrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<Value>,
    #[serde(default)]
    pub port_level_settings: Option<Value>,
    #[serde(default)]
    pub tunnel: Option<Value>,
    #[serde(default)]
    pub proxy_protocol: Option<Value>,
    #[serde(default)]
    pub retry_budget: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub simple: Option<SimpleLb>,
    #[serde(default)]
    pub consistent_hash: Option<Value>,
    #[serde(default)]
    pub locality_lb_setting: Option<Value>,
    #[serde(default)]
    pub warmup_duration_secs: Option<Value>,
    #[serde(default)]
    pub warmup: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    RoundRobin,
    Random,
    LeastRequest,
    /// Istio's older name for LEAST_REQUEST.
    LeastConn,
    /// Refused by validation (it has no meaning for a service's VIP; see there).
    Passthrough,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Connections open at once to the service from one node (Istio: from one proxy).
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub connect_timeout: Option<Duration>,
    /// Accepted and ignored: the agent's sockets keep the kernel's keepalive settings.
    /// Keepalives only find dead peers sooner; without them a rule still does all it says
    /// about who connects where, and Istio users set them widely, so refusing would only
    /// break their rules. Typed, so that a misspelt field is still refused.
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub max_connection_duration: Option<Value>,
    #[serde(default)]
    pub idle_timeout: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default)]
    pub probes: Option<u32>,
    #[serde(default)]
    pub time: Option<Duration>,
    #[serde(default)]
    pub interval: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub base_ejection_time: Option<Duration>,
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    /// Envoy's panic threshold: below this share of healthy endpoints, ejection stops.
    /// Only Istio's default, 0 (no threshold), is accepted: the agent has no such threshold,
    /// and `maxEjectionPercent` already keeps ejection from emptying a service.
    #[serde(default)]
    pub min_health_percent: Option<i64>,
    /// Accepted: at L4 every failure the agent sees is local-origin (a connect that fails
    /// or times out), so with this set `consecutiveLocalOriginFailures` is the threshold,
    /// exactly as in Envoy, and without it the 5xx and gateway counts are. Istio users set
    /// both for TCP services, so they are honoured rather than refused.
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    /// Counted only with `splitExternalLocalOriginErrors`, as in Envoy (accepted either way,
    /// as Istio accepts it).
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
}

impl DestinationRule {
    /// The hostname of the Service `spec.host` names, as a pod in the rule's namespace would
    /// resolve it: `cart` is `cart.<its namespace>.svc.<suffix>`, `cart.shop` and
    /// `cart.shop.svc` are `cart.shop.svc.<suffix>`; anything longer is taken as written.
    /// (Istio expands only the single-label form; the two others are how Kubernetes DNS
    /// search paths read them, and what users who write them mean.)
    pub fn service_hostname(&self, domain_suffix: &str) -> String {
        let namespace = self.metadata.namespace.as_deref().unwrap_or_default();
        let host = self.spec.host.as_str();
        match host.split('.').collect::<Vec<_>>()[..] {
            [name] => service_fqdn(name, namespace, domain_suffix),
            [name, ns] | [name, ns, "svc"] => service_fqdn(name, ns, domain_suffix),
            _ => host.to_owned(),
        }
    }
}

/// A field Istio defines that Nodemesh does not honour: refused, named, with why.
fn unsupported(field: String, why: &str) -> FieldError {
    err(field, format!("Nodemesh does not support this at L4: {why}"))
}

fn refuse_present(at: &str, fields: &[(&str, bool, &str)]) -> Result<(), FieldError> {
    match fields.iter().find(|(_, present, _)| *present) {
        Some((name, _, why)) => Err(unsupported(format!("{at}.{name}"), why)),
        None => Ok(()),
    }
}

fn positive(field: &str, d: Option<Duration>) -> Result<(), FieldError> {
    match d {
        Some(d) if d.millis() == 0 => Err(err(field, "must be longer than 0")),
        _ => Ok(()),
    }
}

fn percent(field: &str, p: Option<i64>) -> Result<(), FieldError> {
    match p {
        Some(p) if !(0..=100).contains(&p) => Err(err(field, format!("{p} is not a percentage (0-100)"))),
        _ => Ok(()),
    }
}

pub(super) fn validate(rule: &DestinationRule) -> Result<(), FieldError> {
    let spec = &rule.spec;
    if spec.host.is_empty() {
        return Err(err("spec.host", "required: the Service the rule is for"));
    }
    if spec.host.contains('*') {
        return Err(err("spec.host", "a wildcard host: Nodemesh applies a rule to the one Service it names"));
    }
    rules::dns_subdomain(&spec.host).map_err(|m| err("spec.host", m))?;
    refuse_present(
        "spec",
        &[
            (
                "subsets",
                spec.subsets.is_some(),
                "subsets are picked by L7 routes; a node proxy balances over the whole service",
            ),
            (
                "workloadSelector",
                spec.workload_selector.is_some(),
                "it picks the sidecars a rule applies to; here a rule applies to the service, for every client",
            ),
        ],
    )?;
    let Some(policy) = &spec.traffic_policy else { return Ok(()) };
    let at = "spec.trafficPolicy";
    refuse_present(
        at,
        &[
            (
                "tls",
                policy.tls.is_some(),
                "the mesh carries its traffic in HBONE with its own mutual TLS; TLS origination needs a proxy that terminates",
            ),
            (
                "portLevelSettings",
                policy.port_level_settings.is_some(),
                "settings apply to the whole service; set them in trafficPolicy",
            ),
            ("tunnel", policy.tunnel.is_some(), "tunnelling through another proxy is not supported"),
            (
                "proxyProtocol",
                policy.proxy_protocol.is_some(),
                "the agent does not send the PROXY protocol header",
            ),
            ("retryBudget", policy.retry_budget.is_some(), "retries are an L7 feature"),
        ],
    )?;
    if let Some(lb) = &policy.load_balancer {
        let at = format!("{at}.loadBalancer");
        if lb.simple == Some(SimpleLb::Passthrough) {
            return Err(unsupported(
                format!("{at}.simple"),
                "PASSTHROUGH sends to the address the client asked for; a connection to a service VIP must pick an endpoint",
            ));
        }
        refuse_present(
            &at,
            &[
                ("consistentHash", lb.consistent_hash.is_some(), "endpoints are not picked by hash"),
                (
                    "localityLbSetting",
                    lb.locality_lb_setting.is_some(),
                    "locality preference comes from the Service's spec.trafficDistribution and spec.internalTrafficPolicy",
                ),
                ("warmupDurationSecs", lb.warmup_duration_secs.is_some(), "new endpoints are not warmed up"),
                ("warmup", lb.warmup.is_some(), "new endpoints are not warmed up"),
            ],
        )?;
    }
    if let Some(pool) = &policy.connection_pool {
        let at = format!("{at}.connectionPool");
        refuse_present(&at, &[("http", pool.http.is_some(), "HTTP settings need an L7 proxy")])?;
        if let Some(tcp) = &pool.tcp {
            let at = format!("{at}.tcp");
            if let Some(max) = tcp.max_connections
                && !(1..=i64::from(u32::MAX)).contains(&max)
            {
                return Err(err(format!("{at}.maxConnections"), format!("{max}: must be at least 1")));
            }
            positive(&format!("{at}.connectTimeout"), tcp.connect_timeout)?;
            refuse_present(
                &at,
                &[
                    (
                        "maxConnectionDuration",
                        tcp.max_connection_duration.is_some(),
                        "connections are not closed by age",
                    ),
                    (
                        "idleTimeout",
                        tcp.idle_timeout.is_some(),
                        "idle connections are not closed by the proxy",
                    ),
                ],
            )?;
        }
    }
    if let Some(od) = &policy.outlier_detection {
        let at = format!("{at}.outlierDetection");
        positive(&format!("{at}.interval"), od.interval)?;
        positive(&format!("{at}.baseEjectionTime"), od.base_ejection_time)?;
        percent(&format!("{at}.maxEjectionPercent"), od.max_ejection_percent)?;
        let field = format!("{at}.minHealthPercent");
        percent(&field, od.min_health_percent)?;
        if od.min_health_percent.is_some_and(|p| p != 0) {
            return Err(unsupported(
                field,
                "there is no panic threshold; maxEjectionPercent bounds how much of a service is ejected",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
