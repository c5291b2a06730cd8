//! Map keys and values. Addresses are 16 bytes in network order with IPv4 as `::ffff:a.b.c.d`
//! (see [`crate::addr`]), so one layout serves both families. Ports are in host order.

use core::mem::size_of;

/// A transport address: what connect4/connect6 saw as the destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockAddr {
    /// Network-order words, IPv4 mapped into IPv6.
    pub addr: [u32; 4],
    /// Host order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// Finds an intercepted connection's original destination from the proxy's side: the network
/// namespace of the pod (the same loopback address and port can be in use in every pod) and
/// the client's address as the proxy's accepted socket sees it (its peer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDstKey {
    /// `SO_NETNS_COOKIE` of the pod's network namespace.
    pub netns_cookie: u64,
    /// The client socket's local address, network-order words.
    pub addr: [u32; 4],
    /// The client socket's local port, host order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Key of the inbound listener map: a pod address that sk_lookup steers to the proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub addr: [u32; 4],
    /// Which of the pod's inbound listeners: [`ListenerKey::PLAINTEXT`] for every steered
    /// port but the HBONE port, [`ListenerKey::HBONE`] for that one.
    pub kind: u32,
}

impl ListenerKey {
    pub const PLAINTEXT: u32 = 0;
    pub const HBONE: u32 = 1;
}

/// Datapath settings the agent writes once at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The outbound listener's port on loopback in every enrolled pod.
    pub outbound_port: u16,
    /// The inbound plaintext listener's port.
    pub inbound_port: u16,
    /// The inbound HBONE port: steered to the pod's HBONE listener, whatever listens on it in
    /// the pod.
    pub hbone_port: u16,
    pub _pad: u16,
    /// `SO_NETNS_COOKIE` of the node's namespace, where the agent runs: the proxy's sockets
    /// live in pod namespaces, its admin and control-plane sockets here.
    pub node_netns_cookie: u64,
}

/// A flow as seen on a pod's host-side veth, from the pod's side: whichever way a packet
/// goes, `pod` is the pod's address and `peer` the other end's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Network-order words, IPv4 mapped into IPv6.
    pub pod: [u32; 4],
    pub peer: [u32; 4],
    /// Host order.
    pub pod_port: u16,
    pub peer_port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// One direction of a [`FlowKey`]'s traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowDirection {
    pub packets: u64,
    /// IP packet bytes (IP header included, link layer not).
    pub bytes: u64,
    /// Transport payload bytes (after the TCP or UDP header).
    pub payload: u64,
}

/// Per-flow counters, written by the tc programs (atomic adds) and by the drop tracer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Leaving the pod (tc ingress on its host-side veth).
    pub from_pod: FlowDirection,
    /// Entering the pod (tc egress on its host-side veth).
    pub to_pod: FlowDirection,
    /// Packets of this flow the kernel dropped anywhere (kfree_skb), either direction.
    pub drops: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the first and the latest packet.
    pub first_ns: u64,
    pub last_ns: u64,
    /// The kernel's `enum skb_drop_reason` of the latest drop (0: none).
    pub last_drop_reason: u32,
    /// TCP flags seen, OR-ed over both directions (FIN 0x01, SYN 0x02, RST 0x04, ...).
    pub tcp_flags: u32,
    /// Every drop reason seen, one bit per `enum skb_drop_reason` value below 128 (bit `r % 64`
    /// of word `r / 64`): a loss test's `NETFILTER_DROP` stays visible after a later
    /// `TCP_OLD_DATA` (a duplicate the receiver discards) has become the latest reason.
    /// Subsystem reasons (high 16 bits set) only show as the latest.
    pub drop_reasons_seen: [u64; 2],
}

impl FlowStats {
    /// The drop reasons recorded in [`FlowStats::drop_reasons_seen`], ascending.
    pub fn drop_reasons(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..128).filter(|r| self.drop_reasons_seen[(r / 64) as usize] & (1 << (r % 64)) != 0)
    }
}

/// Kernel TCP health of one of the proxy's sockets, by socket cookie; written by sock_ops on
/// the agent's own cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpHealth {
    /// Smoothed RTT in microseconds (the kernel keeps it times 8; this is the real value).
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    /// Segments retransmitted over the connection's life (`tcp_sock.total_retrans`).
    pub total_retrans: u32,
    /// Retransmission callbacks seen (one per retransmitted segment, timeouts included).
    pub retrans_events: u32,
    /// The latest TCP state (`BPF_TCP_*`, as in include/net/tcp_states.h).
    pub state: u32,
    /// State changes seen.
    pub state_changes: u32,
    pub snd_cwnd: u32,
    pub _pad: u32,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// `bpf_ktime_get_ns` of the latest update.
    pub updated_ns: u64,
}

/// Offsets of the `struct sk_buff` fields the drop tracer reads, from the running kernel's
/// BTF (zero `head` means unknown: the tracer is then not loaded).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkBuffOffsets {
    pub head: u32,
    pub network_header: u32,
    pub transport_header: u32,
    pub protocol: u32,
}

/// Per-direction state of a spliced connection, keyed by the cookie of the socket the bytes
/// arrive on. The agent creates it; from then on only the kernel writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceState {
    /// Cookie of the socket the bytes go out of (the key of its entry in the splice sockhash).
    pub peer_cookie: u64,
    /// Bytes the stream verdict redirected to the peer's egress.
    pub redirected: u64,
    /// Bytes the stream verdict passed up to the proxy instead.
    pub passed: u64,
    /// Bytes the verdict cut off the front of skbs because TCP had delivered them already
    /// (a retransmitted segment that partly overlaps received data is queued untrimmed, and
    /// the stream verdict is handed whole skbs; see ebpf/src/splice.rs).
    pub trimmed: u64,
    /// The TCP sequence number just after the last byte the verdict has seen (valid once
    /// [`SPLICE_SEQ_KNOWN`] is set).
    pub next_seq: u32,
    /// [`SPLICE_SEQ_KNOWN`], [`SPLICE_BROKEN`].
    pub flags: u32,
}

/// [`SpliceState::flags`]: `next_seq` holds a sequence number.
pub const SPLICE_SEQ_KNOWN: u32 = 1;
/// [`SpliceState::flags`]: the verdict could not keep the byte stream exact (a gap in the
/// sequence, or an overlap it could not trim). From then on it passes every byte up, and the
/// proxy resets the connection on both sides instead of forwarding anything more.
pub const SPLICE_BROKEN: u32 = 2;

/// The proxy's side of a spliced direction, same key as [`SpliceState`]. Only the agent
/// writes it (whole-value updates); the kernel only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceCtl {
    /// Of the bytes the verdict passed up, how many the proxy has written to the peer. The
    /// verdict redirects only while this equals `SpliceState::passed`, so redirected bytes
    /// can never overtake bytes still in the proxy.
    pub forwarded: u64,
    /// Backpressure: the most bytes this direction may have given the peer socket that it
    /// has not transmitted yet (its unsent queue plus the redirect backlog). Past it the
    /// verdict passes bytes up, and the proxy's blocking write closes the source's window.
    /// Bytes on the wire awaiting an ACK do not count: a fast reader behind a large receive
    /// window would look congested.
    pub inflight_cap: u64,
    /// Bytes the peer socket had been handed (sent or queued) when the splice began.
    pub peer_base_sent: u64,
}

/// Offsets of the `struct tcp_sock` fields the splice verdict reads, from the running
/// kernel's BTF (set by the agent at load time; zero means unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSockOffsets {
    /// `u64 bytes_sent`: bytes transmitted, retransmissions included.
    pub bytes_sent: u32,
    /// `u64 bytes_retrans`.
    pub bytes_retrans: u32,
    /// `u32 copied_seq`: the sequence number of the next byte to be read.
    pub copied_seq: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<SockAddr>() == 20);
const _: () = assert!(size_of::<OrigDstKey>() == 32);
const _: () = assert!(size_of::<ListenerKey>() == 20);
const _: () = assert!(size_of::<DatapathConfig>() == 16);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowDirection>() == 24);
const _: () = assert!(size_of::<FlowStats>() == 96);
const _: () = assert!(size_of::<TcpHealth>() == 56);
const _: () = assert!(size_of::<SkBuffOffsets>() == 16);
const _: () = assert!(size_of::<SpliceState>() == 40);
const _: () = assert!(size_of::<SpliceCtl>() == 24);
const _: () = assert!(size_of::<TcpSockOffsets>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], made only of integers, with explicit padding, so any
    // bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for super::SockAddr {}
    unsafe impl aya::Pod for super::OrigDstKey {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::SpliceState {}
    unsafe impl aya::Pod for super::SpliceCtl {}
    unsafe impl aya::Pod for super::TcpSockOffsets {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowDirection {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::TcpHealth {}
    unsafe impl aya::Pod for super::SkBuffOffsets {}
}
