//! `/metrics`: the flow table's Istio-named TCP metrics, then Nodemesh's own (kernel reason
//! counters, map occupancy, flow table, xDS, proxy).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{AdminState, SpecSource};
use crate::{
    datapath::{MapOccupancy, Occupancy},
    flows::metrics::SeriesTotals,
    metrics::{Exposition, Kind},
};

/// Walking a full LRU costs one syscall per entry; occupancy is refreshed at most this often.
const OCCUPANCY_TTL: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct OccupancyCache {
    maps: Occupancy,
    cached: Mutex<Option<(Instant, Arc<Vec<MapOccupancy>>)>>,
}

impl OccupancyCache {
    pub fn new(maps: Occupancy) -> Self {
        Self { maps, cached: Mutex::default() }
    }

    pub fn get(&self) -> Arc<Vec<MapOccupancy>> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, value)) = &*cached
            && at.elapsed() < OCCUPANCY_TTL
        {
            return Arc::clone(value);
        }
        let value = Arc::new(self.maps.read());
        *cached = Some((Instant::now(), Arc::clone(&value)));
        value
    }
}

pub fn render(s: &AdminState) -> String {
    let mut e = Exposition::default();
    let flows = s.proxy.flows();
    let series = flows.series();
    type Family = (&'static str, &'static str, fn(&SeriesTotals) -> u64);
    let families: [Family; 4] = [
        ("istio_tcp_connections_opened_total", "TCP connections opened, by source and destination.", |t| {
            t.opened
        }),
        ("istio_tcp_connections_closed_total", "TCP connections closed, by source and destination.", |t| {
            t.closed
        }),
        // Istio's sense: bytes sent back to the source (the response side) ...
        ("istio_tcp_sent_bytes_total", "Bytes sent from the destination back to the source.", |t| t.received),
        // ... and bytes received from the source (the request side).
        ("istio_tcp_received_bytes_total", "Bytes received from the source for the destination.", |t| t.sent),
    ];
    for (name, help, value) in families {
        let mut family = e.family(name, Kind::Counter, help);
        for (labels, totals) in &series {
            family.sample(&labels.pairs(), value(totals) as f64);
        }
    }

    crate::proxy::http::metrics::render(&mut e, s.proxy.http());

    let mut failed = e.family(
        "nodemesh_connections_failed_total",
        Kind::Counter,
        "Connections the proxy accepted but did not forward, by verdict and reason.",
    );
    for ((verdict, reason), count) in flows.failures() {
        failed.sample(&[("verdict", verdict.as_str()), ("reason", &reason)], count as f64);
    }

    let counters = s.datapath.lock().unwrap_or_else(|p| p.into_inner()).counters();
    let mut decisions = e.family(
        "nodemesh_kernel_decisions_total",
        Kind::Counter,
        "Decisions of the kernel programs, by program and reason (skips and drops included).",
    );
    for (counter, count) in counters {
        decisions.sample(&[("program", counter.program()), ("reason", counter.reason())], count as f64);
    }

    let occupancy = s.occupancy.get();
    let mut entries = e.family("nodemesh_map_entries", Kind::Gauge, "Entries in each bounded kernel map.");
    for m in occupancy.iter() {
        entries.sample(&[("map", m.map)], m.entries as f64);
    }
    let mut capacity = e.family("nodemesh_map_capacity", Kind::Gauge, "Capacity of each bounded kernel map.");
    for m in occupancy.iter() {
        capacity.sample(&[("map", m.map)], f64::from(m.capacity));
    }

    let table = flows.stats();
    e.family("nodemesh_flow_table_flows", Kind::Gauge, "Flows in the agent's flow table.")
        .sample(&[("state", "active")], table.active as f64)
        .sample(&[("state", "closed")], table.closed as f64);
    e.family("nodemesh_flow_table_closed_capacity", Kind::Gauge, "Closed flows the table keeps.")
        .sample(&[], table.max_closed as f64);
    e.family("nodemesh_flow_table_evicted_total", Kind::Counter, "Closed flows that gave way to newer ones.")
        .sample(&[], table.evicted as f64);
    e.family("nodemesh_metric_series", Kind::Gauge, "Label sets of the istio_tcp_* metrics.")
        .sample(&[], table.series as f64);
    e.family(
        "nodemesh_metric_series_overflow_total",
        Kind::Counter,
        "Flow events counted in the all-unknown series because the series cap was reached.",
    )
    .sample(&[], table.series_overflow as f64);

    e.family("nodemesh_proxy_active_connections", Kind::Gauge, "Connections the proxy is handling.")
        .sample(&[], s.proxy.active_connections() as f64);
    let admin_refused = &super::http::REFUSED;
    let mut family = e.family(
        "nodemesh_admin_refused_connections_total",
        Kind::Counter,
        "Connections to the admin, metrics or readiness port closed at once because the port was at its cap.",
    );
    for (port, n) in [
        ("admin", &admin_refused.admin),
        ("metrics", &admin_refused.metrics),
        ("readiness", &admin_refused.readiness),
    ] {
        family.sample(&[("port", port)], n.load(std::sync::atomic::Ordering::Relaxed) as f64);
    }
    let refused = s.proxy.refusals();
    let mut family = e.family(
        "nodemesh_proxy_refused_connections_total",
        Kind::Counter,
        "Connections reset before the proxy did anything with them: loop (reached the inbound listener from inside the pod), pod_limit, node_limit.",
    );
    for (reason, n) in
        [("loop", refused.r#loop), ("pod_limit", refused.pod_limit), ("node_limit", refused.node_limit)]
    {
        family.sample(&[("reason", reason)], n as f64);
    }
    e.family(
        "nodemesh_connections_revoked_total",
        Kind::Counter,
        "Live connections closed (reset) because a policy change denied them.",
    )
    .sample(&[], s.proxy.revoked_connections() as f64);
    e.family(
        "nodemesh_splice_audit_mismatches_total",
        Kind::Counter,
        "Spliced directions whose byte counts disagreed with the kernel's TCP counts (the connection was reset).",
    )
    .sample(&[], crate::proxy::splice_audit_mismatches() as f64);
    e.family(
        "nodemesh_copy_audit_mismatches_total",
        Kind::Counter,
        "Copied directions whose byte counts disagreed with the kernel's TCP counts (the connection was reset).",
    )
    .sample(&[], crate::proxy::copy_audit_mismatches() as f64);
    let enrolled = s.view.lock().unwrap_or_else(|p| p.into_inner()).pods.len();
    e.family("nodemesh_enrolled_pods", Kind::Gauge, "Pods whose traffic the agent intercepts.")
        .sample(&[], enrolled as f64);

    if let SpecSource::ControlPlane(shared) = &s.source {
        let status = shared.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        e.family("nodemesh_xds_connected", Kind::Gauge, "1 while the control-plane stream is up.")
            .sample(&[], if status.connected { 1.0 } else { 0.0 });
        e.family("nodemesh_xds_acks_total", Kind::Counter, "Responses accepted from the control plane.")
            .sample(&[], status.acks as f64);
        e.family("nodemesh_xds_nacks_total", Kind::Counter, "Responses rejected (NACKed).")
            .sample(&[], status.nacks as f64);
        e.family("nodemesh_xds_resources", Kind::Gauge, "Resources held, by type.")
            .sample(&[("type", "address")], status.counts.addresses as f64)
            .sample(&[("type", "authorization")], status.counts.authorizations as f64);
        let age = status.accepted_unix_s.map_or(-1.0, |t| crate::xds::unix_now().saturating_sub(t) as f64);
        e.family(
            "nodemesh_xds_state_age_seconds",
            Kind::Gauge,
            "Seconds since the state in use was accepted (-1: none yet).",
        )
        .sample(&[], age);
    }

    if let Some(hbone) = s.proxy.hbone() {
        identities(&mut e, hbone);
    }
    services(&mut e, &s.proxy);

    let memory = crate::memory::now();
    e.family("nodemesh_memory_bytes", Kind::Gauge, "The agent's memory.")
        .sample(&[("kind", "rss")], memory.rss_bytes as f64)
        .sample(&[("kind", "heap_allocated")], memory.heap_allocated_bytes as f64)
        .sample(&[("kind", "heap_resident")], memory.heap_resident_bytes as f64);
    e.finish()
}

/// Workload certificates and HBONE: never a key, only what an SRE alerts on (expiry, failing
/// refreshes, handshake failures).
fn identities(e: &mut Exposition, hbone: &crate::proxy::hbone::Hbone) {
    use std::sync::atomic::Ordering::Relaxed;
    let certificates = hbone.identities.report();
    let mut expiry = e.family(
        "nodemesh_certificate_expiry_seconds",
        Kind::Gauge,
        "Unix time each identity's workload certificate expires (absent until one is issued).",
    );
    for c in &certificates {
        if let (Some(not_after), Some(serial)) = (c.not_after_unix_s, &c.serial) {
            expiry.sample(&[("identity", &c.identity), ("serial", serial)], not_after as f64);
        }
    }
    let mut state = e.family(
        "nodemesh_certificate_state",
        Kind::Gauge,
        "1 for each identity's certificate state: pending, valid, refresh_failing, expired.",
    );
    for c in &certificates {
        state.sample(&[("identity", &c.identity), ("state", &c.state)], 1.0);
    }
    let counters = &hbone.identities.counters;
    e.family(
        "nodemesh_certificates_issued_total",
        Kind::Counter,
        "Workload certificates received from the CA.",
    )
    .sample(&[], counters.issued.load(Relaxed) as f64);
    let mut failures = e.family(
        "nodemesh_certificate_request_failures_total",
        Kind::Counter,
        "Certificate requests that failed, by reason (unreachable, permission_denied, unauthenticated, token, invalid, ...).",
    );
    for (reason, n) in counters.failures.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        failures.sample(&[("reason", reason)], *n as f64);
    }
    let mut refusals = e.family(
        "nodemesh_certificate_refusals_total",
        Kind::Counter,
        "HBONE connections refused because an identity had no usable certificate, by reason.",
    );
    for (reason, n) in counters.refusals.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        refusals.sample(&[("reason", reason)], *n as f64);
    }
    let c = &hbone.counters;
    e.family("nodemesh_hbone_handshakes_total", Kind::Counter, "Mutual TLS handshakes completed, by side.")
        .sample(&[("side", "client")], c.client_handshakes.load(Relaxed) as f64)
        .sample(&[("side", "server")], c.server_handshakes.load(Relaxed) as f64);
    let mut failed = e.family(
        "nodemesh_hbone_handshake_failures_total",
        Kind::Counter,
        "Mutual TLS handshakes that failed, by side and reason.",
    );
    for ((side, reason), n) in c.handshake_failures.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        failed.sample(&[("side", side), ("reason", reason)], *n as f64);
    }
    e.family("nodemesh_hbone_pool_connections", Kind::Gauge, "Pooled HBONE client connections.")
        .sample(&[], hbone.pool.connections() as f64);
    e.family("nodemesh_hbone_streams_total", Kind::Counter, "HBONE streams (app connections), by side.")
        .sample(&[("side", "client")], hbone.pool.streams.load(Relaxed) as f64)
        .sample(&[("side", "server")], c.inbound_streams.load(Relaxed) as f64);
}

/// Service routing: what the balancer did per service, each endpoint's state, and the
/// refusals by reason; the held gauge and connection counter are what an autoscaler reads to
/// scale a service up from zero, or down to it.
fn services(e: &mut Exposition, proxy: &crate::proxy::Proxy) {
    use crate::report::status::ServiceReport;
    let services = proxy.services();
    type PerService = fn(&ServiceReport) -> f64;
    let per_service: [(&str, Kind, &str, PerService); 7] = [
        (
            "nodemesh_service_connections_total",
            Kind::Counter,
            "Connections to a service address that reached one of its endpoints.",
            |v| v.connections as f64,
        ),
        (
            "nodemesh_service_active_connections",
            Kind::Gauge,
            "Connections to a service open now (connecting included).",
            |v| f64::from(v.active),
        ),
        (
            "nodemesh_service_held_connections",
            Kind::Gauge,
            "Connections held while the service has no endpoint (scale from zero).",
            |v| f64::from(v.held),
        ),
        (
            "nodemesh_service_retries_total",
            Kind::Counter,
            "Connect attempts made on another endpoint after one failed.",
            |v| v.retries as f64,
        ),
        (
            "nodemesh_service_fallbacks_total",
            Kind::Counter,
            "Connections sent to the service's fallback service.",
            |v| v.fallbacks as f64,
        ),
        (
            "nodemesh_service_held_forwarded_total",
            Kind::Counter,
            "Held connections forwarded once an endpoint appeared.",
            |v| v.held_forwarded as f64,
        ),
        ("nodemesh_service_ejections_total", Kind::Counter, "Endpoints ejected by outlier detection.", |v| {
            v.ejections as f64
        }),
    ];
    for (name, kind, help, value) in per_service {
        let mut family = e.family(name, kind, help);
        for v in &services {
            family.sample(&[("service", &v.service)], value(v));
        }
    }
    let mut refused = e.family(
        "nodemesh_service_refused_total",
        Kind::Counter,
        "Connections to a service that none of its endpoints took, by reason: circuit_open, no_endpoint (none, none healthy, every attempt failed), hold_timeout, hold_full.",
    );
    for v in &services {
        for (reason, n) in [
            ("circuit_open", v.circuit_open),
            ("no_endpoint", v.no_endpoint),
            ("hold_timeout", v.held_timed_out),
            ("hold_full", v.held_refused),
        ] {
            refused.sample(&[("service", &v.service), ("reason", reason)], n as f64);
        }
    }
    type Value = fn(&crate::report::status::EndpointReport) -> f64;
    let per_endpoint: [(&str, &str, Value); 3] = [
        ("nodemesh_endpoint_ejected", "1 while an endpoint is ejected.", |ep| {
            if ep.ejected_until_unix_ms.is_some() { 1.0 } else { 0.0 }
        }),
        ("nodemesh_endpoint_outstanding_connections", "Connections picked for an endpoint and open.", |ep| {
            f64::from(ep.outstanding)
        }),
        (
            "nodemesh_endpoint_latency_ewma_seconds",
            "The balancer's latency estimate of an endpoint: the slower of its connects' and its first answers' peak EWMAs.",
            |ep| ep.ewma_latency_us as f64 / 1e6,
        ),
    ];
    for (name, help, value) in per_endpoint {
        let mut family = e.family(name, Kind::Gauge, help);
        for v in &services {
            for ep in &v.endpoints {
                let endpoint = ep.pod.as_str();
                family.sample(&[("service", v.service.as_str()), ("endpoint", endpoint)], value(ep));
            }
        }
    }
    let mut limited = e.family(
        "nodemesh_rate_limited_total",
        Kind::Counter,
        "Connections to a service of this node refused by its rate limits, by source identity and limit (rate, concurrency).",
    );
    for ((service, identity, which), n) in proxy.rate_limited() {
        limited.sample(&[("service", &service), ("source_principal", &identity), ("limit", which)], n as f64);
    }
    let (asked, failed) = proxy.autoscaler_requests();
    e.family(
        "nodemesh_autoscaler_requests_total",
        Kind::Counter,
        "Scale-up requests sent to autoscalers, by result.",
    )
    .sample(&[("result", "sent")], asked as f64)
    .sample(&[("result", "failed")], failed as f64);
}
