//! Who may claim an address or an identity: the rules that keep one pod from taking another's
//! traffic or policy by naming its address, UID or name.
//!
//! Steering, the same-node shortcut and the authorization directory are all keyed by address,
//! so two objects claiming one address would leave one of them without its interception and
//! its policy, and removing either would tear down the other's. Clashes are therefore settled
//! **by arrival**: the object that claimed first keeps it, the newcomer is refused (naming
//! both), and when the holder goes the claim is free again.

use std::{collections::HashMap, net::IpAddr};

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as the IPv4 address they are: the same
/// address for steering, so also for clashes.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Why `ip` can never be a pod's address, if it cannot: the rule the control plane applies
/// too (`rules::unicast`), so both sides refuse the same addresses.
pub fn not_a_pod_address(ip: IpAddr) -> Option<String> {
    nodemesh_conventions::rules::unicast(ip).err()
}

/// What can be claimed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Claim {
    Address(IpAddr),
    PodUid(String),
    /// `namespace/name` of a pod.
    PodName(String),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Address(ip) => write!(f, "address {ip}"),
            Claim::PodUid(uid) => write!(f, "pod UID {uid}"),
            Claim::PodName(name) => write!(f, "pod name {name}"),
        }
    }
}

pub use crate::report::status::Clash;

/// Claims in the order they are made (callers make them in arrival order).
#[derive(Debug, Default)]
pub struct Claims {
    held: HashMap<Claim, String>,
}

impl Claims {
    /// Claims everything in `claims` for `who`, or nothing if any of it is taken by someone
    /// else (an object is admitted whole or not at all).
    pub fn claim_all(&mut self, who: &str, claims: impl IntoIterator<Item = Claim>) -> Result<(), Clash> {
        let claims: Vec<Claim> = claims.into_iter().map(normalise).collect();
        for claim in &claims {
            if let Some(holder) = self.held.get(claim).filter(|h| *h != who) {
                return Err(Clash {
                    newcomer: who.to_owned(),
                    holder: holder.clone(),
                    claim: claim.to_string(),
                });
            }
        }
        for claim in claims {
            self.held.insert(claim, who.to_owned());
        }
        Ok(())
    }
}

fn normalise(claim: Claim) -> Claim {
    match claim {
        Claim::Address(ip) => Claim::Address(canonical(ip)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_first_claim_wins_whole() {
        let mut c = Claims::default();
        c.claim_all("shop/a", [Claim::Address(ip("10.0.0.1")), Claim::PodUid("a1".into())]).expect("free");
        let e = c
            .claim_all("shop/b", [Claim::Address(ip("10.0.0.2")), Claim::Address(ip("::ffff:10.0.0.1"))])
            .expect_err("the mapped form is the same address");
        assert_eq!((e.newcomer.as_str(), e.holder.as_str()), ("shop/b", "shop/a"));
        assert!(e.to_string().contains("10.0.0.1"), "{e}");
        // Refused whole: 10.0.0.2 stayed free.
        c.claim_all("shop/c", [Claim::Address(ip("10.0.0.2"))]).expect("free");
        // The holder may claim its own again.
        c.claim_all("shop/a", [Claim::Address(ip("10.0.0.1"))]).expect("own");
    }

    #[test]
    fn addresses_no_pod_can_have() {
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "::1",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(not_a_pod_address(ip(bad)).is_some(), "{bad}");
        }
        for good in ["10.244.1.5", "fd00::5", "192.168.1.1"] {
            assert_eq!(not_a_pod_address(ip(good)), None, "{good}");
        }
    }
}
