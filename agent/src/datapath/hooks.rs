//! The hooks attached per enrolled pod, each a pinned link.

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

pub use crate::report::status::{
    Hook,
    programs::{DROP_TRACER, PROXY_SOCK_OPS, SPLICE_VERDICT},
};

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
