//! Reads what the kernel programs recorded for a flow: veth counters by 5-tuple, TCP health
//! by socket cookie.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use nodemesh_common::{FlowKey, addr};

use crate::datapath::KernelRecords;
use crate::report::flows::{KernelView, TcpView, VethCounts, tcp_state_name};

const IPPROTO_TCP: u8 = 6;

/// Where the kernel keeps a flow's records.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelIds {
    /// The network-facing socket's cookie (sock_ops key).
    pub cookie: Option<u64>,
    /// The veth flow key, when the leg crosses an enrolled pod's veth.
    pub veth: Option<FlowKey>,
}

/// The veth key of a TCP connection between `pod` (an enrolled pod's address) and `peer`.
pub fn veth_key(pod: SocketAddr, peer: SocketAddr) -> FlowKey {
    FlowKey {
        pod: addr::from_ip(pod.ip()),
        peer: addr::from_ip(peer.ip()),
        pod_port: pod.port(),
        peer_port: peer.port(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

/// The kernel's drop reason names, by value (from BTF; empty when unavailable).
pub type DropReasons = Arc<HashMap<u32, String>>;

/// What the kernel holds for a flow (nothing without the datapath, as in unit tests).
pub fn read(records: Option<&KernelRecords>, ids: &KernelIds, reasons: &DropReasons) -> KernelView {
    let Some(records) = records else { return KernelView::default() };
    let veth = ids.veth.and_then(|key| records.veth(&key)).map(|s| VethCounts {
        packets_from_pod: s.from_pod.packets,
        packets_to_pod: s.to_pod.packets,
        bytes_from_pod: s.from_pod.bytes,
        bytes_to_pod: s.to_pod.bytes,
        payload_from_pod: s.from_pod.payload,
        payload_to_pod: s.to_pod.payload,
        drops: s.drops,
        last_drop_reason: (s.last_drop_reason != 0).then(|| reason_name(reasons, s.last_drop_reason)),
        drop_reasons: s.drop_reasons().map(|r| reason_name(reasons, r)).collect(),
    });
    let tcp = ids.cookie.and_then(|c| records.tcp_health(c)).map(|h| TcpView {
        srtt_us: h.srtt_us,
        min_rtt_us: h.min_rtt_us,
        retransmits: h.total_retrans.max(h.retrans_events),
        state: tcp_state_name(h.state).to_owned(),
        state_changes: h.state_changes,
        snd_cwnd: h.snd_cwnd,
    });
    KernelView { veth, tcp }
}

/// A drop reason's name, or its number on a kernel whose BTF did not name it.
fn reason_name(reasons: &DropReasons, reason: u32) -> String {
    reasons.get(&reason).cloned().unwrap_or_else(|| reason.to_string())
}
