//! What `/status` reports and `nodemesh status` renders: plain records, built by the agent's
//! parts and read back by the CLI. Nothing here reaches into the agent's machinery.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use super::flows::Direction;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: String,
    pub version: String,
    pub uptime_s: u64,
    pub splice: bool,
    pub bpffs_dir: String,
    /// Where the pod list comes from, and whether its last version was accepted.
    pub enrollment: Option<SourceStatus>,
    /// Control-plane sync, when the agent runs against one.
    pub sync: Option<SyncStatus>,
    pub pods: Vec<PodReport>,
    pub pending: Vec<PendingPod>,
    /// Pods whose hooks an earlier agent pinned, kept until a valid state says whether they
    /// still belong in the mesh.
    #[serde(default)]
    pub held: Vec<String>,
    pub programs: Vec<ProgramStatus>,
    pub counters: Vec<CounterReport>,
    pub proxy: ProxyTotals,
    #[serde(default)]
    pub memory: Memory,
    /// Each identity's workload certificate (never a key), when the agent has a CA.
    #[serde(default)]
    pub certificates: Vec<CertificateReport>,
    /// Each service this node's pods connected to: its endpoints' balancing state.
    #[serde(default)]
    pub services: Vec<ServiceReport>,
}

/// One identity's workload certificate, as status, `/config_dump` and metrics show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateReport {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub identity: String,
    /// `pending` (none yet), `valid`, `refresh_failing` (valid, the last refresh failed),
    /// `expired`.
    pub state: String,
    pub serial: Option<String>,
    pub not_before_unix_s: Option<u64>,
    pub not_after_unix_s: Option<u64>,
    pub next_refresh_unix_s: Option<u64>,
    pub issued: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// Enrolled pods with this identity.
    pub pods: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodReport {
    #[serde(flatten)]
    pub pod: EnrolledPod,
    pub stats: PodStatsSnapshot,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CounterReport {
    pub program: String,
    pub reason: String,
    pub count: u64,
}

/// A per-pod hook, as status names it. What each one attaches (program, target, pin name) is
/// the datapath's: `datapath/hooks.rs` implements it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Connect4,
    Connect6,
    GetPeerName4,
    GetPeerName6,
    SockOps,
    SkLookup,
    /// tcx ingress of the host-side veth: packets leaving the pod.
    TcFromPod,
    /// tcx egress of the host-side veth: packets entering the pod.
    TcToPod,
}

/// One attached hook, as `nodemesh status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkStatus {
    pub hook: Hook,
    pub link_id: u32,
    pub program_id: u32,
}

/// A loaded program, for `nodemesh status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    pub kind: String,
    pub id: u32,
}

/// Node-wide proxy counters.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ProxyTotals {
    pub active: u64,
    pub outbound_accepted: u64,
    pub inbound_accepted: u64,
    pub failed: u64,
    pub spliced: u64,
    /// Connections refused before the proxy did anything with them, by reason.
    #[serde(default)]
    pub refused: Refusals,
}

/// Refusals by reason, for `/status` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    pub r#loop: u64,
    pub pod_limit: u64,
    pub node_limit: u64,
}

/// An enrolled pod, for `nodemesh status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrolledPod {
    pub uid: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub cgroup: PathBuf,
    pub netns_inode: u64,
    pub listeners: Vec<ListenerInfo>,
    pub links: Vec<LinkStatus>,
    /// Whether this pod's connections are handed to the kernel splice.
    pub splice: bool,
}

/// A pod that should be intercepted but is not (yet), and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingPod {
    pub uid: String,
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// Which connections it takes.
    pub kind: Direction,
    pub addr: SocketAddr,
    /// The inbound HBONE listener (mutual TLS), rather than the plaintext one.
    #[serde(default)]
    pub hbone: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionSnapshot {
    pub accepted: u64,
    pub active: u64,
    pub failed: u64,
    pub spliced: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatsSnapshot {
    pub outbound: DirectionSnapshot,
    pub inbound: DirectionSnapshot,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    pub rss_bytes: u64,
    /// Bytes in live allocations.
    pub heap_allocated_bytes: u64,
    /// Bytes the allocator holds in physical memory (live, cached and not yet returned).
    pub heap_resident_bytes: u64,
}

/// What the file source last did, for `nodemesh status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SourceStatus {
    pub path: PathBuf,
    /// Times a changed file was accepted.
    pub generation: u64,
    pub last_accepted_unix_s: Option<u64>,
    /// Why the current file is being ignored, if it is.
    pub last_error: Option<String>,
}

/// Sync state, for `nodemesh status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    pub control_plane: String,
    pub connected: bool,
    pub connected_since_unix_s: Option<u64>,
    pub last_error: Option<String>,
    /// system_version_info of the last accepted response, per type.
    pub versions: BTreeMap<String, String>,
    /// When the state in use was accepted from the control plane.
    pub accepted_unix_s: Option<u64>,
    /// The state in use was loaded from disk and not yet confirmed by a control plane.
    pub from_disk: bool,
    pub last_nack: Option<Nack>,
    /// Why the snapshot on disk was not used at start (empty, truncated, corrupt, not a
    /// snapshot, or resources that do not check): the agent then holds what earlier agents
    /// pinned until the control plane answers.
    #[serde(default)]
    pub snapshot_error: Option<String>,
    pub acks: u64,
    pub nacks: u64,
    pub counts: Counts,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Nack {
    pub unix_s: u64,
    pub reason: String,
}

/// What the node's workloads look like, for status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    pub addresses: usize,
    pub authorizations: usize,
    pub local_workloads: usize,
    /// Captured workloads on this node the agent cannot enroll (no pod UID sent).
    pub pending_without_pod_uid: Vec<String>,
    /// Resources refused because another one claimed their address, pod UID or name first
    /// (the first `xds::state::MAX_REFUSED_SHOWN`).
    #[serde(default)]
    pub refused: Vec<Clash>,
}

/// A refused claim: `newcomer` wanted `claim`, which `holder` has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{newcomer} is refused: its {claim} is already {holder}'s")]
pub struct Clash {
    pub newcomer: String,
    pub holder: String,
    pub claim: String,
}

/// Node-wide programs (not attached per pod), by their names in the eBPF object.
pub mod programs {
    /// The verdict program attached to the splice sockhash (not per pod).
    pub const SPLICE_VERDICT: &str = "nm_splice_verdict";
    /// sock_ops on the agent's own cgroup: TCP health of the proxy's sockets (not per pod).
    pub const PROXY_SOCK_OPS: &str = "nm_sock_ops_proxy";
    /// The drop tracer (tp_btf/kfree_skb), node-wide.
    pub const DROP_TRACER: &str = "nm_kfree_skb";
}

/// A service's balancing state, as status and `/config_dump` show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceReport {
    pub service: String,
    pub endpoints_known: usize,
    pub active: u32,
    pub held: u32,
    pub max_connections: Option<u32>,
    pub connections: u64,
    pub retries: u64,
    pub fallbacks: u64,
    pub circuit_open: u64,
    pub no_endpoint: u64,
    pub held_forwarded: u64,
    pub held_timed_out: u64,
    pub held_refused: u64,
    pub ejections: u64,
    pub endpoints: Vec<EndpointReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointReport {
    /// `namespace/pod`.
    pub pod: String,
    pub node: Option<String>,
    pub outstanding: u32,
    pub ewma_latency_us: u64,
    pub picks: u64,
    pub connect_failures: u64,
    pub consecutive_failures: u32,
    pub ejections: u64,
    pub ejected_until_unix_ms: Option<u64>,
}
