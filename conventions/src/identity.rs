//! Workload identities: SPIFFE IDs of the form `spiffe://<trust domain>/ns/<namespace>/sa/<service
//! account>`, as Istio writes them into certificates and ztunnel checks them. The CA issues
//! only these, and a peer presenting anything else is not a mesh workload.

use std::{fmt, str::FromStr};

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

/// Why a string is not a workload identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a workload identity (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)")]
pub struct NotAnIdentity(pub String);

impl FromStr for SpiffeId {
    type Err = NotAnIdentity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NotAnIdentity(crate::text::peer(s).into_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        // A trust domain is a DNS-like name; namespaces and service accounts are DNS labels
        // or subdomains (Kubernetes' rules).
        let trust_domain_ok = !td.is_empty()
            && td.len() <= 255
            && td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !trust_domain_ok
            || crate::rules::dns_label(ns).is_err()
            || crate::rules::dns_subdomain(sa).is_err()
        {
            return Err(bad());
        }
        Ok(Self::new(td, ns, sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_shapes() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().expect("id");
        assert_eq!(id, SpiffeId::new("cluster.local", "shop", "cart"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        for bad in [
            "spiffe://cluster.local/ns/shop/sa",
            "spiffe://cluster.local/ns/shop/sa/cart/extra",
            "spiffe://cluster.local/sa/cart/ns/shop",
            "spiffe:///ns/shop/sa/cart",
            "https://cluster.local/ns/shop/sa/cart",
            "spiffe://Cluster.Local/ns/shop/sa/cart",
            "spiffe://cluster.local/ns/Shop/sa/cart",
            "cart.shop.svc.cluster.local",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
