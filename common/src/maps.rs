//! Names of every map, in one place so the loader pins them and cleanup finds them all.
//!
//! Names carry the `nm_` prefix, stay under the kernel's 16-byte limit, and get a `_v2`
//! suffix when their key or value layout changes (a restarted agent then creates a fresh map
//! instead of adopting an incompatible pin).

/// Datapath settings ([`crate::DatapathConfig`]), one entry.
pub const CONFIG: &str = "nm_config";
/// Outbound ports that are never intercepted: a bitmap of 65,536 bits in 1,024 u64 words.
pub const EXCLUDED_OUTBOUND: &str = "nm_excl_out";
/// Inbound ports that are never steered, same layout as [`EXCLUDED_OUTBOUND`].
pub const EXCLUDED_INBOUND: &str = "nm_excl_in";
/// Per-socket original destination, written by connect4/connect6 (socket local storage).
pub const SOCKET_DST: &str = "nm_sk_dst";
/// The agent's own outbound listeners (socket local storage the agent writes from user space,
/// keyed by the listener's descriptor; the value is the pod's netns cookie). connect4/connect6
/// rewrite a connect only to a listener marked here, never to another process's socket that
/// happens to listen on the same port. Not pinned: marks die with the sockets they mark.
pub const LISTENER_MARK: &str = "nm_listen_mark";
/// Original destination by the client's address, for the proxy ([`crate::OrigDstKey`]).
pub const ORIG_DST: &str = "nm_orig_dst";
/// Inbound listeners by pod address ([`crate::ListenerKey`]), for sk_lookup.
pub const LISTENERS: &str = "nm_listeners";
/// Per-CPU reason counters, indexed by [`crate::Counter`].
pub const COUNTERS: &str = "nm_counters";
/// The proxy's spliced sockets by socket cookie. The splice maps are not pinned: they only
/// describe the running agent's own sockets, which die with it.
pub const SPLICE_SOCKS: &str = "nm_splice";
/// Splice state by socket cookie ([`crate::SpliceState`]), written by the kernel.
pub const SPLICE_STATE: &str = "nm_splice_st";
/// Splice control by socket cookie ([`crate::SpliceCtl`]), written by the agent.
pub const SPLICE_CTL: &str = "nm_splice_ctl";

/// Per-flow packet and byte counters from the pods' host-side veths ([`crate::FlowKey`] →
/// [`crate::FlowStats`]), an LRU. Pinned: the tc links outlive a restart, and so should what
/// they counted.
pub const FLOWS: &str = "nm_flows";
/// Kernel TCP health of the proxy's sockets by socket cookie ([`crate::TcpHealth`]), an LRU.
/// Not pinned: it describes the running agent's own sockets.
pub const TCP_HEALTH: &str = "nm_tcp_health";

/// Every pinned map, for adoption checks and cleanup: the ones that programs outliving an
/// agent (pinned links) read and write. The splice maps are not pinned.
pub const PINNED: [&str; 7] =
    [CONFIG, EXCLUDED_OUTBOUND, EXCLUDED_INBOUND, ORIG_DST, LISTENERS, COUNTERS, FLOWS];

/// Capacity of [`ORIG_DST`]: an LRU, so a burst of connects the proxy never accepts cannot
/// fill it for good.
pub const ORIG_DST_ENTRIES: u32 = 65_536;
/// Capacity of [`LISTENERS`]: one entry per pod address on the node.
pub const LISTENER_ENTRIES: u32 = 4_096;
/// Capacity of the splice maps: two sockets per spliced connection.
pub const SPLICE_ENTRIES: u32 = 65_536;
/// Capacity of [`FLOWS`]: the least recently active flow gives way when it is full.
pub const FLOW_ENTRIES: u32 = 65_536;
/// Capacity of [`TCP_HEALTH`]: two sockets per proxied connection.
pub const TCP_HEALTH_ENTRIES: u32 = 65_536;
/// Words in each port bitmap (65,536 ports / 64 bits).
pub const PORT_BITMAP_WORDS: u32 = 1_024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_share_the_prefix() {
        for name in PINNED
            .iter()
            .chain([SOCKET_DST, LISTENER_MARK, SPLICE_SOCKS, SPLICE_STATE, SPLICE_CTL, TCP_HEALTH].iter())
        {
            assert!(name.len() < 16, "{name} is too long for BPF_OBJ_NAME_LEN");
            assert!(name.starts_with("nm_"), "{name} lacks the nm_ prefix");
        }
    }
}
