//! The hooks attached per enrolled pod, each a pinned link.

use serde::{Deserialize, Serialize};

/// Where a hook attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The pod's cgroup (every socket its processes create).
    Cgroup,
    /// The pod's network namespace.
    Netns,
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
}

impl Hook {
    pub const ALL: [Hook; 6] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::GetPeerName4,
        Hook::GetPeerName6,
        Hook::SockOps,
        Hook::SkLookup,
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
        }
    }

    pub const fn target(self) -> Target {
        match self {
            Hook::SkLookup => Target::Netns,
            _ => Target::Cgroup,
        }
    }
}

/// The verdict program attached to the splice sockhash (not per pod).
pub const SPLICE_VERDICT: &str = "nm_splice_verdict";
