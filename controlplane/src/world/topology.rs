//! Where endpoints are and which ones a client should prefer, in Istio's workload API, derived
//! as istiod derives them for ambient: a Service's `load_balancing` from its spec (and one
//! annotation), a pod's `locality` from its node's topology labels (or its own
//! `istio-locality` label).

use nodemesh_proto::istio::workload as wl;

use crate::model::{Node, Pod, Service};

/// Istio's annotation for Services from before `spec.trafficDistribution` existed.
pub const TRAFFIC_DISTRIBUTION_ANNOTATION: &str = "networking.istio.io/traffic-distribution";
/// Kubernetes' well-known node labels, and Istio's for the subzone.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// A pod's own locality, `region.zone.subzone` (a label value cannot hold Istio's `/`).
pub const LOCALITY_LABEL: &str = "istio-locality";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Distribution {
    SameZone,
    SameNode,
}

/// The field when it names a distribution this knows; else (absent, or a value Kubernetes
/// leaves to implementations) the annotation, whose values are read case-insensitively, as
/// istiod reads them.
fn distribution(svc: &Service) -> Option<Distribution> {
    let known = |value: &str, ignore_case: bool| {
        let is = |name: &str| if ignore_case { value.eq_ignore_ascii_case(name) } else { value == name };
        if is("PreferClose") || is("PreferSameZone") {
            Some(Distribution::SameZone)
        } else if is("PreferSameNode") {
            Some(Distribution::SameNode)
        } else {
            None
        }
    };
    svc.spec.traffic_distribution.as_deref().and_then(|v| known(v, false)).or_else(|| {
        svc.metadata.annotations.get(TRAFFIC_DISTRIBUTION_ANNOTATION).and_then(|v| known(v, true))
    })
}

/// A Service's `load_balancing`; None when it asks for nothing (any endpoint, healthy ones).
pub fn load_balancing(svc: &Service) -> Option<wl::LoadBalancing> {
    use wl::load_balancing::{HealthPolicy, Mode, Scope};
    let prefer = |scopes: &[Scope], mode: Mode| wl::LoadBalancing {
        routing_preference: scopes.iter().map(|s| *s as i32).collect(),
        mode: mode as i32,
        health_policy: HealthPolicy::OnlyHealthy as i32,
    };
    let close = [Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone];
    let mut lb = match distribution(svc) {
        Some(Distribution::SameZone) => Some(prefer(&close, Mode::Failover)),
        Some(Distribution::SameNode) => Some(prefer(&[&close[..], &[Scope::Node]].concat(), Mode::Failover)),
        None => None,
    };
    // Local means the node's endpoints or none: it overrides any preference.
    if svc.spec.internal_traffic_policy.as_deref() == Some("Local") {
        lb = Some(prefer(&[Scope::Node], Mode::Strict));
    }
    if svc.spec.publish_not_ready_addresses {
        lb.get_or_insert_with(wl::LoadBalancing::default).health_policy = HealthPolicy::AllowAll as i32;
    }
    lb
}

/// A pod's locality: its `istio-locality` label when set (Istio lets it override the
/// registry's), else its node's topology labels; None when neither says anything.
pub fn locality(pod: &Pod, node: Option<&Node>) -> Option<wl::Locality> {
    let label = pod.metadata.labels.get(LOCALITY_LABEL).filter(|l| !l.is_empty());
    let locality = match (label, node) {
        (Some(label), _) => {
            // As Istio splits it: one part is the region, two add the zone, a third the
            // subzone; any further part is dropped.
            let mut parts = label.split('.').map(str::to_owned);
            wl::Locality {
                region: parts.next().unwrap_or_default(),
                zone: parts.next().unwrap_or_default(),
                subzone: parts.next().unwrap_or_default(),
            }
        }
        (None, Some(node)) => {
            let label = |key: &str| node.metadata.labels.get(key).cloned().unwrap_or_default();
            wl::Locality {
                region: label(REGION_LABEL),
                zone: label(ZONE_LABEL),
                subzone: label(SUBZONE_LABEL),
            }
        }
        (None, None) => return None,
    };
    (locality != wl::Locality::default()).then_some(locality)
}

#[cfg(test)]
mod tests {
    use wl::load_balancing::{HealthPolicy, Mode, Scope};

    use super::*;
    use crate::model::{ObjectMeta, ServiceSpec};
    use crate::world::tests::pod;

    fn service(spec: ServiceSpec, annotation: Option<&str>) -> Service {
        let mut metadata =
            ObjectMeta { name: "cart".into(), namespace: Some("shop".into()), ..Default::default() };
        if let Some(value) = annotation {
            metadata.annotations.insert(TRAFFIC_DISTRIBUTION_ANNOTATION.into(), value.into());
        }
        Service { metadata, spec }
    }

    fn lb(
        distribution: Option<&str>,
        annotation: Option<&str>,
        local: bool,
        not_ready: bool,
    ) -> Option<wl::LoadBalancing> {
        let spec = ServiceSpec {
            traffic_distribution: distribution.map(Into::into),
            internal_traffic_policy: local.then(|| "Local".into()),
            publish_not_ready_addresses: not_ready,
            ..Default::default()
        };
        load_balancing(&service(spec, annotation))
    }

    fn expect(scopes: &[Scope], mode: Mode, health: HealthPolicy) -> Option<wl::LoadBalancing> {
        Some(wl::LoadBalancing {
            routing_preference: scopes.iter().map(|s| *s as i32).collect(),
            mode: mode as i32,
            health_policy: health as i32,
        })
    }

    #[test]
    fn load_balancing_as_istiod_derives_it() {
        use HealthPolicy::{AllowAll, OnlyHealthy};
        let zone = [Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone];
        let node = [Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone, Scope::Node];
        assert_eq!(lb(None, None, false, false), None, "nothing asked");
        assert_eq!(lb(Some("PreferClose"), None, false, false), expect(&zone, Mode::Failover, OnlyHealthy));
        assert_eq!(
            lb(Some("PreferSameZone"), None, false, false),
            expect(&zone, Mode::Failover, OnlyHealthy)
        );
        assert_eq!(
            lb(Some("PreferSameNode"), None, false, false),
            expect(&node, Mode::Failover, OnlyHealthy)
        );
        // The annotation, any case, when the field is absent or one this does not know.
        assert_eq!(lb(None, Some("preferclose"), false, false), expect(&zone, Mode::Failover, OnlyHealthy));
        assert_eq!(
            lb(Some("example.com/x"), Some("PreferClose"), false, false),
            lb(Some("PreferClose"), None, false, false)
        );
        assert_eq!(
            lb(Some("example.com/x"), None, false, false),
            None,
            "implementation-specific: no preference"
        );
        assert_eq!(lb(Some("preferclose"), None, false, false), None, "the field is matched exactly");
        assert_eq!(
            lb(Some("PreferSameNode"), Some("PreferClose"), false, false),
            lb(Some("PreferSameNode"), None, false, false)
        );
        // Local overrides any preference.
        assert_eq!(lb(None, None, true, false), expect(&[Scope::Node], Mode::Strict, OnlyHealthy));
        assert_eq!(
            lb(Some("PreferClose"), None, true, false),
            expect(&[Scope::Node], Mode::Strict, OnlyHealthy)
        );
        // publishNotReadyAddresses: every endpoint, with or without a preference.
        assert_eq!(lb(None, None, false, true), expect(&[], Mode::UnspecifiedMode, AllowAll));
        assert_eq!(lb(Some("PreferClose"), None, false, true), expect(&zone, Mode::Failover, AllowAll));
        assert_eq!(lb(None, None, true, true), expect(&[Scope::Node], Mode::Strict, AllowAll));
    }

    fn node(labels: &[(&str, &str)]) -> Node {
        let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Node { metadata: ObjectMeta { name: "n1".into(), labels, ..Default::default() } }
    }

    fn place(region: &str, zone: &str, subzone: &str) -> Option<wl::Locality> {
        Some(wl::Locality { region: region.into(), zone: zone.into(), subzone: subzone.into() })
    }

    #[test]
    fn locality_from_the_node_or_the_pods_label() {
        let plain = pod("a", "shop", "n1", &[]);
        let n1 = node(&[(REGION_LABEL, "eu-west"), (ZONE_LABEL, "eu-west-1a"), (SUBZONE_LABEL, "rack4")]);
        assert_eq!(locality(&plain, Some(&n1)), place("eu-west", "eu-west-1a", "rack4"));
        assert_eq!(locality(&plain, Some(&node(&[(ZONE_LABEL, "z")]))), place("", "z", ""));
        assert_eq!(
            locality(&plain, Some(&node(&[("kubernetes.io/os", "linux")]))),
            None,
            "no topology labels"
        );
        assert_eq!(locality(&plain, None), None, "no node");

        // The pod's own label overrides the node's, part by part as Istio splits it.
        for (label, want) in [
            ("us.us-east-1b.r2", place("us", "us-east-1b", "r2")),
            ("us", place("us", "", "")),
            ("us.z", place("us", "z", "")),
            ("us..r2", place("us", "", "r2")),
            ("a.b.c.d", place("a", "b", "c")),
            ("", place("eu-west", "eu-west-1a", "rack4")),
        ] {
            let labelled = pod("a", "shop", "n1", &[(LOCALITY_LABEL, label)]);
            assert_eq!(locality(&labelled, Some(&n1)), want, "{label:?}");
        }
        assert_eq!(locality(&pod("a", "shop", "n1", &[(LOCALITY_LABEL, "us")]), None), place("us", "", ""));
    }
}
