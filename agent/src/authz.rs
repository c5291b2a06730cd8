//! L4 authorization: Istio's `Authorization` resources (from AuthorizationPolicies) checked by
//! the destination's proxy before it connects, the way ztunnel enforces them.
//!
//! A connection is denied when a DENY policy that applies to the destination matches it;
//! otherwise it is allowed when no ALLOW policy applies, or when one of them matches. A policy
//! applies to a workload when it is mesh-wide (the root namespace), in the workload's
//! namespace without a selector, or selected (listed in the workload's
//! `authorization_policies`). Dry-run policies are evaluated and logged, never enforced.
//!
//! The source's identity counts only where the proxy knows it first-hand: a pod on this node
//! whose connection it accepted inside that pod. A plaintext connection from anywhere else
//! is unauthenticated, so principal and namespace rules never match it (their negations do),
//! whatever its source address claims.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

mod policy;

pub use policy::{Action, Authorization, Cidr, MatchSpec, Scope, StrMatch};

use crate::workload::WorkloadRef;

/// Every policy the node holds, indexed by where it applies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Policies {
    global: Vec<Arc<Authorization>>,
    by_namespace: HashMap<String, Vec<Arc<Authorization>>>,
    /// `namespace/name` → selector policy.
    by_name: HashMap<String, Arc<Authorization>>,
}

/// The connecting side, as far as the proxy can vouch for it.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub ip: IpAddr,
    /// The SPIFFE identity when authenticated: a pod of this node, seen from inside it, or an
    /// HBONE peer, by the certificate it presented.
    pub identity: Option<&'a str>,
}

impl Policies {
    pub fn insert(&mut self, policy: Authorization) {
        let policy = Arc::new(policy);
        match policy.scope {
            Scope::Global => self.global.push(policy),
            Scope::Namespace => self.by_namespace.entry(policy.namespace.clone()).or_default().push(policy),
            Scope::WorkloadSelector => {
                self.by_name.insert(format!("{}/{}", policy.namespace, policy.name), policy);
            }
        }
    }

    /// Whether `source` may connect to `destination` at `to`; the error is the flow's reason.
    pub fn check(
        &self,
        destination: &WorkloadRef,
        to: SocketAddr,
        source: &Caller<'_>,
    ) -> Result<(), String> {
        let selected = destination.policies.iter().filter_map(|name| self.by_name.get(&**name));
        let namespaced = self.by_namespace.get(&*destination.namespace).into_iter().flatten();
        let (mut allow_policies, mut allowed) = (0, false);
        for policy in self.global.iter().chain(namespaced).chain(selected) {
            let matched = policy.rules.iter().any(|rule| rule_matches(rule, to, source));
            if policy.dry_run {
                tracing::info!(
                    policy = %format!("{}/{}", policy.namespace, policy.name),
                    action = ?policy.action,
                    matched,
                    "dry-run authorization policy (not enforced)"
                );
                continue;
            }
            match policy.action {
                Action::Deny if matched => {
                    return Err(format!("denied_by:{}/{}", policy.namespace, policy.name));
                }
                Action::Deny => {}
                Action::Allow => {
                    allow_policies += 1;
                    allowed |= matched;
                }
            }
        }
        if allow_policies == 0 || allowed { Ok(()) } else { Err("no_allow_policy_matched".into()) }
    }
}

/// A rule holds when each of its clauses does (a rule with none holds for everyone); a clause
/// holds when any of its matches does.
fn rule_matches(clauses: &[Vec<MatchSpec>], to: SocketAddr, source: &Caller<'_>) -> bool {
    clauses.iter().all(|matches| matches.iter().any(|m| spec_matches(m, to, source)))
}

/// Every non-empty field holds: a listed value matches, and no value of a `not_` list does.
fn spec_matches(m: &MatchSpec, to: SocketAddr, source: &Caller<'_>) -> bool {
    // `cluster.local/ns/<ns>/sa/<sa>`: the SPIFFE identity without its scheme, as policies
    // write principals; the namespace and service account are the identity's, as ztunnel
    // reads them.
    let principal = source.identity.map(|id| id.strip_prefix("spiffe://").unwrap_or(id));
    let (namespace, service_account) = principal.and_then(namespace_and_account).unzip();
    let strs =
        |list: &[StrMatch], value: Option<&str>| value.is_some_and(|v| list.iter().any(|s| s.matches(v)));
    let accounts = |list: &[(String, String)]| matches!((namespace, service_account), (Some(ns), Some(sa)) if list.iter().any(|(n, s)| n == ns && s == sa));
    let cidrs = |list: &[Cidr], ip: IpAddr| list.iter().any(|c| c.contains(ip));
    let ports = |list: &[u16]| list.contains(&to.port());
    let positive = |empty: bool, holds: bool| empty || holds;
    positive(m.namespaces.is_empty(), strs(&m.namespaces, namespace))
        && !strs(&m.not_namespaces, namespace)
        && positive(m.principals.is_empty(), strs(&m.principals, principal))
        && !strs(&m.not_principals, principal)
        && positive(m.service_accounts.is_empty(), accounts(&m.service_accounts))
        && !accounts(&m.not_service_accounts)
        && positive(m.source_ips.is_empty(), cidrs(&m.source_ips, source.ip))
        && !cidrs(&m.not_source_ips, source.ip)
        && positive(m.destination_ips.is_empty(), cidrs(&m.destination_ips, to.ip()))
        && !cidrs(&m.not_destination_ips, to.ip())
        && positive(m.destination_ports.is_empty(), ports(&m.destination_ports))
        && !ports(&m.not_destination_ports)
}

/// `<td>/ns/<ns>/sa/<sa>` → (ns, sa).
fn namespace_and_account(principal: &str) -> Option<(&str, &str)> {
    let mut parts = principal.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
        _ => None,
    }
}

impl StrMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(s) => value == s,
            StrMatch::Prefix(s) => value.starts_with(s.as_str()),
            StrMatch::Suffix(s) => value.ends_with(s.as_str()),
            StrMatch::Present => !value.is_empty(),
        }
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        let prefix = |a: u128, b: u128, bits: u32, len: u32| len == 0 || (a ^ b) >> (bits - len) == 0;
        match (self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix(u32::from(net).into(), u32::from(ip).into(), 32, self.len.into())
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix(net.into(), ip.into(), 128, self.len.into()),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{DirectoryBuilder, Names};

    fn policy(name: &str, scope: Scope, action: Action, rules: Vec<Vec<Vec<MatchSpec>>>) -> Authorization {
        Authorization { name: name.into(), namespace: "shop".into(), scope, action, rules, dry_run: false }
    }

    fn from_namespace(ns: &str) -> MatchSpec {
        MatchSpec { namespaces: vec![StrMatch::Exact(ns.into())], ..Default::default() }
    }

    fn workloads() -> (Arc<WorkloadRef>, Arc<WorkloadRef>) {
        let mut d = DirectoryBuilder::default();
        let cart = ["shop/only-frontend".to_owned()];
        let names = Names { namespace: "shop", pod: "cart-0", policies: &cart, ..Default::default() };
        d.workload(&[IpAddr::from([10, 0, 0, 1])], names, []);
        let names =
            Names { namespace: "web", pod: "frontend-0", service_account: "frontend", ..Default::default() };
        d.workload(&[IpAddr::from([10, 0, 0, 2])], names, []);
        let d = d.build();
        (
            d.workload(&IpAddr::from([10, 0, 0, 1])).expect("cart"),
            d.workload(&IpAddr::from([10, 0, 0, 2])).expect("frontend"),
        )
    }

    const TO: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 8080);

    #[test]
    fn nothing_applies_so_everything_is_allowed() {
        let (cart, frontend) = workloads();
        let source = Caller { ip: IpAddr::from([10, 0, 0, 2]), identity: Some(&frontend.identity) };
        assert_eq!(Policies::default().check(&cart, TO, &source), Ok(()));
    }

    #[test]
    fn a_selected_allow_policy_admits_only_what_it_matches() {
        let (cart, frontend) = workloads();
        let mut p = Policies::default();
        p.insert(policy(
            "only-frontend",
            Scope::WorkloadSelector,
            Action::Allow,
            vec![vec![vec![from_namespace("web")]]],
        ));
        let authenticated = Caller { ip: IpAddr::from([10, 0, 0, 2]), identity: Some(&frontend.identity) };
        assert_eq!(p.check(&cart, TO, &authenticated), Ok(()));
        // The same address in plaintext from elsewhere proves nothing.
        let claimed = Caller { ip: IpAddr::from([10, 0, 0, 2]), identity: None };
        assert_eq!(p.check(&cart, TO, &claimed), Err("no_allow_policy_matched".into()));
        // The frontend is not selected, so nothing applies to it.
        assert_eq!(p.check(&frontend, TO, &claimed), Ok(()));
    }

    #[test]
    fn deny_wins_and_matches_ports_principals_and_addresses() {
        let (cart, frontend) = workloads();
        let source = Caller { ip: IpAddr::from([10, 0, 0, 2]), identity: Some(&frontend.identity) };
        let mut p = Policies::default();
        p.insert(policy("allow-all", Scope::Namespace, Action::Allow, vec![vec![]]));
        let port = MatchSpec { destination_ports: vec![8080], ..Default::default() };
        let principal = MatchSpec {
            principals: vec![StrMatch::Exact("cluster.local/ns/web/sa/frontend".into())],
            ..Default::default()
        };
        p.insert(policy(
            "no-frontend-on-8080",
            Scope::Namespace,
            Action::Deny,
            vec![vec![vec![port], vec![principal]]],
        ));
        assert_eq!(p.check(&cart, TO, &source), Err("denied_by:shop/no-frontend-on-8080".into()));
        assert_eq!(p.check(&cart, SocketAddr::new(TO.ip(), 9090), &source), Ok(()));
        let elsewhere = Caller { ip: IpAddr::from([192, 168, 1, 9]), identity: None };
        assert_eq!(p.check(&cart, TO, &elsewhere), Ok(()), "no principal, so the DENY does not match");

        let mut p = Policies::default();
        let outside = MatchSpec {
            not_source_ips: vec![Cidr { ip: IpAddr::from([10, 0, 0, 0]), len: 8 }],
            ..Default::default()
        };
        p.insert(policy("cluster-only", Scope::Global, Action::Deny, vec![vec![vec![outside]]]));
        assert_eq!(p.check(&cart, TO, &elsewhere), Err("denied_by:shop/cluster-only".into()));
        assert_eq!(p.check(&cart, TO, &source), Ok(()));
    }

    #[test]
    fn an_allow_policy_without_rules_denies_and_dry_runs_are_not_enforced() {
        let (cart, frontend) = workloads();
        let source = Caller { ip: IpAddr::from([10, 0, 0, 2]), identity: Some(&frontend.identity) };
        let mut p = Policies::default();
        let mut dry = policy("deny-all-dry", Scope::Namespace, Action::Deny, vec![vec![]]);
        dry.dry_run = true;
        p.insert(dry);
        assert_eq!(p.check(&cart, TO, &source), Ok(()));
        p.insert(policy("allow-nothing", Scope::Namespace, Action::Allow, vec![]));
        assert_eq!(p.check(&cart, TO, &source), Err("no_allow_policy_matched".into()));
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let net = Cidr { ip: IpAddr::from([10, 1, 0, 0]), len: 16 };
        assert!(net.contains(IpAddr::from([10, 1, 200, 3])) && !net.contains(IpAddr::from([10, 2, 0, 1])));
        let all = Cidr { ip: IpAddr::from([0, 0, 0, 0]), len: 0 };
        assert!(all.contains(IpAddr::from([8, 8, 8, 8])) && !all.contains("fd00::1".parse().expect("v6")));
        let v6 = Cidr { ip: "fd00:10::".parse().expect("v6"), len: 32 };
        assert!(
            v6.contains("fd00:10::5".parse().expect("v6")) && !v6.contains("fd00:11::5".parse().expect("v6"))
        );
    }
}
