//! The proxy's balancing state per service: each endpoint's load, latency and ejection
//! ([`endpoint`]), the service's open connections against its circuit breaker, and its
//! counters. Kept across directory updates (an endpoint keeps its state while it stays);
//! what to pick is [`pick`]'s, a pure decision over a snapshot of it.

pub mod endpoint;
pub mod pick;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Instant, SystemTime},
};

pub use endpoint::EndpointState;
pub use pick::{Ask, Candidate, NoEndpoint};

use crate::{
    directory::Directory,
    report::status::{EndpointReport, ServiceReport},
    services::{Endpoint, EndpointKey, ServiceInfo},
};

#[derive(Debug, Default)]
pub struct Balancer {
    services: Mutex<HashMap<Arc<str>, Arc<ServiceState>>>,
}

/// One service's state on this node.
#[derive(Debug, Default)]
pub struct ServiceState {
    endpoints: Mutex<HashMap<EndpointKey, Arc<EndpointState>>>,
    /// Connections to it open now (connecting included): what `maxConnections` bounds.
    pub active: AtomicU32,
    /// Connections held while it has no endpoint (scale from zero).
    pub held: AtomicU32,
    rr: AtomicUsize,
    pub counters: ServiceCounters,
}

/// What happened to the service's connections on this node, for metrics.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Connections that reached one of its endpoints.
    pub connections: AtomicU64,
    /// Connect attempts that failed and were retried on another endpoint.
    pub retries: AtomicU64,
    /// Connections sent to its fallback service.
    pub fallbacks: AtomicU64,
    /// Refused at once: the circuit breaker was open.
    pub circuit_open: AtomicU64,
    /// Failed: no endpoint could take them (none, none healthy, every attempt failed).
    pub no_endpoint: AtomicU64,
    /// Held for a scale-up, then forwarded / timed out / refused because the hold was full.
    pub held_forwarded: AtomicU64,
    pub held_timed_out: AtomicU64,
    pub held_refused: AtomicU64,
    /// Endpoints ejected by outlier detection.
    pub ejections: AtomicU64,
}

impl Balancer {
    pub fn service(&self, name: &Arc<str>) -> Arc<ServiceState> {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(services.entry(Arc::clone(name)).or_default())
    }

    /// Forgets services and endpoints the directory no longer has, once nothing uses them.
    pub fn prune(&self, directory: &Directory) {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services.retain(|name, state| {
            let Some(service) = directory.service_named(name) else {
                return state.active.load(Relaxed) > 0 || state.held.load(Relaxed) > 0;
            };
            let mut endpoints = state.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            endpoints.retain(|key, e| {
                e.outstanding.load(Relaxed) > 0 || service.endpoints.iter().any(|x| x.is(key))
            });
            true
        });
    }

    /// Every service's state with its endpoints, for status and metrics.
    pub fn view(&self, directory: &Directory) -> Vec<ServiceReport> {
        let services: Vec<(Arc<str>, Arc<ServiceState>)> = {
            let map = self.services.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(n, s)| (Arc::clone(n), Arc::clone(s))).collect()
        };
        let now = Instant::now();
        let mut views: Vec<ServiceReport> = services
            .into_iter()
            .map(|(name, state)| {
                let info = directory.service_named(&name);
                state.view(&name, info.map(|i| &**i), now)
            })
            .collect();
        views.sort_by(|a, b| a.service.cmp(&b.service));
        views
    }
}

impl ServiceState {
    pub fn endpoint(&self, endpoint: &Endpoint) -> Arc<EndpointState> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(endpoints.entry(endpoint.key()).or_default())
    }

    pub fn rr(&self) -> &AtomicUsize {
        &self.rr
    }

    /// Whether one more endpoint of `service` may be ejected: at most its max ejection
    /// percent of them at once, but always one (as Envoy does).
    pub fn may_eject(&self, service: &ServiceInfo, now: Instant) -> bool {
        let Some(policy) = &service.policy.outlier_detection else { return false };
        let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let ejected = endpoints.values().filter(|e| e.ejected_until(now).is_some()).count();
        let allowed = (service.endpoints.len() * policy.max_ejection_percent as usize / 100).max(1);
        ejected < allowed
    }

    fn view(&self, name: &str, info: Option<&ServiceInfo>, now: Instant) -> ServiceReport {
        let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let wall = SystemTime::now();
        let mut list: Vec<EndpointReport> = endpoints
            .iter()
            .map(|(key, e)| {
                let described = info.and_then(|i| i.endpoints.iter().find(|x| x.is(key)));
                EndpointReport {
                    pod: format!("{}/{}", key.0, key.1),
                    node: described.map(|d| d.node.to_string()),
                    outstanding: e.outstanding.load(Relaxed),
                    ewma_latency_us: e.latency_us(now).round() as u64,
                    picks: e.picks.load(Relaxed),
                    connect_failures: e.connect_failures.load(Relaxed),
                    consecutive_failures: e.consecutive_failures(),
                    ejections: e.ejections.load(Relaxed),
                    ejected_until_unix_ms: e.ejected_until(now).map(|until| {
                        let at = wall + (until - now);
                        at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
                    }),
                }
            })
            .collect();
        list.sort_by(|a, b| a.pod.cmp(&b.pod));
        let c = &self.counters;
        ServiceReport {
            service: name.to_owned(),
            endpoints_known: info.map_or(0, |i| i.endpoints.len()),
            active: self.active.load(Relaxed),
            held: self.held.load(Relaxed),
            max_connections: info.and_then(|i| i.policy.max_connections),
            connections: c.connections.load(Relaxed),
            retries: c.retries.load(Relaxed),
            fallbacks: c.fallbacks.load(Relaxed),
            circuit_open: c.circuit_open.load(Relaxed),
            no_endpoint: c.no_endpoint.load(Relaxed),
            held_forwarded: c.held_forwarded.load(Relaxed),
            held_timed_out: c.held_timed_out.load(Relaxed),
            held_refused: c.held_refused.load(Relaxed),
            ejections: c.ejections.load(Relaxed),
            endpoints: list,
        }
    }
}

/// Counts a connection against its service and its endpoint while it lives.
pub struct Outstanding {
    endpoint: Arc<EndpointState>,
}

impl Outstanding {
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }

    pub fn new(endpoint: Arc<EndpointState>) -> Self {
        endpoint.outstanding.fetch_add(1, Relaxed);
        endpoint.picks.fetch_add(1, Relaxed);
        Self { endpoint }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Relaxed);
    }
}

/// A connection counted in its service's open connections (the circuit breaker's count).
pub struct Active(Arc<ServiceState>);

impl Active {
    /// Counts one more, unless that would pass `max`.
    pub fn admit(state: &Arc<ServiceState>, max: Option<u32>) -> Option<Self> {
        let admitted = state.active.fetch_update(Relaxed, Relaxed, |n| match max {
            Some(max) if n >= max => None,
            _ => Some(n + 1),
        });
        admitted.ok().map(|_| Self(Arc::clone(state)))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_opens_at_max_connections_and_closes_as_they_end() {
        let state = Arc::new(ServiceState::default());
        let open: Vec<Active> = (0..10).map(|_| Active::admit(&state, Some(10)).expect("room")).collect();
        assert!(Active::admit(&state, Some(10)).is_none());
        drop(open);
        assert_eq!(state.active.load(Relaxed), 0);
        assert!(Active::admit(&state, None).is_some());
    }
}
