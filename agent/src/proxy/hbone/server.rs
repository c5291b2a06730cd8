//! The HBONE server: the listener on 15008 inside each enrolled pod (sk_lookup steers the
//! pod's port 15008 to it). Each connection: mutual TLS with the pod identity's certificate,
//! a client certificate chained to the mesh root carrying a SPIFFE identity of the same trust
//! domain, then HTTP/2; each CONNECT stream goes through the inbound stages with that
//! identity as its authenticated source: authorize, connect to the app, answer 200, relay.
//! Answers as ztunnel does: 400 for a request that is not a CONNECT to one of the pod's
//! addresses, 503 for the proxy's own ports or an app that refuses, 401 for a denial.

use std::{
    net::SocketAddr,
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use bytes::Bytes;
use h2::server::SendResponse;
use http::StatusCode;
use tokio::net::TcpStream;
use tracing::Instrument as _;

use super::{CONNECTION_WINDOW, HANDSHAKE_TIMEOUT, MAX_FRAME, STREAM_WINDOW, stream};
use crate::{
    identity::{san, tls},
    proxy::{
        PodRuntime, Proxy, authorize, classify, connect,
        connection::{NodeActive, recheck_if_changed, revoked},
        context::{Accepted, Authenticated},
        rate_limit,
        record::Record,
        relay::{Relayed, forward},
        route,
    },
    report::flows::Direction,
};

/// One TCP connection accepted by a pod's HBONE listener.
pub async fn handle(tcp: TcpStream, peer: SocketAddr, local: SocketAddr, pod: Arc<PodRuntime>, proxy: Proxy) {
    let span = tracing::debug_span!("hbone", pod = %pod.name, %peer);
    async move {
        if let Err(reason) = serve(tcp, peer, local, &pod, &proxy).await {
            tracing::debug!(%reason, "HBONE connection refused");
        }
    }
    .instrument(span)
    .await
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    pod: &Arc<PodRuntime>,
    proxy: &Proxy,
) -> Result<(), String> {
    let Some(hbone) = proxy.state.hbone.as_ref() else { return Err("no HBONE on this node".into()) };
    let fail = |reason: &str| {
        hbone.counters.handshake_failed("server", reason);
        reason.to_owned()
    };
    // The pod's own identity: the certificate it answers with.
    let own = proxy.directory().workload(&local.ip()).map(|w| Arc::clone(&w.identity));
    let Some(own) = own else { return Err(fail("no_identity")) };
    let slot = hbone.identities.slot(&own).ok_or_else(|| fail("no_identity"))?;
    if slot.usable().is_none() {
        return Err(fail("no_certificate"));
    }
    let config = hbone.server_config(&slot).map_err(|e| fail(&format!("config: {e}")))?;
    // A TLS connection counts against the caps like a connection (its streams count too).
    let pod_load = pod_active(pod) + pod.tunnels.load(Relaxed);
    let node_load = proxy.active_connections() + hbone.counters.open_tunnels.load(Relaxed);
    if let Err(refusal) = proxy.state.admission.admit(pod_load, node_load) {
        return Err(refusal.reason().to_owned());
    }
    let _open = OpenTunnel::new(pod, &hbone.counters.open_tunnels);
    // Small frames (a request, a WINDOW_UPDATE) must not wait for the peer's ACK.
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(fail(tls::handshake_reason(&e))),
        Err(_) => return Err(fail("timeout")),
    };
    // The verifier has checked it is a workload identity of this trust domain.
    let peer_identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(san::peer_identity)
        .ok_or_else(|| fail("no_spiffe_identity"))?;
    hbone.count_handshake("server");
    let peer_identity: Arc<str> = peer_identity.into();
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(200)
        .max_header_list_size(64 << 10)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| format!("http2: {e}"))?;
    while let Some(request) = connection.accept().await {
        let (request, respond) = request.map_err(|e| format!("http2: {e}"))?;
        hbone.counters.inbound_streams.fetch_add(1, Relaxed);
        let (pod, proxy, identity) = (Arc::clone(pod), proxy.clone(), Arc::clone(&peer_identity));
        proxy.state.runtime.clone().spawn(async move {
            stream_task(request, respond, peer, local, pod, &proxy, identity).await;
        });
    }
    Ok(())
}

/// One CONNECT: checked, then through the inbound stages with the peer's identity.
async fn stream_task(
    request: http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    local: SocketAddr,
    pod: Arc<PodRuntime>,
    proxy: &Proxy,
    identity: Arc<str>,
) {
    let reply = |respond: &mut SendResponse<Bytes>, status: StatusCode| {
        if let Ok(response) = http::Response::builder().status(status).body(()) {
            let _ = respond.send_response(response, true);
        }
    };
    let target = match target(&request, local, proxy.settings()) {
        Ok(target) => target,
        Err(status) => return reply(&mut respond, status),
    };
    let accepted = Accepted { direction: Direction::Inbound, pod: Arc::clone(&pod), peer, local: target };
    if proxy.state.admission.admit(pod_active(&pod), proxy.active_connections()).is_err() {
        return reply(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
    }
    let stats = &pod.stats.inbound;
    let _active = stats.open();
    let _node_active = NodeActive::new(proxy);
    let directory = proxy.directory();
    let mut classified = classify::classify(&accepted, None, &directory, |_| None);
    classified.authenticated = Authenticated::Mtls(Arc::clone(&identity));
    let record = Record::open(&proxy.state.flows, &accepted, &classified, Some(Arc::clone(&identity)), stats);
    let subject = match authorize::authorize(&classified, &directory.policies) {
        Ok(subject) => subject,
        Err(reason) => {
            record.deny(reason);
            return reply(&mut respond, StatusCode::UNAUTHORIZED);
        }
    };
    let _limited =
        match rate_limit::check(&proxy.state.rate_limits, subject.as_ref(), &classified, &directory) {
            Ok(open) => open,
            Err(reason) => {
                record.deny(reason);
                return reply(&mut respond, StatusCode::TOO_MANY_REQUESTS);
            }
        };
    let mut registration = subject.map(|s| proxy.state.revocations.register(s));
    if let Err(reason) = recheck_if_changed(registration.is_some(), &directory, &classified, proxy) {
        record.deny(reason);
        return reply(&mut respond, StatusCode::UNAUTHORIZED);
    }
    drop(directory);
    let route = match route::route(&accepted, &classified, proxy.route_settings()) {
        // The app sees the client's address, as behind ztunnel, where the pod is set up for it.
        Ok(route) if pod.transparent.load(Relaxed) => {
            route::Route { source: Some(peer.ip()), transparent: true, ..route }
        }
        Ok(route) => route,
        Err(reason) => {
            record.fail(reason);
            return reply(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let timeout = proxy.state.settings.connect_timeout;
    let connected = if route.transparent {
        connect::connect_transparent(&route, timeout).await
    } else {
        connect::connect(&route, timeout).await
    };
    let mut upstream = match connected {
        Ok(upstream) => upstream,
        Err(e) => {
            record.fail(connect::failure_reason(&e));
            return reply(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    forward::reset(&upstream);
    let send = match http::Response::builder().status(StatusCode::OK).body(()) {
        Ok(response) => match respond.send_response(response, false) {
            Ok(send) => send,
            Err(_) => return record.fail("hbone_stream_reset"),
        },
        Err(_) => return,
    };
    record.allow_tunnelled();
    let counters = record.counters();
    let relaying =
        stream::relay(&mut upstream, send, request.into_body(), counters.received, counters.sent, None);
    let result = tokio::select! {
        result = relaying => result,
        reason = revoked(registration.as_mut()) => {
            // Dropping the stream resets it (CANCEL); the app's side closes with a reset.
            record.deny(reason);
            record.finish(Relayed::Copied);
            return;
        }
    };
    if result.is_ok() {
        forward::graceful(&upstream);
    } else if let Err(e) = &result {
        tracing::debug!(error = %e, "HBONE stream ended with an error");
    }
    record.finish(Relayed::Copied);
}

/// Counts an HBONE connection as open, for the pod and the node, until dropped.
struct OpenTunnel<'a>(&'a AtomicU64, &'a AtomicU64);

impl<'a> OpenTunnel<'a> {
    fn new(pod: &'a PodRuntime, node: &'a AtomicU64) -> Self {
        pod.tunnels.fetch_add(1, Relaxed);
        node.fetch_add(1, Relaxed);
        Self(&pod.tunnels, node)
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
        self.1.fetch_sub(1, Relaxed);
    }
}

fn pod_active(pod: &PodRuntime) -> u64 {
    pod.stats.outbound.active.load(Relaxed) + pod.stats.inbound.active.load(Relaxed)
}

/// The CONNECT's target: `ip:port` naming the address this connection came in on, and not
/// one of the proxy's own ports.
fn target(
    request: &http::Request<h2::RecvStream>,
    local: SocketAddr,
    settings: &crate::proxy::ProxySettings,
) -> Result<SocketAddr, StatusCode> {
    if request.method() != http::Method::CONNECT {
        return Err(StatusCode::BAD_REQUEST);
    }
    let target: SocketAddr =
        request.uri().authority().and_then(|a| a.as_str().parse().ok()).ok_or(StatusCode::BAD_REQUEST)?;
    if target.ip() != local.ip() {
        return Err(StatusCode::BAD_REQUEST);
    }
    if [settings.outbound_port, settings.inbound_port, settings.hbone_port].contains(&target.port()) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(target)
}
