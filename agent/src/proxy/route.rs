//! The route stage: from the destination to the endpoint to connect to, where to connect
//! from, and how the bytes may move. Today the endpoint is the original destination; the
//! service-routing issue resolves a service address to a balanced, healthy endpoint here.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use nodemesh_common::ports::PROXY_SOURCE_V4;

use super::{PodRuntime, context::Accepted, context::Classified};
use crate::report::flows::Direction;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Route {
    pub endpoint: SocketAddr,
    /// The pod whose network namespace the upstream socket is opened in.
    pub from_pod: Arc<PodRuntime>,
    /// The source address to bind, when the upstream goes to an app inside `from_pod`
    /// (127.0.0.6 or ::1, which sk_lookup never steers back into the proxy).
    pub source: Option<IpAddr>,
    /// Whether the connection may be handed to the kernel splice.
    pub splice: bool,
    /// Which of the proxy's sockets faces the network, for the flow's kernel records.
    pub network_leg: NetworkLeg,
    /// Carried in HBONE (to a captured workload on another node), rather than plain TCP.
    pub tunnel: Option<Tunnel>,
    /// `source` is another host's address (the client's, kept by the HBONE server): bound
    /// with `IP_TRANSPARENT` and marked (`pods::transparent`).
    pub transparent: bool,
}

/// Where the tunnel goes and who must be at the other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// The source pod's identity: its certificate is presented.
    pub source_identity: Arc<str>,
    /// The identity the destination must present.
    pub destination_identity: Arc<str>,
    /// `<pod IP>:15008`.
    pub peer: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkLeg {
    /// The accepted socket came in through the pod's veth (inbound).
    Accepted,
    /// The upstream socket leaves through the pod's veth (outbound to another node).
    Upstream,
    /// Both legs stay inside pods of this node (loopback).
    None,
}

/// The route settings the proxy was started with.
#[derive(Clone, Copy, Debug)]
pub struct RouteSettings {
    /// Whether connections with a leg that receives from the network are spliced too.
    pub splice_network_legs: bool,
    /// The HBONE port, when this node speaks HBONE (it has a CA and the mesh root).
    pub hbone_port: Option<u16>,
}

/// Why there is nowhere to send the connection (the flow's reason).
pub const NO_ORIGINAL_DESTINATION: &str = "no_original_destination";

pub fn route(
    accepted: &Accepted,
    classified: &Classified,
    settings: RouteSettings,
) -> Result<Route, &'static str> {
    // Not a connection connect4 redirected (or its entry was evicted).
    let endpoint = classified.original.ok_or(NO_ORIGINAL_DESTINATION)?;
    let pod = &accepted.pod;
    Ok(match (accepted.direction, &classified.local_destination) {
        // Same node and enrolled: straight into the destination pod's namespace instead of out
        // through the network and back in through its inbound listener.
        (Direction::Outbound, Some(target)) => Route {
            endpoint,
            from_pod: Arc::clone(target),
            source: Some(local_app_source(&endpoint)),
            splice: pod.splice() && target.splice(),
            network_leg: NetworkLeg::None,
            tunnel: None,
            transparent: false,
        },
        (Direction::Outbound, None) => {
            let tunnel = tunnel(classified, settings);
            Route {
                endpoint,
                from_pod: Arc::clone(pod),
                source: None,
                // The kernel cannot splice into a TLS stream.
                splice: pod.splice() && settings.splice_network_legs && tunnel.is_none(),
                network_leg: NetworkLeg::Upstream,
                tunnel,
                transparent: false,
            }
        }
        (Direction::Inbound, _) => Route {
            endpoint,
            from_pod: Arc::clone(pod),
            source: Some(local_app_source(&endpoint)),
            splice: pod.splice() && settings.splice_network_legs,
            network_leg: NetworkLeg::Accepted,
            tunnel: None,
            transparent: false,
        },
    })
}

/// HBONE when this node speaks it and the destination is a captured workload (its node
/// proxy terminates HBONE on its port 15008), as ztunnel decides by the workload's tunnel
/// protocol. Anything else (outside the mesh, not captured) stays plain TCP.
fn tunnel(classified: &Classified, settings: RouteSettings) -> Option<Tunnel> {
    let port = settings.hbone_port?;
    let destination = classified.destination.workload.as_ref().filter(|w| w.captured)?;
    let source = classified.source.workload.as_ref()?;
    Some(Tunnel {
        source_identity: Arc::clone(&source.identity),
        destination_identity: Arc::clone(&destination.identity),
        peer: SocketAddr::new(classified.destination.addr.ip(), port),
    })
}

/// Source address of the proxy's connection to an app inside the app's own pod.
fn local_app_source(dst: &SocketAddr) -> IpAddr {
    match dst {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(PROXY_SOURCE_V4)),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::proxy::{
        context::{Authenticated, Party, Protocol},
        testing::pod,
    };

    fn case(
        direction: Direction,
        local: Option<Arc<PodRuntime>>,
        original: Option<&str>,
    ) -> (Accepted, Classified) {
        let web = pod("shop/web-1", &["10.0.0.1"]);
        let addr = |a: &str| a.parse::<SocketAddr>().expect("addr");
        let accepted =
            Accepted { direction, pod: web, peer: addr("127.0.0.1:40000"), local: addr("127.0.0.1:15001") };
        let classified = Classified {
            original: original.map(addr),
            source: Party { addr: addr("10.0.0.1:40000"), workload: None },
            authenticated: if direction == Direction::Outbound {
                Authenticated::LocalPod
            } else {
                Authenticated::No
            },
            destination: Party { addr: original.map_or(accepted.local, addr), workload: None },
            service: None,
            protocol: Protocol::Tcp,
            local_destination: local,
        };
        (accepted, classified)
    }

    const COPY_NETWORK: RouteSettings = RouteSettings { splice_network_legs: false, hbone_port: None };

    #[test]
    fn same_node_goes_into_the_destination_pod_and_may_splice() {
        let cart = pod("shop/cart-1", &["10.0.0.2"]);
        let (a, c) = case(Direction::Outbound, Some(Arc::clone(&cart)), Some("10.0.0.2:8080"));
        let r = route(&a, &c, COPY_NETWORK).expect("route");
        assert_eq!(&*r.from_pod.name, "shop/cart-1");
        assert_eq!(r.source, Some("127.0.0.6".parse().expect("ip")));
        assert_eq!((r.splice, r.network_leg), (true, NetworkLeg::None));
        // Either pod opting out of the splice keeps the connection copied.
        cart.splice.store(false, Relaxed);
        assert!(!route(&a, &c, COPY_NETWORK).expect("route").splice);
    }

    #[test]
    fn network_legs_are_copied_unless_asked() {
        let (a, c) = case(Direction::Outbound, None, Some("10.1.0.5:80"));
        let r = route(&a, &c, COPY_NETWORK).expect("route");
        assert_eq!((&*r.from_pod.name, r.source, r.splice), ("shop/web-1", None, false));
        assert_eq!(r.network_leg, NetworkLeg::Upstream);
        assert!(
            route(&a, &c, RouteSettings { splice_network_legs: true, hbone_port: None })
                .expect("route")
                .splice
        );

        let (a, c) = case(Direction::Inbound, None, Some("[fd00::1]:80"));
        let r = route(&a, &c, COPY_NETWORK).expect("route");
        assert_eq!(
            (r.source, r.splice, r.network_leg),
            (Some("::1".parse().expect("ip")), false, NetworkLeg::Accepted)
        );
    }

    #[test]
    fn no_record_from_connect4_is_no_route() {
        let (a, c) = case(Direction::Outbound, None, None);
        assert_eq!(route(&a, &c, COPY_NETWORK).err(), Some(NO_ORIGINAL_DESTINATION));
    }
}
