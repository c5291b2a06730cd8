//! The node's one shared proxy. Each enrolled pod gets listeners inside its own network
//! namespace (DESIGN decision 4); which listener accepted a connection tells the proxy which
//! pod is speaking.
//!
//! A connection passes through stages, each a module with one job (docs/ARCHITECTURE.md
//! draws them): `accept` (with `admission`) → `classify` → `authorize` → `route` →
//! `connect` → `relay`, while `record` keeps its flow and counters; `connection` sequences
//! them, and `context` holds what they learn.

mod accept;
pub mod admission;
mod authorize;
mod autoscaler;
pub mod balance;
mod classify;
mod connect;
mod connection;
mod context;
pub mod hbone;
mod hold;
pub mod http;
mod listeners;
mod rate_limit;
mod record;
pub(crate) mod relay;
pub mod revoke;
mod route;
pub mod stats;
#[cfg(test)]
mod testing;
mod to_service;
mod upstream;

/// See `splice::AUDIT_MISMATCHES`.
pub fn splice_audit_mismatches() -> u64 {
    relay::splice::AUDIT_MISMATCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// See `forward::AUDIT_MISMATCHES`.
pub fn copy_audit_mismatches() -> u64 {
    relay::forward::AUDIT_MISMATCHES.load(std::sync::atomic::Ordering::Relaxed)
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

pub use crate::report::status::{ListenerInfo, PodStatsSnapshot, ProxyTotals};

use crate::{
    datapath::{ListenerMarks, OriginalDestinations, SpliceMaps},
    directory::Directory,
    flows::FlowTable,
    pods::Netns,
    workload::{Names, WorkloadRef},
};

pub use listeners::{IpFamily, PodListeners};
pub use stats::PodStats;

/// The proxy's settings, derived from the agent's `Config`.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub hbone_port: u16,
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
    /// Whether the pod's namespace is set up for transparent sockets (`pods::transparent`):
    /// the HBONE server's connections to its app then keep the client's address.
    pub transparent: AtomicBool,
    /// HBONE (mutual TLS) connections to the pod open now: they count against its connection
    /// cap beside the streams they carry, so a peer cannot hold handshakes without bound.
    pub tunnels: AtomicU64,
}

impl PodRuntime {
    pub fn splice(&self) -> bool {
        self.splice.load(Relaxed)
    }

    /// The pod named after itself, with the default service account: what the proxy calls
    /// it when the directory does not know its address.
    pub fn workload_ref(&self) -> Arc<WorkloadRef> {
        let (namespace, pod) = self.name.split_once('/').unwrap_or(("", &self.name));
        Arc::new(WorkloadRef::new(Names { namespace, pod, ..Names::default() }))
    }
}

impl ProxySettings {
    fn route(&self) -> route::RouteSettings {
        route::RouteSettings { splice_network_legs: self.splice_network_legs, hbone_port: None }
    }

    fn relay(&self) -> relay::RelaySettings {
        relay::RelaySettings {
            max_buffer_bytes: self.max_buffer_bytes,
            splice_after_bytes: self.splice_after_bytes,
            splice_inflight_cap: self.splice_inflight_cap,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// The proxy's handles on the datapath: each map it uses, typed for its one use.
#[derive(Debug)]
pub struct ProxyMaps {
    pub listener_marks: ListenerMarks,
    pub original_destinations: OriginalDestinations,
    pub splice: SpliceMaps,
}

/// Everything the connection tasks share.
#[derive(Debug)]
struct ProxyState {
    settings: ProxySettings,
    listener_marks: ListenerMarks,
    original_destinations: OriginalDestinations,
    splice_maps: SpliceMaps,
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
    /// Certificates and the HBONE client pool, when the node has a CA.
    hbone: Option<Arc<hbone::Hbone>>,
    /// Authorized live connections, checked again when policies change.
    revocations: revoke::Revocations,
    /// Each service's balancing state on this node.
    balancer: balance::Balancer,
    /// Bumped whenever a directory is published: held connections wait on it.
    directory_changes: tokio::sync::watch::Sender<u64>,
    autoscaler: Arc<autoscaler::Autoscaler>,
    /// Per source identity, for the services of this node's pods.
    rate_limits: rate_limit::RateLimits,
    /// Retry budgets and request metrics of the HTTP stage.
    http: http::HttpState,
}

/// Cheap to clone; shared between the reconciler and every connection task.
#[derive(Clone, Debug)]
pub struct Proxy {
    state: Arc<ProxyState>,
}

impl Proxy {
    /// `runtime` is the data-plane runtime every connection runs on.
    pub fn new(
        settings: ProxySettings,
        maps: ProxyMaps,
        flows: FlowTable,
        runtime: tokio::runtime::Handle,
        hbone: Option<Arc<hbone::Hbone>>,
    ) -> Self {
        Self {
            state: Arc::new(ProxyState {
                admission: admission::Admission::new(
                    settings.max_connections_per_pod,
                    settings.max_connections,
                ),
                settings,
                listener_marks: maps.listener_marks,
                original_destinations: maps.original_destinations,
                splice_maps: maps.splice,
                pods: RwLock::default(),
                runtime,
                active: AtomicU64::new(0),
                flows,
                directory: RwLock::default(),
                hbone,
                revocations: revoke::Revocations::default(),
                balancer: balance::Balancer::default(),
                directory_changes: tokio::sync::watch::Sender::new(0),
                autoscaler: Arc::default(),
                rate_limits: rate_limit::RateLimits::default(),
                http: http::HttpState::default(),
            }),
        }
    }

    pub fn hbone(&self) -> Option<&Arc<hbone::Hbone>> {
        self.state.hbone.as_ref()
    }

    /// Route settings, with HBONE when the node has it.
    fn route_settings(&self) -> route::RouteSettings {
        route::RouteSettings {
            hbone_port: self.state.hbone.as_ref().map(|h| h.port),
            ..self.state.settings.route()
        }
    }

    pub fn flows(&self) -> &FlowTable {
        &self.state.flows
    }

    /// Replaces the names and policies connections are checked against, and checks the live
    /// ones again: any the new policies deny is closed.
    pub fn publish_directory(&self, directory: Arc<Directory>) {
        *self.state.directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&directory);
        self.state.balancer.prune(&directory);
        self.state.http.prune(&directory);
        self.state.directory_changes.send_modify(|generation| *generation += 1);
        let revoked = self.state.revocations.recheck(&directory);
        if revoked > 0 {
            tracing::info!(revoked, "closed live connections that the new policies deny");
        }
    }

    /// Each service's balancing state, with its endpoints'.
    pub fn services(&self) -> Vec<crate::report::status::ServiceReport> {
        self.state.balancer.view(&self.directory())
    }

    /// Scale-up requests sent to autoscalers, and those that failed.
    pub fn autoscaler_requests(&self) -> (u64, u64) {
        let a = &self.state.autoscaler;
        (a.asked.load(Relaxed), a.failed.load(Relaxed))
    }

    /// Connections refused by a rate limit: (service, source identity, limit) → count.
    pub fn rate_limited(&self) -> Vec<((String, String, &'static str), u64)> {
        self.state.rate_limits.refusals()
    }

    fn ask_autoscaler(&self, service: &Arc<str>, policy: &crate::services::ScaleFromZero, held: u32) {
        let node = Arc::clone(&self.directory().here.node);
        self.state.autoscaler.ask(service, &node, policy, held, policy.hold_timeout);
    }

    /// The HTTP stage's request metrics and retry counters.
    pub fn http(&self) -> &http::HttpState {
        &self.state.http
    }

    /// Connections closed because a policy change denied them.
    pub fn revoked_connections(&self) -> u64 {
        self.state.revocations.revoked.load(Relaxed)
    }

    pub fn directory(&self) -> Arc<Directory> {
        Arc::clone(&self.state.directory.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn settings(&self) -> &ProxySettings {
        &self.state.settings
    }

    /// Replaces the set of enrolled pods the proxy routes to directly.
    pub fn publish_pods(&self, pods: impl IntoIterator<Item = Arc<PodRuntime>>) {
        let mut by_ip = HashMap::new();
        for pod in pods {
            for ip in &pod.ips {
                by_ip.insert(*ip, Arc::clone(&pod));
            }
        }
        *self.state.pods.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(by_ip);
    }

    fn pod_by_ip(&self, ip: &IpAddr) -> Option<Arc<PodRuntime>> {
        self.state.pods.read().unwrap_or_else(|p| p.into_inner()).get(ip).cloned()
    }

    pub fn active_connections(&self) -> u64 {
        self.state.active.load(Relaxed)
    }

    pub fn refusals(&self) -> admission::Refusals {
        self.state.admission.refusals()
    }

    /// Opens the pod's listeners inside its namespace and starts accepting.
    pub fn open_listeners(&self, pod: &Arc<PodRuntime>) -> std::io::Result<PodListeners> {
        listeners::open(self, pod)
    }
}
