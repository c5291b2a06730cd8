//! The classify stage: where the connection was going, who is connecting, and what the mesh
//! calls both ends. Pure: the original destination is looked up by the caller (one map
//! operation) and handed in.

use std::{net::IpAddr, sync::Arc};

use super::{
    PodRuntime,
    context::{Accepted, Authenticated, Classified, Party, Protocol},
};
use crate::{directory::Directory, report::flows::Direction};

/// `original` is connect4's record for an outbound connection (unused for inbound, whose
/// destination is the listener's own address); `local_pod` finds an enrolled pod of this node
/// by address.
pub fn classify(
    accepted: &Accepted,
    original: Option<std::net::SocketAddr>,
    directory: &Directory,
    local_pod: impl Fn(&IpAddr) -> Option<Arc<PodRuntime>>,
) -> Classified {
    let pod = &accepted.pod;
    match accepted.direction {
        Direction::Outbound => {
            let dst = original.unwrap_or(accepted.local);
            // The app's side as the network would see it: the pod's address (of the
            // destination's family) and the app's own port.
            let source_ip = pod
                .ips
                .iter()
                .find(|ip| ip.is_ipv4() == dst.is_ipv4())
                .copied()
                .unwrap_or(accepted.peer.ip());
            let destination = directory.workload(&dst.ip());
            Classified {
                original,
                source: Party {
                    addr: (source_ip, accepted.peer.port()).into(),
                    workload: Some(pod_workload(pod, directory, &source_ip)),
                },
                authenticated: Authenticated::LocalPod,
                service: directory.service(&dst, destination.as_deref()),
                destination: Party { addr: dst, workload: destination },
                protocol: Protocol::Tcp,
                local_destination: original.and_then(|dst| local_pod(&dst.ip())),
            }
        }
        Direction::Inbound => {
            let dst = accepted.local;
            let destination = pod_workload(pod, directory, &dst.ip());
            Classified {
                original: Some(dst),
                source: Party { addr: accepted.peer, workload: directory.workload(&accepted.peer.ip()) },
                authenticated: Authenticated::No,
                service: directory.service(&dst, Some(&destination)),
                destination: Party { addr: dst, workload: Some(destination) },
                protocol: Protocol::Tcp,
                local_destination: None,
            }
        }
    }
}

/// An enrolled pod's own name and identity: from the directory when it knows the address,
/// else from the pod's `namespace/name` with the default service account.
fn pod_workload(pod: &PodRuntime, directory: &Directory, ip: &IpAddr) -> Arc<crate::workload::WorkloadRef> {
    directory.workload(ip).unwrap_or_else(|| pod.workload_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        directory::{DirectoryBuilder, Names},
        proxy::testing::pod,
    };

    fn directory() -> Directory {
        let mut d = DirectoryBuilder::default();
        let names = |ns, pod| Names { namespace: ns, pod, service_account: "sa", ..Names::default() };
        d.workload(&["10.0.0.1".parse().expect("ip")], names("shop", "web-1"), []);
        d.workload(&["10.0.0.2".parse().expect("ip")], names("shop", "cart-1"), []);
        d.service(crate::services::tests::named("shop/cart.shop.svc.cluster.local", "10.96.0.9"));
        d.build()
    }

    #[test]
    fn outbound_names_the_pod_as_the_network_sees_it_and_vouches_for_it() {
        let web = pod("shop/web-1", &["10.0.0.1", "fd00::1"]);
        let accepted = Accepted {
            direction: Direction::Outbound,
            pod: Arc::clone(&web),
            peer: "127.0.0.1:40000".parse().expect("addr"),
            local: "127.0.0.1:15001".parse().expect("addr"),
        };
        let cart = pod("shop/cart-1", &["10.0.0.2"]);
        let local = |ip: &IpAddr| (ip.to_string() == "10.0.0.2").then(|| Arc::clone(&cart));
        let c = classify(&accepted, Some("10.0.0.2:8080".parse().expect("addr")), &directory(), local);
        assert_eq!(c.source.addr, "10.0.0.1:40000".parse().expect("addr"));
        assert_eq!(
            c.source.workload.as_deref().map(|w| &*w.identity),
            Some("spiffe://cluster.local/ns/shop/sa/sa")
        );
        assert_eq!(c.authenticated, Authenticated::LocalPod);
        assert_eq!(c.destination.workload.as_deref().map(|w| &*w.pod), Some("cart-1"));
        assert_eq!(c.local_destination.as_deref().map(|p| &*p.name), Some("shop/cart-1"));

        // No record from connect4: the flow still has a destination to be shown under.
        let c = classify(&accepted, None, &directory(), |_| None);
        assert_eq!((c.original, c.destination.addr), (None, accepted.local));
    }

    #[test]
    fn inbound_sources_are_named_but_not_vouched_for() {
        let cart = pod("shop/cart-1", &["10.0.0.2"]);
        let accepted = Accepted {
            direction: Direction::Inbound,
            pod: cart,
            peer: "10.0.0.1:40000".parse().expect("addr"),
            local: "10.0.0.2:8080".parse().expect("addr"),
        };
        let c = classify(&accepted, None, &directory(), |_| None);
        assert_eq!(c.original, Some(accepted.local));
        assert_eq!(c.authenticated, Authenticated::No);
        assert_eq!(c.source.workload.as_deref().map(|w| &*w.pod), Some("web-1"));
        assert_eq!(c.destination.workload.as_deref().map(|w| &*w.pod), Some("cart-1"));
        assert!(c.local_destination.is_none());
    }

    #[test]
    fn a_pod_the_directory_does_not_know_is_named_after_itself() {
        let lone = pod("batch/job-1", &["10.0.0.7"]);
        let accepted = Accepted {
            direction: Direction::Inbound,
            pod: lone,
            peer: "10.9.9.9:1".parse().expect("addr"),
            local: "10.0.0.7:80".parse().expect("addr"),
        };
        let c = classify(&accepted, None, &directory(), |_| None);
        let w = c.destination.workload.expect("named");
        assert_eq!(
            (&*w.namespace, &*w.pod, &*w.identity),
            ("batch", "job-1", "spiffe://cluster.local/ns/batch/sa/default")
        );
    }
}
