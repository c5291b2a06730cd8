//! HBONE: app connections carried as HTTP/2 CONNECT streams over mutual TLS between nodes,
//! wire-compatible with Istio's ztunnel (`../shared/interop/hbone.md` has the facts).
//!
//! - `client`: outbound to a captured workload on another node, on a pooled connection
//!   (`pool`) to `<pod IP>:15008`, presenting the source pod identity's certificate and
//!   accepting only the destination's identity.
//! - `server`: the HBONE listener in each enrolled pod, terminating mutual TLS with that pod
//!   identity's certificate and handing each CONNECT to the inbound stages with the peer's
//!   identity.
//! - `stream`: the bytes between a stream and a TCP connection; `io`: a stream as a byte
//!   stream, for HTTP carried in HBONE.

pub mod client;
pub mod io;
pub mod pool;
pub mod server;
pub mod stream;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use rustls::ServerConfig;

use crate::identity::{IdentityManager, Slot, tls};

/// HTTP/2 settings, ztunnel's.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
/// Idle pooled connections are released after this (ztunnel's `POOL_UNUSED_RELEASE_TIMEOUT`).
pub const POOL_IDLE: Duration = Duration::from_secs(300);
/// How long a TLS handshake may take, either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What HBONE needs, shared by every connection: the node's certificates, the client pool,
/// the servers' TLS settings per identity, and the counters.
pub struct Hbone {
    pub identities: Arc<IdentityManager>,
    pub pool: pool::Pool,
    pub port: u16,
    server_configs: Mutex<HashMap<Arc<str>, Arc<ServerConfig>>>,
    pub counters: HboneCounters,
}

impl std::fmt::Debug for Hbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hbone").field("port", &self.port).finish_non_exhaustive()
    }
}

/// Handshakes and their failures by reason, both sides, and streams.
#[derive(Debug, Default)]
pub struct HboneCounters {
    pub client_handshakes: AtomicU64,
    pub server_handshakes: AtomicU64,
    /// `(side, reason)` → count; side is `client` or `server`.
    pub handshake_failures: Mutex<BTreeMap<(&'static str, String), u64>>,
    pub inbound_streams: AtomicU64,
    /// HBONE connections this node's pods hold open now (server side).
    pub open_tunnels: AtomicU64,
}

impl HboneCounters {
    pub fn handshake_failed(&self, side: &'static str, reason: &str) {
        *self
            .handshake_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((side, reason.into()))
            .or_default() += 1;
    }
}

impl Hbone {
    pub fn new(identities: Arc<IdentityManager>, port: u16) -> Self {
        Self {
            identities,
            pool: pool::Pool::default(),
            port,
            server_configs: Mutex::default(),
            counters: HboneCounters::default(),
        }
    }

    /// The server side's TLS settings for a pod identity (built once; they read the
    /// identity's current certificate at each handshake).
    fn server_config(&self, slot: &Arc<Slot>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut configs = self.server_configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = configs.get(&slot.identity) {
            return Ok(Arc::clone(config));
        }
        let config = Arc::new(tls::server_config(Arc::clone(slot), &self.identities.roots)?);
        configs.insert(Arc::clone(&slot.identity), Arc::clone(&config));
        Ok(config)
    }

    /// Forgets what belonged to identities the node no longer holds.
    pub fn retain_identities(&self) {
        let held = self.identities.identities();
        self.server_configs.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| held.contains(&**id));
    }

    pub fn count_handshake(&self, side: &'static str) {
        match side {
            "client" => &self.counters.client_handshakes,
            _ => &self.counters.server_handshakes,
        }
        .fetch_add(1, Relaxed);
    }
}
