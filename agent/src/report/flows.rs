//! What a flow looks like to an SRE: both ends named by the mesh, the bytes the proxy moved,
//! what the kernel saw on the wire, and how it ended.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `/flows` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowsReport {
    pub node: String,
    pub flows: Vec<FlowRecord>,
}

/// Which listener took the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// An enrolled pod connected out (connect4/connect6 sent it to the proxy).
    Outbound,
    /// Something connected to an enrolled pod (sk_lookup sent it to the proxy).
    Inbound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Still being set up (original destination, upstream connect).
    Pending,
    /// Forwarded.
    Allowed,
    /// Refused by policy.
    Denied,
    /// Accepted but never forwarded: see the reason.
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pending => "pending",
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Verdict::Pending, Verdict::Allowed, Verdict::Denied, Verdict::Failed]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// When the address is a known workload: its namespace, pod, the workload the pod is an
    /// instance of (Deployment, StatefulSet, ...) and SPIFFE identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// What the kernel saw of the flow's network-facing leg (the proxy's upstream socket for
/// outbound, its accepted socket for inbound).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelView {
    /// From the tc programs on the pod's host-side veth (absent when the leg never crosses
    /// it: both pods on this node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub veth: Option<VethCounts>,
    /// From sock_ops on the proxy's socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethCounts {
    pub packets_from_pod: u64,
    pub packets_to_pod: u64,
    /// IP bytes (headers included).
    pub bytes_from_pod: u64,
    pub bytes_to_pod: u64,
    /// TCP payload bytes.
    pub payload_from_pod: u64,
    pub payload_to_pod: u64,
    pub drops: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_drop_reason: Option<String>,
    /// Every reason the flow's drops carried, in the kernel's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpView {
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub retransmits: u32,
    pub state: String,
    pub state_changes: u32,
    pub snd_cwnd: u32,
}

/// A flow as `/flows` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub id: u64,
    pub direction: Direction,
    /// The enrolled pod whose listener took it (`namespace/name`).
    pub pod: String,
    pub source: Endpoint,
    pub destination: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Carried between nodes in mutual TLS (HBONE).
    #[serde(default)]
    pub mtls: bool,
    /// The peer's identity as its certificate proved it: the destination's for an outbound
    /// flow, the source's for an inbound one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes the proxy moved from source to destination, and back.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Handed to the kernel splice after set-up.
    pub spliced: bool,
    pub start_unix_ms: u64,
    pub duration_ms: u64,
    pub active: bool,
    pub kernel: KernelView,
    /// How a connection to a service reached its endpoint (absent for one to a pod address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// The requests of a connection the HTTP stage served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCounts>,
}

/// A served HTTP connection's requests, by the class of the status they got.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCounts {
    pub requests: u64,
    #[serde(rename = "1xx", default)]
    pub s1xx: u64,
    #[serde(rename = "2xx", default)]
    pub s2xx: u64,
    #[serde(rename = "3xx", default)]
    pub s3xx: u64,
    #[serde(rename = "4xx", default)]
    pub s4xx: u64,
    #[serde(rename = "5xx", default)]
    pub s5xx: u64,
    /// Attempts sent again after a retryable answer.
    #[serde(default)]
    pub retries: u64,
}

impl HttpCounts {
    /// One more request, answered with `status` after `retries` retries.
    pub fn count(&mut self, status: u16, retries: u32) {
        self.requests += 1;
        self.retries += u64::from(retries);
        match status {
            100..=199 => self.s1xx += 1,
            200..=299 => self.s2xx += 1,
            300..=399 => self.s3xx += 1,
            400..=499 => self.s4xx += 1,
            _ => self.s5xx += 1,
        }
    }

    /// The share of requests answered 5xx.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.s5xx as f64 / self.requests as f64 }
    }
}

/// What the route stage did for a connection to a service address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// The endpoint the connection went to (or was last tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// Each failed attempt before it: `<endpoint> <reason>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<String>,
    /// The fallback service that took it, and why the service itself could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// How long it was held waiting for the service to scale up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<u64>,
}

impl FlowRecord {
    pub fn bytes(&self) -> u64 {
        self.bytes_sent + self.bytes_received
    }

    pub fn retransmits(&self) -> u32 {
        self.kernel.tcp.as_ref().map_or(0, |t| t.retransmits)
    }

    /// Whether `namespace/name` or `name` is either end.
    pub fn involves_pod(&self, pod: &str) -> bool {
        let matches = |e: &Endpoint| match (&e.namespace, &e.pod) {
            (Some(ns), Some(name)) => {
                pod == name || pod.split_once('/').is_some_and(|(n, w)| n == ns && w == name)
            }
            _ => false,
        };
        self.pod == pod
            || self.pod.split_once('/').is_some_and(|(_, n)| n == pod)
            || matches(&self.source)
            || matches(&self.destination)
    }

    pub fn involves_namespace(&self, namespace: &str) -> bool {
        self.source.namespace.as_deref() == Some(namespace)
            || self.destination.namespace.as_deref() == Some(namespace)
            || self.pod.split_once('/').is_some_and(|(ns, _)| ns == namespace)
    }
}

/// The names of `BPF_TCP_*` states (include/net/tcp_states.h).
pub fn tcp_state_name(state: u32) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}
