//! The node's one shared proxy. Each enrolled pod gets listeners inside its own network
//! namespace (DESIGN decision 4); which listener accepted a connection tells the proxy which
//! pod is speaking.

pub mod admission;
mod connection;
pub(crate) mod forward;
mod idle;
mod listeners;
mod splice;
pub mod stats;
mod tcp_counts;
mod upstream;

/// See `splice::AUDIT_MISMATCHES`.
pub fn splice_audit_mismatches() -> u64 {
    splice::AUDIT_MISMATCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// See `forward::AUDIT_MISMATCHES`.
pub fn copy_audit_mismatches() -> u64 {
    forward::AUDIT_MISMATCHES.load(std::sync::atomic::Ordering::Relaxed)
}

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{datapath::SharedMaps, directory::Directory, flows::FlowTable, pods::Netns};

pub use listeners::{IpFamily, ListenerInfo, ListenerKind, PodListeners};
pub use stats::{PodStats, PodStatsSnapshot};

/// The proxy's settings, derived from the agent's `Config`.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub connect_timeout: Duration,
    pub max_buffer_bytes: usize,
    /// The node's default; a pod's `nodemesh.io/splice` label overrides it.
    pub splice: bool,
    pub splice_inflight_cap: u64,
    /// Bytes a connection moves (both ways) through the copy path before it is spliced.
    pub splice_after_bytes: u64,
    /// Whether connections with a leg that receives from the network are spliced too.
    pub splice_network_legs: bool,
    /// Connections at once per pod, and node-wide (already resolved from the descriptor
    /// limit).
    pub max_connections_per_pod: usize,
    pub max_connections: usize,
    /// Reset connections idle this long (zero: never).
    pub idle_timeout: Duration,
}

/// An enrolled pod as the proxy sees it.
#[derive(Debug)]
pub struct PodRuntime {
    /// `namespace/name`.
    pub name: Arc<str>,
    pub ips: Vec<IpAddr>,
    pub netns: Netns,
    pub stats: PodStats,
    /// Whether this pod's connections may be spliced (node default, or the pod's
    /// `nodemesh.io/splice` label); can change while the pod stays enrolled.
    pub splice: AtomicBool,
}

impl PodRuntime {
    pub fn splice(&self) -> bool {
        self.splice.load(Relaxed)
    }
}

/// Node-wide proxy counters.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ProxyTotals {
    pub active: u64,
    pub outbound_accepted: u64,
    pub inbound_accepted: u64,
    pub failed: u64,
    pub spliced: u64,
    /// Connections refused before the proxy did anything with them, by reason.
    #[serde(default)]
    pub refused: admission::Refusals,
}

#[derive(Debug)]
struct Shared {
    settings: ProxySettings,
    maps: SharedMaps,
    /// Enrolled pods by address, for the same-node shortcut. Read per connection, replaced
    /// whole by the reconciler.
    pods: RwLock<Arc<HashMap<IpAddr, Arc<PodRuntime>>>>,
    runtime: tokio::runtime::Handle,
    /// Connections being proxied, node-wide (outlives any one pod's enrollment).
    active: AtomicU64,
    flows: FlowTable,
    admission: admission::Admission,
    /// Names for addresses, from the spec's source; replaced whole.
    directory: RwLock<Arc<Directory>>,
}

/// Cheap to clone; shared between the reconciler and every connection task.
#[derive(Clone, Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    /// `runtime` is the data-plane runtime every connection runs on.
    pub fn new(
        settings: ProxySettings,
        maps: SharedMaps,
        flows: FlowTable,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                admission: admission::Admission::new(
                    settings.max_connections_per_pod,
                    settings.max_connections,
                ),
                settings,
                maps,
                pods: RwLock::default(),
                runtime,
                active: AtomicU64::new(0),
                flows,
                directory: RwLock::default(),
            }),
        }
    }

    pub fn flows(&self) -> &FlowTable {
        &self.shared.flows
    }

    /// Replaces the names the flow table gives addresses.
    pub fn publish_directory(&self, directory: Arc<Directory>) {
        *self.shared.directory.write().unwrap_or_else(|p| p.into_inner()) = directory;
    }

    pub fn directory(&self) -> Arc<Directory> {
        Arc::clone(&self.shared.directory.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn settings(&self) -> &ProxySettings {
        &self.shared.settings
    }

    pub(crate) fn maps(&self) -> &SharedMaps {
        &self.shared.maps
    }

    /// Replaces the set of enrolled pods the proxy routes to directly.
    pub fn publish_pods(&self, pods: impl IntoIterator<Item = Arc<PodRuntime>>) {
        let mut by_ip = HashMap::new();
        for pod in pods {
            for ip in &pod.ips {
                by_ip.insert(*ip, Arc::clone(&pod));
            }
        }
        *self.shared.pods.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(by_ip);
    }

    fn pod_by_ip(&self, ip: &IpAddr) -> Option<Arc<PodRuntime>> {
        self.shared.pods.read().unwrap_or_else(|p| p.into_inner()).get(ip).cloned()
    }

    pub fn active_connections(&self) -> u64 {
        self.shared.active.load(Relaxed)
    }

    pub fn refusals(&self) -> admission::Refusals {
        self.shared.admission.refusals()
    }

    /// Opens the pod's listeners inside its namespace and starts accepting.
    pub fn open_listeners(&self, pod: &Arc<PodRuntime>) -> std::io::Result<PodListeners> {
        listeners::open(self, pod)
    }
}

/// An address in the kernel programs' 16-byte layout (IPv4 mapped into IPv6).
pub fn ip_words(ip: IpAddr) -> [u32; 4] {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]))
}
