//! A service's traffic settings (the `nodemesh.v1.ServicePolicy` resource, from its
//! DestinationRule and TrafficPolicy), with what applies when a service has none.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the proxy picks among a tier's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Power of two choices over least outstanding connections, each weighted by an EWMA
    /// of its connect latency (Linkerd's balancer): a slow or busy endpoint gets less.
    #[default]
    P2cEwma,
    RoundRobin,
    Random,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePolicy {
    pub algorithm: Algorithm,
    /// The connection's whole connect budget, retries included; `None`: the agent's.
    #[serde(with = "millis_opt", default)]
    pub connect_timeout: Option<Duration>,
    /// Connections to the service open at once from this node (pending connects included);
    /// `None`: unbounded.
    pub max_connections: Option<u32>,
    pub outlier_detection: Option<OutlierDetection>,
    pub rate_limits: Vec<RateLimit>,
    /// `namespace/hostname` of the service that takes the connections this one cannot.
    pub fallback: Option<String>,
    pub scale_from_zero: Option<ScaleFromZero>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierDetection {
    pub consecutive_errors: u32,
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// Connection limits per source identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Istio principal patterns (`*` as a prefix or suffix wildcard); empty: every source.
    pub principals: Vec<String>,
    /// New connections per second; 0: unlimited.
    pub connections_per_second: u32,
    pub burst: u32,
    /// Open at once; 0: unlimited.
    pub max_concurrent: u32,
}

impl RateLimit {
    /// Whether the limit applies to a source of this identity (a SPIFFE URI, or none when
    /// the proxy does not know who the source is).
    pub fn applies_to(&self, identity: Option<&str>) -> bool {
        if self.principals.is_empty() {
            return true;
        }
        // Istio principals are SPIFFE identities without the scheme.
        let Some(principal) = identity.map(|i| i.strip_prefix("spiffe://").unwrap_or(i)) else {
            return false;
        };
        self.principals.iter().any(|p| {
            if p == "*" {
                true
            } else if let Some(prefix) = p.strip_suffix('*') {
                principal.starts_with(prefix)
            } else if let Some(suffix) = p.strip_prefix('*') {
                principal.ends_with(suffix)
            } else {
                p == principal
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleFromZero {
    pub autoscaler_url: String,
    #[serde(with = "millis")]
    pub hold_timeout: Duration,
    pub max_held: u32,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod millis_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|o| o.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_match_principals_with_wildcards() {
        let limit = |p: &[&str]| RateLimit {
            principals: p.iter().map(|s| s.to_string()).collect(),
            connections_per_second: 1,
            burst: 1,
            max_concurrent: 0,
        };
        let web = Some("spiffe://cluster.local/ns/shop/sa/web");
        assert!(limit(&[]).applies_to(web) && limit(&[]).applies_to(None));
        assert!(limit(&["cluster.local/ns/shop/sa/web"]).applies_to(web));
        assert!(limit(&["cluster.local/ns/shop/*"]).applies_to(web));
        assert!(limit(&["*/sa/web"]).applies_to(web));
        assert!(!limit(&["cluster.local/ns/shop/sa/cart"]).applies_to(web));
        // An unknown source matches only a limit for everyone.
        assert!(!limit(&["*"]).applies_to(None));
    }
}
