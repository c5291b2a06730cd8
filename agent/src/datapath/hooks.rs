//! The hooks attached per enrolled pod, each a pinned link.

use serde::{Deserialize, Serialize};

/// Where a hook attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The pod's cgroup (every socket its processes create).
    Cgroup,
    /// The pod's network namespace.
    Netns,
    /// The pod's host-side veth, in the node's namespace (tcx).
    HostVeth,
}

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

impl Hook {
    pub const ALL: [Hook; 8] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::GetPeerName4,
        Hook::GetPeerName6,
        Hook::SockOps,
        Hook::SkLookup,
        Hook::TcFromPod,
        Hook::TcToPod,
    ];

    /// The program's function name in the eBPF object.
    pub const fn program(self) -> &'static str {
        match self {
            Hook::Connect4 => "nm_connect4",
            Hook::Connect6 => "nm_connect6",
            Hook::GetPeerName4 => "nm_getpeername4",
            Hook::GetPeerName6 => "nm_getpeername6",
            Hook::SockOps => "nm_sock_ops",
            Hook::SkLookup => "nm_sk_lookup",
            Hook::TcFromPod => "nm_tc_from_pod",
            Hook::TcToPod => "nm_tc_to_pod",
        }
    }

    /// The link's file name under the pod's pin directory.
    pub const fn pin_name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::GetPeerName4 => "getpeername4",
            Hook::GetPeerName6 => "getpeername6",
            Hook::SockOps => "sock_ops",
            Hook::SkLookup => "sk_lookup",
            Hook::TcFromPod => "tc_from_pod",
            Hook::TcToPod => "tc_to_pod",
        }
    }

    pub const fn target(self) -> Target {
        match self {
            Hook::SkLookup => Target::Netns,
            Hook::TcFromPod | Hook::TcToPod => Target::HostVeth,
            _ => Target::Cgroup,
        }
    }
}

/// The verdict program attached to the splice sockhash (not per pod).
pub const SPLICE_VERDICT: &str = "nm_splice_verdict";
/// sock_ops on the agent's own cgroup: TCP health of the proxy's sockets (not per pod).
pub const PROXY_SOCK_OPS: &str = "nm_sock_ops_proxy";
/// The drop tracer (tp_btf/kfree_skb), node-wide.
pub const DROP_TRACER: &str = "nm_kfree_skb";
