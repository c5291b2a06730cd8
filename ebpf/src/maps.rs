//! Every map of the datapath. Names, sizes and key/value types come from `nodemesh-common`;
//! maps the agent must find again after a restart are pinned by name.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
};
use nodemesh_common::{
    DatapathConfig, FlowKey, FlowStats, ListenerKey, OrigDstKey, SockAddr, SpliceCtl, SpliceState, TcpHealth,
    counters, maps as names,
};

#[map(name = "nm_config")]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

#[map(name = "nm_excl_out")]
pub static EXCLUDED_OUTBOUND: Array<u64> = Array::pinned(names::PORT_BITMAP_WORDS, 0);

#[map(name = "nm_excl_in")]
pub static EXCLUDED_INBOUND: Array<u64> = Array::pinned(names::PORT_BITMAP_WORDS, 0);

/// The original destination, stored on the client socket by connect4/connect6. Socket-local
/// storage dies with the socket, so it needs no cleanup and cannot leak.
#[btf_map(name = "nm_sk_dst")]
pub static SOCKET_DST: SkStorage<SockAddr> = SkStorage::new();

/// The agent's own outbound listeners, marked from user space (see `maps::LISTENER_MARK`).
#[btf_map(name = "nm_listen_mark")]
pub static LISTENER_MARK: SkStorage<u64> = SkStorage::new();

#[map(name = "nm_orig_dst")]
pub static ORIG_DST: LruHashMap<OrigDstKey, SockAddr> = LruHashMap::pinned(names::ORIG_DST_ENTRIES, 0);

#[map(name = "nm_listeners")]
pub static LISTENERS: SockHash<ListenerKey> = SockHash::pinned(names::LISTENER_ENTRIES, 0);

#[map(name = "nm_counters")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::COUNT, 0);

#[map(name = "nm_splice")]
pub static SPLICE_SOCKS: SockHash<u64> = SockHash::with_max_entries(names::SPLICE_ENTRIES, 0);

#[map(name = "nm_splice_st")]
pub static SPLICE_STATE: HashMap<u64, SpliceState> = HashMap::with_max_entries(names::SPLICE_ENTRIES, 0);

#[map(name = "nm_splice_ctl")]
pub static SPLICE_CTL: HashMap<u64, SpliceCtl> = HashMap::with_max_entries(names::SPLICE_ENTRIES, 0);

#[map(name = "nm_flows")]
pub static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::pinned(names::FLOW_ENTRIES, 0);

#[map(name = "nm_tcp_health")]
pub static TCP_HEALTH: LruHashMap<u64, TcpHealth> =
    LruHashMap::with_max_entries(names::TCP_HEALTH_ENTRIES, 0);
