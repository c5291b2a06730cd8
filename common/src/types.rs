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
    /// Most bytes that may sit redirected but not yet sent by the peer before the verdict
    /// passes bytes to the proxy again (so the TCP window closes on a slow reader).
    pub inflight_cap: u64,
}

const _: () = assert!(size_of::<SockAddr>() == 20);
const _: () = assert!(size_of::<OrigDstKey>() == 32);
const _: () = assert!(size_of::<ListenerKey>() == 16);
const _: () = assert!(size_of::<DatapathConfig>() == 8);
const _: () = assert!(size_of::<SpliceState>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], made only of integers, with explicit padding, so any
    // bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for super::SockAddr {}
    unsafe impl aya::Pod for super::OrigDstKey {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::SpliceState {}
}
