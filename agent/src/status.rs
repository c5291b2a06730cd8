//! The status report: built by the agent for `/status`, read back by `nodemesh status`.

use serde::{Deserialize, Serialize};

use crate::{
    datapath::ProgramStatus,
    enroll::SourceStatus,
    proxy::{PodStatsSnapshot, ProxyTotals},
    reconcile::{EnrolledPod, PendingPod},
};

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
    pub sync: Option<crate::xds::SyncStatus>,
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
    pub memory: crate::memory::Memory,
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
