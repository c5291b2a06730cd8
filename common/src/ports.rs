//! The agent's well-known ports (Istio's numbers, so operators recognise them).

/// Outbound capture: connect4/connect6 rewrite an enrolled pod's TCP connects to this port on
/// loopback inside the pod's own network namespace.
pub const OUTBOUND: u16 = 15001;
/// Inbound plaintext: sk_lookup steers connections for the pod's addresses to this listener.
pub const INBOUND: u16 = 15006;
/// Inbound HBONE (HTTP/2 CONNECT over mTLS).
pub const HBONE: u16 = 15008;
/// Admin API (node network namespace, loopback only).
pub const ADMIN: u16 = 15000;
/// Prometheus metrics.
pub const METRICS: u16 = 15020;
/// Readiness.
pub const READINESS: u16 = 15021;

/// Source address of the proxy's connections to an app inside its own pod (Istio's inbound
/// passthrough convention). sk_lookup skips loopback sources, so these are never steered back
/// into the proxy.
pub const PROXY_SOURCE_V4: [u8; 4] = [127, 0, 0, 6];
