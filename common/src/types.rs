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
}

/// Datapath settings the agent writes once at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The outbound listener's port on loopback in every enrolled pod.
    pub outbound_port: u16,
    /// The inbound plaintext listener's port.
    pub inbound_port: u16,
    /// The inbound HBONE port (never steered: the agent listens on it directly).
    pub hbone_port: u16,
    pub _pad: u16,
}

/// Per-direction state of a spliced connection, keyed by the cookie of the socket the bytes
/// arrive on. The agent creates it; from then on only the kernel writes it (atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceState {
    /// Cookie of the socket the bytes go out of (the key of its entry in the splice sockhash).
    pub peer_cookie: u64,
    /// Bytes the stream verdict redirected to the peer's egress.
    pub redirected: u64,
    /// Bytes the stream verdict passed up to the proxy instead.
    pub passed: u64,
}

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
}

const _: () = assert!(size_of::<SockAddr>() == 20);
const _: () = assert!(size_of::<OrigDstKey>() == 32);
const _: () = assert!(size_of::<ListenerKey>() == 16);
const _: () = assert!(size_of::<DatapathConfig>() == 8);
const _: () = assert!(size_of::<SpliceState>() == 24);
const _: () = assert!(size_of::<SpliceCtl>() == 24);
const _: () = assert!(size_of::<TcpSockOffsets>() == 8);

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
}
