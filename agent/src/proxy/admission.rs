//! The first stage of every connection: whether the proxy takes it at all.
//!
//! - **Loops.** The inbound listener is only ever meant to receive what sk_lookup steers to
//!   it: connections from outside the pod to one of the pod's addresses. Anything else reached
//!   127.0.0.1:15006 directly from inside the pod (an app, a hostile neighbour, or the proxy's
//!   own connection to it), and serving it would make the proxy connect to itself again and
//!   again until the descriptors run out. It is refused at once.
//! - **Limits.** A pod has a cap on its connections at once, and the node a cap that keeps a
//!   reserve of descriptors for everything that is not a proxied connection, so no flood (a
//!   pod's own or the admin ports') takes the node's listeners or its control plane down.
//!
//! A refused connection is reset and counted by reason.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

pub use crate::report::status::Refusals;

use crate::claims::canonical;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It reached the inbound listener from inside the pod.
    Loop,
    /// The pod is at `max_connections_per_pod`.
    PodLimit,
    /// The node is at `max_connections`.
    NodeLimit,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Loop => "loop",
            Refusal::PodLimit => "pod_limit",
            Refusal::NodeLimit => "node_limit",
        }
    }
}

#[derive(Debug)]
pub struct Admission {
    per_pod: u64,
    node: u64,
    refused: [AtomicU64; 3],
}

impl Admission {
    pub fn new(per_pod: usize, node: usize) -> Self {
        Self { per_pod: per_pod as u64, node: node as u64, refused: Default::default() }
    }

    /// Checks a new connection against the caps, given the connections already open (this one
    /// not counted).
    pub fn admit(&self, pod_active: u64, node_active: u64) -> Result<(), Refusal> {
        if node_active >= self.node {
            return Err(self.refuse(Refusal::NodeLimit));
        }
        if pod_active >= self.per_pod {
            return Err(self.refuse(Refusal::PodLimit));
        }
        Ok(())
    }

    /// An inbound connection is genuine only if it came from outside the pod to one of the
    /// pod's own addresses (what sk_lookup steers).
    pub fn admit_inbound(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
        pod_ips: &[IpAddr],
    ) -> Result<(), Refusal> {
        let local_ip = canonical(local.ip());
        if canonical(peer.ip()).is_loopback() || !pod_ips.iter().any(|ip| canonical(*ip) == local_ip) {
            return Err(self.refuse(Refusal::Loop));
        }
        Ok(())
    }

    fn refuse(&self, why: Refusal) -> Refusal {
        self.refused[why as usize].fetch_add(1, Relaxed);
        why
    }

    pub fn refusals(&self) -> Refusals {
        let n = |r: Refusal| self.refused[r as usize].load(Relaxed);
        Refusals {
            r#loop: n(Refusal::Loop),
            pod_limit: n(Refusal::PodLimit),
            node_limit: n(Refusal::NodeLimit),
        }
    }
}

/// The node-wide cap when the configuration leaves it to the descriptor limit: two
/// descriptors per proxied connection, `reserve` kept for everything else.
pub fn node_limit_from_fds(configured: usize, fd_limit: u64, reserve: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    (fd_limit.saturating_sub(reserve as u64) / 2).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn only_steered_inbound_connections_are_admitted() {
        let a = Admission::new(10, 10);
        let pod: Vec<IpAddr> = vec!["10.1.0.5".parse().expect("ip"), "fd00::5".parse().expect("ip")];
        a.admit_inbound(addr("10.1.0.5:80"), addr("10.1.0.9:4000"), &pod).expect("from another pod");
        a.admit_inbound(addr("[fd00::5]:80"), addr("[fd00::9]:4000"), &pod).expect("v6");
        a.admit_inbound(addr("[::ffff:10.1.0.5]:80"), addr("[::ffff:10.1.0.9]:4000"), &pod).expect("mapped");
        for (local, peer) in [
            ("127.0.0.1:15006", "127.0.0.6:4000"),
            ("127.0.0.1:15006", "127.0.0.1:4000"),
            ("[::1]:15006", "[::1]:4000"),
            ("10.1.0.5:80", "127.0.0.6:4000"),
            ("[::ffff:10.1.0.5]:80", "[::ffff:127.0.0.1]:4000"),
            ("10.1.0.77:80", "10.1.0.9:4000"),
        ] {
            assert_eq!(
                a.admit_inbound(addr(local), addr(peer), &pod),
                Err(Refusal::Loop),
                "{local} from {peer}"
            );
        }
        assert_eq!(a.refusals().r#loop, 6);
    }

    #[test]
    fn caps_refuse_and_count() {
        let a = Admission::new(2, 3);
        a.admit(1, 2).expect("under both");
        assert_eq!(a.admit(2, 2), Err(Refusal::PodLimit));
        assert_eq!(a.admit(0, 3), Err(Refusal::NodeLimit));
        assert_eq!(a.refusals(), Refusals { r#loop: 0, pod_limit: 1, node_limit: 1 });
    }

    #[test]
    fn the_node_cap_keeps_the_reserve() {
        assert_eq!(node_limit_from_fds(0, 20_000, 4096), 7952);
        assert_eq!(node_limit_from_fds(500, 20_000, 4096), 500);
        assert_eq!(node_limit_from_fds(0, 1000, 4096), 1);
    }
}
