//! The service stage: a connection to a service's address goes to one of its endpoints,
//! picked by the balancer (`balance`). A connect that fails is retried on another endpoint
//! within the connection's connect budget, before any of the app's bytes were read (they
//! wait in the accepted socket), so the app sees a failure only when no endpoint is left.
//! Around it: the service's circuit breaker, its fallback service when it cannot take the
//! connection, and the hold of a connection to a service scaled to zero (`hold`).

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use tokio::net::TcpStream;

use super::{
    Proxy, authorize,
    balance::{Active, Ask, Outstanding, pick},
    context::{Accepted, Classified, Party},
    hold, rate_limit,
    record::Record,
    relay::first_response::FirstResponse,
    route, upstream,
};
use crate::{
    directory::Directory,
    report::flows::Direction,
    services::{EndpointKey, LocalityMode, ServiceInfo},
    workload::WorkloadRef,
};

/// Connect attempts one connection may make, across endpoints: enough to get past a few
/// dead endpoints, few enough that a service-wide outage fails fast.
const MAX_ATTEMPTS: usize = 8;
/// How often a held connection tries again the endpoints that appeared but refused it.
const HELD_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// The service behind an outbound connection's destination, when it is a service address
/// the proxy balances (not one asking for passthrough).
pub(super) fn service_of(
    accepted: &Accepted,
    classified: &Classified,
    directory: &Directory,
) -> Option<Arc<ServiceInfo>> {
    if accepted.direction != Direction::Outbound {
        return None;
    }
    let service = directory.service_at(&classified.original?.ip())?;
    (service.load_balancing.mode != LocalityMode::Passthrough).then(|| Arc::clone(service))
}

/// How one service's attempt ended.
enum Served {
    /// Relayed to the end (or revoked).
    Done(io::Result<()>),
    /// It could not take the connection; the reason is the flow's. `fallback` says whether
    /// its fallback service may take it instead.
    Failed {
        reason: String,
        fallback: bool,
    },
    Denied(String),
}

/// What the stage keeps while it tries the service and then, maybe, its fallback.
struct Attempt<'p> {
    accepted: &'p Accepted,
    classified: Classified,
    proxy: &'p Proxy,
    vip: SocketAddr,
    record: Option<Record<'p>>,
    client: Option<TcpStream>,
    /// When the connect budget (the first service's) runs out.
    deadline: Instant,
}

pub(super) async fn run(
    accepted: &Accepted,
    client: TcpStream,
    classified: Classified,
    service: Arc<ServiceInfo>,
    directory: Arc<Directory>,
    proxy: &Proxy,
) -> io::Result<()> {
    let Some(vip) = classified.original else { return Ok(()) };
    let budget = service.policy.connect_timeout.unwrap_or(proxy.state.settings.connect_timeout);
    let mut attempt = Attempt {
        accepted,
        classified,
        proxy,
        vip,
        record: None,
        client: Some(client),
        deadline: Instant::now() + budget,
    };
    let mut current = service;
    let mut fallen_back = false;
    loop {
        match attempt.serve(&current, &directory).await {
            Served::Done(result) => return result,
            Served::Denied(reason) => {
                attempt.record().deny(reason);
                return Ok(());
            }
            Served::Failed { reason, fallback } => {
                let next = current.policy.fallback.as_deref().and_then(|name| directory.service_named(name));
                if let (false, true, Some(next)) = (fallen_back, fallback, next) {
                    proxy.state.balancer.service(&current.name).counters.fallbacks.fetch_add(1, Relaxed);
                    tracing::debug!(service = %current.name, fallback = %next.name, %reason, "to the fallback service");
                    let to = format!("{} ({reason})", next.name);
                    attempt.record().flow().routing(|r| r.fallback = Some(to));
                    fallen_back = true;
                    current = Arc::clone(next);
                    continue;
                }
                attempt.record().fail(reason);
                return Ok(());
            }
        }
    }
}

impl<'p> Attempt<'p> {
    /// The flow, opened for the service's address if no endpoint was picked yet.
    fn record(&mut self) -> &Record<'p> {
        let (accepted, classified, proxy) = (self.accepted, &self.classified, self.proxy);
        self.record.get_or_insert_with(|| {
            Record::open(
                &proxy.state.flows,
                accepted,
                classified,
                None,
                accepted.pod.stats.of(accepted.direction),
            )
        })
    }

    async fn serve(&mut self, service: &Arc<ServiceInfo>, directory: &Arc<Directory>) -> Served {
        let balancer = &self.proxy.state.balancer;
        let state = balancer.service(&service.name);
        let Some(_active) = Active::admit(&state, service.policy.max_connections) else {
            state.counters.circuit_open.fetch_add(1, Relaxed);
            return Served::Failed { reason: "circuit_open".into(), fallback: true };
        };
        let mut service = Arc::clone(service);
        let mut directory = Arc::clone(directory);
        let mut tried: Vec<EndpointKey> = Vec::new();
        let mut last_failure: Option<String> = None;
        let mut held: Option<Instant> = None;
        // Until when a held connection keeps trying the endpoints that appeared.
        let mut held_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let ask = Ask {
                port: self.vip.port(),
                v4: self.vip.is_ipv4(),
                here: &directory.here,
                now,
                tried: &tried,
            };
            let picked = match pick::candidates(&service, &ask, |e| state.endpoint(e)) {
                Ok(tier) => {
                    let c = pick::choose(&tier, service.policy.algorithm, state.rr(), now);
                    Picked {
                        key: c.endpoint.key(),
                        addr: c.addr,
                        workload: Arc::clone(&c.endpoint.workload),
                        state: Arc::clone(&c.state),
                    }
                }
                Err(pick::NoEndpoint::None) if held.is_none() && service.policy.scale_from_zero.is_some() => {
                    let since = Instant::now();
                    match hold::hold(self.proxy, &state, &service).await {
                        Ok(newer) => {
                            held = Some(since);
                            let hold = service.policy.scale_from_zero.as_ref().map(|p| p.hold_timeout);
                            held_until = hold.map(|h| since + h);
                            self.deadline = self.deadline.max(held_until.unwrap_or(self.deadline));
                            directory = newer;
                            match directory.service_named(&service.name) {
                                Some(s) => service = Arc::clone(s),
                                None => {
                                    return Served::Failed {
                                        reason: "service_removed".into(),
                                        fallback: false,
                                    };
                                }
                            }
                            self.record()
                                .flow()
                                .routing(|r| r.held_ms = Some(since.elapsed().as_millis() as u64));
                            continue;
                        }
                        Err(reason) => {
                            let ms = since.elapsed().as_millis() as u64;
                            self.record().flow().routing(|r| r.held_ms = Some(ms));
                            return Served::Failed { reason: reason.into(), fallback: false };
                        }
                    }
                }
                Err(pick::NoEndpoint::NoPort) => {
                    return Served::Failed {
                        reason: pick::NoEndpoint::NoPort.reason().into(),
                        fallback: false,
                    };
                }
                Err(none) => {
                    // A service that just scaled up may refuse for a moment (its app, or its
                    // node's proxy, still starting): a held connection keeps trying until its
                    // hold times out, as Knative's activator probes a new revision.
                    if let Some(until) = held_until.filter(|until| *until > now) {
                        tokio::time::sleep(HELD_RETRY.min(until - now)).await;
                        tried.clear();
                        directory = self.proxy.directory();
                        if let Some(now) = directory.service_named(&service.name) {
                            service = Arc::clone(now);
                        }
                        continue;
                    }
                    state.counters.no_endpoint.fetch_add(1, Relaxed);
                    let reason = last_failure.unwrap_or_else(|| none.reason().into());
                    return Served::Failed { reason, fallback: true };
                }
            };
            if !tried.is_empty() {
                state.counters.retries.fetch_add(1, Relaxed);
            }
            let destination = self.for_endpoint(&picked);
            self.retarget(&destination, &picked);
            // A pod of this node: the proxy is its inbound side, and checks its policies.
            let subject = match authorize::authorize(&destination, &directory.policies) {
                Ok(subject) => subject,
                Err(reason) => return Served::Denied(reason),
            };
            let limited = match rate_limit::check(
                &self.proxy.state.rate_limits,
                subject.as_ref(),
                &destination,
                &directory,
            ) {
                Ok(open) => open,
                Err(reason) => return Served::Denied(reason),
            };
            let route = match route::route(self.accepted, &destination, self.proxy.route_settings()) {
                Ok(route) => route,
                Err(reason) => return Served::Failed { reason: reason.into(), fallback: false },
            };
            let outstanding = Outstanding::new(Arc::clone(&picked.state));
            let Some(budget) = self.deadline.checked_duration_since(now).filter(|b| !b.is_zero()) else {
                return Served::Failed { reason: "connect_timeout".into(), fallback: true };
            };
            let started = Instant::now();
            match upstream::open(&route, &destination, self.proxy, budget).await {
                Ok(upstream) => {
                    picked.state.connected(upstream.latency(started.elapsed()), Instant::now());
                    state.counters.connections.fetch_add(1, Relaxed);
                    if held.is_some() {
                        state.counters.held_forwarded.fetch_add(1, Relaxed);
                    }
                    let checked = Checked { directory: &directory, subject, _limited: limited };
                    return Served::Done(
                        self.relay(destination, route, upstream, checked, outstanding).await,
                    );
                }
                // The destination's node refused it by its rate limit: a deliberate answer,
                // not a failure another endpoint would fix.
                Err(failure) if failure.reason == "hbone_status_429" => {
                    return Served::Failed { reason: "rate_limited_by_destination".into(), fallback: false };
                }
                Err(failure) => {
                    let now = Instant::now();
                    let may_eject = state.may_eject(&service, now);
                    if picked.state.failed(service.policy.outlier_detection.as_ref(), may_eject, now) {
                        state.counters.ejections.fetch_add(1, Relaxed);
                        tracing::info!(service = %service.name, endpoint = %picked.addr, "endpoint ejected");
                    }
                    let entry = format!("{} {}", picked.addr, failure.reason);
                    let record = self.record();
                    if failure.mtls_answered {
                        record.mtls_answered();
                    }
                    record.flow().routing(|r| r.retries.push(entry));
                    tried.push(picked.key);
                    last_failure = Some(failure.reason);
                    if tried.len() >= MAX_ATTEMPTS && held_until.is_none() {
                        state.counters.no_endpoint.fetch_add(1, Relaxed);
                        return Served::Failed { reason: last_failure.unwrap_or_default(), fallback: true };
                    }
                }
            }
        }
    }

    /// The connection as if the app had dialled the endpoint itself.
    fn for_endpoint(&self, picked: &Picked) -> Classified {
        let mut destination = self.classified.clone();
        destination.original = Some(picked.addr);
        destination.destination = Party { addr: picked.addr, workload: Some(Arc::clone(&picked.workload)) };
        destination.local_destination = self.proxy.pod_by_ip(&picked.addr.ip());
        destination
    }

    /// The flow names the endpoint picked: opened with it the first time, moved after.
    fn retarget(&mut self, destination: &Classified, picked: &Picked) {
        match &self.record {
            Some(record) => record.flow().retarget(picked.addr, Some(&picked.workload)),
            None => {
                let (accepted, proxy) = (self.accepted, self.proxy);
                let mtls = destination
                    .destination
                    .workload
                    .as_ref()
                    .filter(|w| w.captured && destination.local_destination.is_none());
                let mtls_peer = mtls.filter(|_| proxy.state.hbone.is_some()).map(|w| Arc::clone(&w.identity));
                let record = Record::open(
                    &proxy.state.flows,
                    accepted,
                    destination,
                    mtls_peer,
                    accepted.pod.stats.of(accepted.direction),
                );
                record.flow().routing(|r| r.endpoint = Some(picked.addr));
                self.record = Some(record);
            }
        }
    }

    async fn relay(
        &mut self,
        destination: Classified,
        route: route::Route,
        upstream: upstream::Upstream,
        checked: Checked<'_>,
        outstanding: Outstanding,
    ) -> io::Result<()> {
        let proxy = self.proxy;
        if let Some(inbound) = destination.local_destination.as_ref().map(|pod| &pod.stats.inbound) {
            inbound.accepted.fetch_add(1, Relaxed);
        }
        let mut registration = checked.subject.map(|s| proxy.state.revocations.register(s));
        let registered = registration.is_some();
        if let Err(reason) =
            super::connection::recheck_if_changed(registered, checked.directory, &destination, proxy)
        {
            self.record().deny(reason);
            return Ok(());
        }
        let Some(client) = self.client.take() else { return Ok(()) };
        let accepted = self.accepted;
        let record = self.record();
        let endpoint = Arc::clone(outstanding.endpoint());
        let timer = FirstResponse::new(move |latency| endpoint.responded(latency, Instant::now()));
        upstream::relay(
            accepted,
            client,
            upstream,
            &route,
            record,
            registration.as_mut(),
            proxy,
            Some(&timer),
        )
        .await
    }
}

/// What the authorization was decided on: the directory it read, and what to register for
/// re-checks when policies change.
struct Checked<'d> {
    directory: &'d Arc<Directory>,
    subject: Option<super::revoke::Subject>,
    /// Held while the connection lives: it counts against its source's concurrency limit.
    _limited: Option<rate_limit::Open>,
}

/// The endpoint the balancer picked, detached from the directory it came from.
struct Picked {
    key: EndpointKey,
    addr: SocketAddr,
    workload: Arc<WorkloadRef>,
    state: Arc<super::balance::EndpointState>,
}
