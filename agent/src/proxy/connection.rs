//! One connection through the stages, in order:
//!
//! accept (`accept.rs`, admission) → classify → authorize → route → connect → relay, with
//! record keeping the flow and the counters current throughout. Each stage is a plain
//! function in its own module; this driver only sequences them and turns a stage's refusal
//! into a reset.

use std::{
    io,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use tokio::net::TcpStream;
use tracing::Instrument as _;

use super::{
    Proxy, admission, authorize, classify, context::Accepted, http, rate_limit, record::Record, route,
    to_service, upstream,
};
use crate::report::flows::Direction;

pub(super) async fn handle(accepted: Accepted, client: TcpStream, proxy: Proxy) {
    let span = tracing::debug_span!("conn", pod = %accepted.pod.name, direction = ?accepted.direction, peer = %accepted.peer);
    async move {
        if let Err(why) = admit(&accepted, &proxy) {
            tracing::debug!(reason = why.reason(), "connection refused");
            return;
        }
        let stats = accepted.pod.stats.of(accepted.direction);
        let _active = stats.open();
        let _node_active = NodeActive::new(&proxy);
        if let Err(e) = run(&accepted, client, &proxy).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
    .instrument(span)
    .await
}

async fn run(accepted: &Accepted, client: TcpStream, proxy: &Proxy) -> io::Result<()> {
    let state = &proxy.state;
    let original = match accepted.direction {
        Direction::Outbound => {
            state.original_destinations.take(accepted.pod.netns.cookie(), accepted.peer)?
        }
        Direction::Inbound => None,
    };
    let directory = proxy.directory();
    let classified = classify::classify(accepted, original, &directory, |ip| proxy.pod_by_ip(ip));
    tracing::debug!(destination = ?classified.original, protocol = ?classified.protocol, "classified");
    // A service's address: the service stage picks an endpoint, and retries another.
    if let Some(service) = to_service::service_of(accepted, &classified, &directory) {
        // A port declared HTTP: each request is routed and balanced on its own.
        let port = classified.original.map_or(0, |o| o.port());
        if let Some(protocol) = http::protocol_of(&service, port) {
            drop(directory);
            return http::serve(accepted, client, classified, service, protocol, proxy).await;
        }
        return to_service::run(accepted, client, classified, service, directory, proxy).await;
    }
    // Routed up front (a pure decision) so the flow knows from its start whether it is
    // carried in mutual TLS; a connection with no route is refused after authorization.
    let routed = route::route(accepted, &classified, proxy.route_settings());
    let mtls_peer = routed.as_ref().ok().and_then(upstream::tunnel_peer);
    let record = Record::open(
        &state.flows,
        accepted,
        &classified,
        mtls_peer,
        accepted.pod.stats.of(accepted.direction),
    );

    // A pod of this node: the proxy is its inbound side too, and counts it there.
    let local_inbound = classified.local_destination.as_ref().map(|pod| &pod.stats.inbound);
    if let Some(inbound) = local_inbound {
        inbound.accepted.fetch_add(1, Relaxed);
    }
    let subject = match authorize::authorize(&classified, &directory.policies) {
        Ok(subject) => subject,
        Err(reason) => {
            if let Some(inbound) = local_inbound {
                inbound.failed.fetch_add(1, Relaxed);
            }
            // A reset, as Istio's proxies answer a denial (the accepted socket has linger 0).
            record.deny(reason);
            return Ok(());
        }
    };
    let _limited = match rate_limit::check(&state.rate_limits, subject.as_ref(), &classified, &directory) {
        Ok(open) => open,
        Err(reason) => {
            record.deny(reason);
            return Ok(());
        }
    };
    let mut registration = subject.map(|s| state.revocations.register(s));
    if let Err(reason) = recheck_if_changed(registration.is_some(), &directory, &classified, proxy) {
        record.deny(reason);
        return Ok(());
    }
    drop(directory);

    let route = match routed {
        Ok(route) => route,
        Err(reason) => {
            record.fail(reason);
            return Err(io::Error::new(io::ErrorKind::NotFound, reason));
        }
    };
    let upstream = match upstream::open(&route, &classified, proxy, state.settings.connect_timeout).await {
        Ok(upstream) => upstream,
        Err(failure) => {
            // The app's connect already succeeded (to us); a reset is the closest thing to
            // the refusal or timeout it would have seen directly.
            upstream::failed(&record, &failure);
            return Err(failure.error);
        }
    };
    upstream::relay(accepted, client, upstream, &route, &record, registration.as_mut(), proxy, None).await
}

/// Policies published between a connection's check and its registration would not re-check
/// it (the re-check only sees registered connections): check again when they changed.
pub(super) fn recheck_if_changed(
    registered: bool,
    checked: &Arc<crate::directory::Directory>,
    classified: &super::context::Classified,
    proxy: &Proxy,
) -> Result<(), String> {
    let now = proxy.directory();
    if !registered || Arc::ptr_eq(checked, &now) {
        return Ok(());
    }
    authorize::authorize(classified, &now.policies).map(|_| ())
}

/// Resolves when a policy change denies the connection; never for one no policy of this
/// proxy's checks.
pub(super) async fn revoked(registration: Option<&mut super::revoke::Registration<'_>>) -> String {
    match registration {
        Some(r) => r.revoked().await,
        None => std::future::pending().await,
    }
}

/// Loops and caps (see `admission.rs`), the first thing a connection's task does. A refused
/// connection is reset when it drops.
fn admit(accepted: &Accepted, proxy: &Proxy) -> Result<(), admission::Refusal> {
    let admission = &proxy.state.admission;
    if accepted.direction == Direction::Inbound {
        admission.admit_inbound(accepted.local, accepted.peer, &accepted.pod.ips)?;
    }
    let stats = &accepted.pod.stats;
    let pod_active = stats.outbound.active.load(std::sync::atomic::Ordering::Relaxed)
        + stats.inbound.active.load(std::sync::atomic::Ordering::Relaxed);
    admission.admit(pod_active, proxy.active_connections())
}

/// Counts a connection in the node-wide total until dropped.
pub(super) struct NodeActive<'a>(&'a Proxy);

impl<'a> NodeActive<'a> {
    pub(super) fn new(proxy: &'a Proxy) -> Self {
        proxy.state.active.fetch_add(1, Relaxed);
        Self(proxy)
    }
}

impl Drop for NodeActive<'_> {
    fn drop(&mut self) {
        self.0.state.active.fetch_sub(1, Relaxed);
    }
}
