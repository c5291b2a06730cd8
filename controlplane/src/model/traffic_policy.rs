//! Nodemesh's TrafficPolicy (`nodemesh.io/v1alpha1`): what Istio has no field for, for one
//! Service of the policy's namespace: per-source rate limits, a fallback service, and holding
//! connections while an autoscaler brings a service up from zero. It reaches the agents in
//! the service's ServicePolicy (`world/service_policy.rs`).

use serde::{Deserialize, Serialize};

use super::{Duration, FieldError, ObjectMeta, err, rules, service_fqdn, validate};

/// `scaleFromZero.holdTimeout` when not given.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_millis(30_000);
/// `scaleFromZero.maxHeld` when not given.
pub const DEFAULT_MAX_HELD: u32 = 100;
/// A URL longer than this is no autoscaler's.
const MAX_URL: usize = 2048;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TrafficPolicySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    /// Required (checked by validation, to say so at the field).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetRef>,
    /// In order: a connection is limited by the first whose principals match its source.
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default)]
    pub fallback: Option<Fallback>,
    #[serde(default)]
    pub scale_from_zero: Option<ScaleFromZero>,
}

/// Gateway API's local policy target reference: a Service of the policy's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// The core group: empty or absent.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Istio's principal form, `*` as a prefix or suffix; empty: every source.
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub connections_per_second: Option<i64>,
    /// The bucket's size; `connectionsPerSecond` when not given.
    #[serde(default)]
    pub burst: Option<i64>,
    #[serde(default)]
    pub max_concurrent: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// A Service: `name` (the policy's namespace) or `name.namespace`.
    #[serde(default)]
    pub service: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleFromZero {
    #[serde(default, rename = "autoscalerURL")]
    pub autoscaler_url: String,
    #[serde(default)]
    pub hold_timeout: Option<Duration>,
    #[serde(default)]
    pub max_held: Option<i64>,
}

impl TrafficPolicy {
    /// The hostname of the Service it targets.
    pub fn service_hostname(&self, domain_suffix: &str) -> String {
        let namespace = self.metadata.namespace.as_deref().unwrap_or_default();
        let name = self.spec.target_ref.as_ref().map_or("", |t| t.name.as_str());
        service_fqdn(name, namespace, domain_suffix)
    }

    /// The fallback Service's (namespace, name), if one is named.
    pub fn fallback(&self) -> Option<(&str, &str)> {
        let service = self.spec.fallback.as_ref()?.service.as_str();
        let own = self.metadata.namespace.as_deref().unwrap_or_default();
        Some(service.split_once('.').unwrap_or((service, own))).map(|(name, ns)| (ns, name))
    }
}

/// A count that must be at least 1 and fit the wire's `uint32`.
fn count(field: String, value: Option<i64>) -> Result<(), FieldError> {
    match value {
        Some(v) if !(1..=i64::from(u32::MAX)).contains(&v) => {
            Err(err(field, format!("{v}: must be at least 1")))
        }
        _ => Ok(()),
    }
}

pub(super) fn validate(policy: &TrafficPolicy) -> Result<(), FieldError> {
    let spec = &policy.spec;
    let target = spec.target_ref.as_ref().ok_or_else(|| err("spec.targetRef", "required: the Service"))?;
    if target.group.as_deref().is_some_and(|g| !g.is_empty()) {
        return Err(err("spec.targetRef.group", "must be empty (the core group, which holds Service)"));
    }
    if target.kind != "Service" {
        return Err(err("spec.targetRef.kind", format!("{:?}: only Service is supported", target.kind)));
    }
    rules::dns1035_label(&target.name).map_err(|m| err("spec.targetRef.name", m))?;
    for (i, limit) in spec.rate_limits.iter().enumerate() {
        let at = format!("spec.rateLimits[{i}]");
        validate::strings(&format!("{at}.principals"), &limit.principals, validate::MAX_PRINCIPAL)?;
        count(format!("{at}.connectionsPerSecond"), limit.connections_per_second)?;
        count(format!("{at}.burst"), limit.burst)?;
        count(format!("{at}.maxConcurrent"), limit.max_concurrent)?;
        if limit.burst.is_some() && limit.connections_per_second.is_none() {
            return Err(err(
                format!("{at}.burst"),
                "needs connectionsPerSecond: it is the size of that bucket",
            ));
        }
        if limit.connections_per_second.is_none() && limit.max_concurrent.is_none() {
            return Err(err(at, "limits nothing: give connectionsPerSecond, maxConcurrent or both"));
        }
    }
    if let Some(fallback) = &spec.fallback {
        let field = "spec.fallback.service";
        if fallback.service.is_empty() {
            return Err(err(field, "required: a Service, as name or name.namespace"));
        }
        let (ns, name) = policy.fallback().unwrap_or_default();
        rules::dns1035_label(name).map_err(|m| err(field, m))?;
        rules::dns_label(ns).map_err(|m| err(field, format!("{ns:?} is not a namespace: {m}")))?;
        if (ns, name) == (policy.metadata.namespace.as_deref().unwrap_or_default(), target.name.as_str()) {
            return Err(err(field, "is the service itself: a fallback must be another service"));
        }
    }
    if let Some(scale) = &spec.scale_from_zero {
        let at = "spec.scaleFromZero";
        http_url(&scale.autoscaler_url).map_err(|m| err(format!("{at}.autoscalerURL"), m))?;
        if scale.hold_timeout.is_some_and(|d| d.millis() == 0) {
            return Err(err(format!("{at}.holdTimeout"), "must be longer than 0"));
        }
        count(format!("{at}.maxHeld"), scale.max_held)?;
    }
    Ok(())
}

/// `http://host[:port][/path]`: what the agent's plain HTTP client can reach. The host is a
/// DNS name, an IPv4 address or a bracketed IPv6 one.
fn http_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("required: where the agent asks for capacity (http://...)".into());
    }
    if url.len() > MAX_URL || !rules::printable(url) {
        return Err(format!("not a URL: longer than {MAX_URL} bytes, or holds spaces or control characters"));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url:?}: only http:// URLs are supported"));
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Err(format!("{url:?}: credentials do not belong in the URL"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (ip, after) = v6.split_once(']').ok_or_else(|| format!("{url:?}: unclosed '['"))?;
            ip.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{url:?}: {ip:?} is not an IPv6 address"))?;
            (None, (!after.is_empty()).then(|| after.strip_prefix(':').unwrap_or(after)))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        },
    };
    if let Some(host) = host {
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !name_ok {
            return Err(format!("{url:?}: {host:?} is not a host name or address"));
        }
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("{url:?}: {port:?} is not a port (1-65535)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::{Object, parse_document};

    use super::*;

    fn parse(spec: &str) -> Result<TrafficPolicy, FieldError> {
        let text = format!(
            "apiVersion: nodemesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: cart, namespace: shop}}\nspec:\n{spec}"
        );
        match parse_document(serde_yaml::from_str(&text).expect("yaml"))? {
            Some(Object::TrafficPolicy(policy)) => Ok((*policy).clone()),
            other => panic!("{other:?}"),
        }
    }

    const TARGET: &str = "  targetRef: {kind: Service, name: cart}\n";

    #[test]
    fn reads_the_example() {
        let policy = parse(&format!(
            "{TARGET}  rateLimits:\n  - principals: [\"cluster.local/ns/shop/sa/web\"]\n    connectionsPerSecond: 10\n    burst: 20\n    maxConcurrent: 5\n\
             \x20 - maxConcurrent: 50\n  fallback: {{service: cart-static}}\n\
             \x20 scaleFromZero: {{autoscalerURL: \"http://10.0.0.1:9090/scale\", holdTimeout: 30s, maxHeld: 100}}\n"
        ))
        .expect("valid");
        assert_eq!(policy.service_hostname("cluster.local"), "cart.shop.svc.cluster.local");
        assert_eq!(policy.spec.rate_limits.len(), 2);
        assert_eq!(policy.fallback(), Some(("shop", "cart-static")));
        let scale = policy.spec.scale_from_zero.as_ref().expect("scale from zero");
        assert_eq!(scale.hold_timeout, Some(Duration::from_millis(30_000)));
        // The other namespace form, and an explicit core group.
        let other = parse(
            "  targetRef: {group: \"\", kind: Service, name: cart}\n  fallback: {service: static.web}\n",
        )
        .expect("valid");
        assert_eq!(other.fallback(), Some(("web", "static")));
    }

    #[test]
    fn urls() {
        for good in
            ["http://10.0.0.1:9090/scale", "http://autoscaler.kube-system", "http://[fd00::1]:80/x?y=1"]
        {
            assert_eq!(http_url(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("https://a/scale", "only http://"),
            ("http://", "not a host"),
            ("http://a b", "spaces"),
            ("http://a:0/", "not a port"),
            ("http://a:x/", "not a port"),
            ("http://u:p@a/", "credentials"),
            ("http://[fd00::1/", "unclosed"),
            ("http://-a/", "not a host"),
        ] {
            let e = http_url(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        for (spec, field, says) in [
            ("  rateLimits: [{maxConcurrent: 1}]\n", "spec.targetRef", "required"),
            ("  targetRef: {kind: Deployment, name: cart}\n", "spec.targetRef.kind", "only Service"),
            ("  targetRef: {group: apps, kind: Service, name: cart}\n", "spec.targetRef.group", "core group"),
            ("  targetRef: {kind: Service, name: Cart}\n", "spec.targetRef.name", ""),
            (
                "  targetRef: {kind: Service, name: cart, namespace: web}\n",
                "spec.targetRef.namespace",
                "unknown field",
            ),
            (
                "{TARGET}  rateLimits: [{connectionsPerSecond: 0}]\n",
                "spec.rateLimits[0].connectionsPerSecond",
                "at least 1",
            ),
            (
                "{TARGET}  rateLimits: [{maxConcurrent: 1}, {connectionsPerSecond: -3}]\n",
                "spec.rateLimits[1].connectionsPerSecond",
                "at least 1",
            ),
            (
                "{TARGET}  rateLimits: [{burst: 5, maxConcurrent: 1}]\n",
                "spec.rateLimits[0].burst",
                "needs connectionsPerSecond",
            ),
            ("{TARGET}  rateLimits: [{principals: [a]}]\n", "spec.rateLimits[0]", "limits nothing"),
            (
                "{TARGET}  rateLimits: [{principals: [\"a*b\"], maxConcurrent: 1}]\n",
                "spec.rateLimits[0].principals[0]",
                "'*'",
            ),
            (
                "{TARGET}  rateLimits: [{maxConcurrent: 1, rate: 3}]\n",
                "spec.rateLimits[0].rate",
                "unknown field",
            ),
            ("{TARGET}  fallback: {service: cart}\n", "spec.fallback.service", "itself"),
            ("{TARGET}  fallback: {service: \"\"}\n", "spec.fallback.service", "required"),
            ("{TARGET}  fallback: {service: a.b.c}\n", "spec.fallback.service", "not a namespace"),
            ("{TARGET}  scaleFromZero: {holdTimeout: 1s}\n", "spec.scaleFromZero.autoscalerURL", "required"),
            (
                "{TARGET}  scaleFromZero: {autoscalerURL: \"https://a\"}\n",
                "spec.scaleFromZero.autoscalerURL",
                "http://",
            ),
            (
                "{TARGET}  scaleFromZero: {autoscalerURL: \"http://a\", holdTimeout: 0s}\n",
                "spec.scaleFromZero.holdTimeout",
                "longer than 0",
            ),
            (
                "{TARGET}  scaleFromZero: {autoscalerURL: \"http://a\", maxHeld: 0}\n",
                "spec.scaleFromZero.maxHeld",
                "at least 1",
            ),
        ] {
            let spec = spec.replace("{TARGET}", TARGET);
            let e = parse(&spec).expect_err(&spec);
            assert_eq!(e.field, field, "{spec}: {e}");
            assert!(e.message.contains(says), "{spec}: {e}");
        }
    }
}
