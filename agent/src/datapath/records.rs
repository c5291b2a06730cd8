//! What the kernel programs recorded, read-only: veth counters by 5-tuple, TCP health by
//! socket cookie, and how full the bounded maps are.

use nodemesh_common::{FlowKey, FlowStats, OrigDstKey, SpliceCtl, SpliceState, TcpHealth, maps as names};

use super::bpf_sys::MapFd;

/// The per-flow records the flow table joins with its connections.
#[derive(Debug)]
pub struct KernelRecords {
    pub(super) flows: MapFd,
    pub(super) tcp_health: MapFd,
    pub(super) splice_state: MapFd,
    pub(super) splice_ctl: MapFd,
}

impl KernelRecords {
    /// Bytes of one spliced direction that left the proxy's hands since the splice began
    /// (redirected by the verdict, or passed up and forwarded by the proxy); `None` once the
    /// splice has ended and its records are gone.
    pub fn spliced_bytes(&self, key: u64) -> Option<u64> {
        let state: SpliceState = self.splice_state.lookup(&key).ok().flatten()?;
        let ctl: SpliceCtl = self.splice_ctl.lookup(&key).ok().flatten()?;
        Some(state.redirected + ctl.forwarded)
    }

    pub fn veth(&self, key: &FlowKey) -> Option<FlowStats> {
        self.flows.lookup(key).ok().flatten()
    }

    pub fn tcp_health(&self, cookie: u64) -> Option<TcpHealth> {
        self.tcp_health.lookup(&cookie).ok().flatten()
    }
}

/// Entries in one bounded map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapOccupancy {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

/// Counts the entries of the maps the programs fill (for `/metrics`).
#[derive(Debug)]
pub struct Occupancy {
    pub(super) flows: MapFd,
    pub(super) tcp_health: MapFd,
    pub(super) orig_dst: MapFd,
}

impl Occupancy {
    pub fn read(&self) -> Vec<MapOccupancy> {
        // Twice the capacity: a walk over a map that changes underneath can revisit keys.
        let count =
            |counted: std::io::Result<usize>, capacity: u32| counted.unwrap_or(0).min(capacity as usize);
        let limit = |capacity: u32| 2 * capacity as usize;
        vec![
            MapOccupancy {
                map: names::FLOWS,
                entries: count(
                    self.flows.for_each_key::<FlowKey>(limit(names::FLOW_ENTRIES), |_| {}),
                    names::FLOW_ENTRIES,
                ),
                capacity: names::FLOW_ENTRIES,
            },
            MapOccupancy {
                map: names::TCP_HEALTH,
                entries: count(
                    self.tcp_health.for_each_key::<u64>(limit(names::TCP_HEALTH_ENTRIES), |_| {}),
                    names::TCP_HEALTH_ENTRIES,
                ),
                capacity: names::TCP_HEALTH_ENTRIES,
            },
            MapOccupancy {
                map: names::ORIG_DST,
                entries: count(
                    self.orig_dst.for_each_key::<OrigDstKey>(limit(names::ORIG_DST_ENTRIES), |_| {}),
                    names::ORIG_DST_ENTRIES,
                ),
                capacity: names::ORIG_DST_ENTRIES,
            },
        ]
    }
}
