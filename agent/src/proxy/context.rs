//! What the stages learn about one connection. Each stage takes what the earlier ones
//! learned and returns its own part; none of it holds a socket, so the decisions can be
//! tested without any.

use std::{net::SocketAddr, sync::Arc};

use super::PodRuntime;
use crate::{report::flows::Direction, workload::WorkloadRef};

/// The accept stage's part: which listener took the connection, for which pod.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub direction: Direction,
    /// The enrolled pod whose listener accepted it.
    pub pod: Arc<PodRuntime>,
    /// The connecting socket's address as the listener saw it (for outbound, the app's
    /// loopback-side address; for inbound, the client's).
    pub peer: SocketAddr,
    /// The listener-side address: for inbound, the pod address the client dialled.
    pub local: SocketAddr,
}

/// How the bytes are framed. Everything is opaque TCP today; the HTTP issue adds HTTP/1.1
/// and HTTP/2 for ports declared HTTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Tcp,
}

/// One end of the connection, named when the directory knows the address.
#[derive(Clone, Debug)]
pub struct Party {
    pub addr: SocketAddr,
    pub workload: Option<Arc<WorkloadRef>>,
}

/// Whether, and how, the proxy vouches for the source's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Authenticated {
    /// Plaintext from the network: its address proves nothing.
    #[default]
    No,
    /// A pod of this node: the proxy accepted the connection inside that pod.
    LocalPod,
    /// An HBONE peer: the SPIFFE identity in the certificate it presented (mutual TLS).
    Mtls(Arc<str>),
}

/// The classify stage's part: where the connection goes, who is asking, what it carries.
#[derive(Clone, Debug)]
pub struct Classified {
    /// The original destination: for outbound, what connect4 recorded (`None` when it has
    /// no record of this connection); for inbound, the address the client dialled.
    pub original: Option<SocketAddr>,
    pub source: Party,
    /// How the proxy knows who the source is, if it does.
    pub authenticated: Authenticated,
    /// Where the flow is going (the original destination, or the listener's own address
    /// when there is none).
    pub destination: Party,
    /// The service the destination serves on that port, `namespace/hostname`.
    pub service: Option<String>,
    pub protocol: Protocol,
    /// An outbound connection's destination pod when it is enrolled on this node: its inbound
    /// side is handled here too.
    pub local_destination: Option<Arc<PodRuntime>>,
}

impl Classified {
    /// The workload the destination's policies are looked up for. For a pod of this node it
    /// is always known (from the directory, else from the pod's own name).
    pub fn policy_target(&self) -> Option<Arc<WorkloadRef>> {
        self.destination.workload.clone().or_else(|| {
            let pod = self.local_destination.as_ref()?;
            Some(pod.workload_ref())
        })
    }
}
