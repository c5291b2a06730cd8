//! Test doubles for the stages: pods and policies without an agent.

use std::sync::{Arc, atomic::AtomicBool};

use super::{PodRuntime, stats::PodStats};
use crate::{
    authz::{Action, Authorization, MatchSpec, Policies, Scope, StrMatch},
    pods::Netns,
};

/// An enrolled pod, spliceable, in this process's own network namespace (opening it needs no
/// privilege, and nothing here enters it).
pub fn pod(name: &str, ips: &[&str]) -> Arc<PodRuntime> {
    crate::pods::netns::init().expect("own netns");
    Arc::new(PodRuntime {
        name: name.into(),
        ips: ips.iter().map(|ip| ip.parse().expect("ip")).collect(),
        netns: Netns::open(std::path::Path::new("/proc/self/ns/net")).expect("own netns"),
        stats: PodStats::default(),
        splice: AtomicBool::new(true),
        transparent: AtomicBool::new(false),
        tunnels: Default::default(),
    })
}

/// A DENY policy on every workload of `namespace` for sources in `source_namespace`.
pub fn deny_namespace(namespace: &str, name: &str, source_namespace: &str) -> Policies {
    let mut policies = Policies::default();
    policies.insert(Authorization {
        name: name.into(),
        namespace: namespace.into(),
        scope: Scope::Namespace,
        action: Action::Deny,
        rules: vec![vec![vec![MatchSpec {
            namespaces: vec![StrMatch::Exact(source_namespace.into())],
            ..MatchSpec::default()
        }]]],
        dry_run: false,
    });
    policies
}
