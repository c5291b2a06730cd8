//! The connect and relay stages for a routed connection, whatever carries it: plain TCP to
//! the endpoint, or a CONNECT stream on a pooled mutual-TLS connection to its node (HBONE).
//! Split in two so that a connection to a service can try another endpoint when a connect
//! fails, before any of the app's bytes were read.

use std::{io, sync::Arc, time::Duration};

use tokio::net::TcpStream;

use super::{
    Proxy, connect,
    context::{Accepted, Classified},
    hbone,
    record::Record,
    relay::{self, first_response::FirstResponse, forward},
    revoke::Registration,
    route::Route,
};

/// An open transport to the endpoint.
pub enum Upstream {
    Tcp(TcpStream),
    Tunnel(hbone::client::Opened),
}

/// Why the connect failed: the flow's reason, and whether the peer answered in mutual TLS
/// (a refusal from the destination's node).
#[derive(Debug)]
pub struct ConnectFailed {
    pub reason: String,
    pub mtls_answered: bool,
    pub error: io::Error,
}

impl Upstream {
    /// How long the endpoint took to accept: the TCP connect, or the CONNECT's answer.
    pub fn latency(&self, connect: Duration) -> Duration {
        match self {
            Upstream::Tcp(_) => connect,
            Upstream::Tunnel(opened) => opened.exchange,
        }
    }
}

/// Opens the transport `route` says, within `timeout`.
pub async fn open(
    route: &Route,
    classified: &Classified,
    proxy: &Proxy,
    timeout: Duration,
) -> Result<Upstream, ConnectFailed> {
    if let (Some(tunnel), Some(hbone)) = (&route.tunnel, &proxy.state.hbone) {
        let authority = route.endpoint;
        return match hbone::client::open(hbone, route, tunnel, authority, classified.source.addr, timeout)
            .await
        {
            Ok(opened) => Ok(Upstream::Tunnel(opened)),
            Err(e) => Err(ConnectFailed {
                reason: e.reason(),
                // Refused by the peer (a 401, a 503): it answered in mutual TLS.
                mtls_answered: matches!(e, hbone::client::OpenError::Status(_)),
                error: io::Error::other(e.to_string()),
            }),
        };
    }
    match connect::connect(route, timeout).await {
        Ok(stream) => {
            // A crash from here on resets the upstream too (see `forward::reset`).
            forward::reset(&stream);
            Ok(Upstream::Tcp(stream))
        }
        Err(e) => Err(ConnectFailed {
            reason: connect::failure_reason(&e).to_owned(),
            mtls_answered: false,
            error: e,
        }),
    }
}

/// Moves the bytes both ways until either side ends, or a policy change revokes the
/// connection (both sockets then close with a reset). `timer` times the endpoint's first
/// answer (while the proxy copies: a spliced connection's bytes are the kernel's).
#[expect(clippy::too_many_arguments, reason = "the stages' parts, each used once")]
pub async fn relay(
    accepted: &Accepted,
    mut client: TcpStream,
    upstream: Upstream,
    route: &Route,
    record: &Record<'_>,
    registration: Option<&mut Registration<'_>>,
    proxy: &Proxy,
    timer: Option<&FirstResponse>,
) -> io::Result<()> {
    let mut upstream = match upstream {
        Upstream::Tcp(stream) => stream,
        Upstream::Tunnel(opened) => return tunnelled(client, opened, record, timer).await,
    };
    record.allow(accepted, route, &client, &upstream);
    let state = &proxy.state;
    let relay_settings = state.settings.relay();
    let relaying = relay::relay(
        &mut client,
        &mut upstream,
        route.splice,
        &relay_settings,
        &state.splice_maps,
        relay::Counters { first_response: timer, ..record.counters() },
        |keys| record.spliced(keys),
    );
    let (relayed, result) = tokio::select! {
        done = relaying => done,
        reason = super::connection::revoked(registration) => {
            record.deny(reason);
            record.finish(relay::Relayed::Copied);
            return Ok(());
        }
    };
    if result.is_ok() {
        forward::graceful(&client);
        forward::graceful(&upstream);
    }
    record.finish(relayed);
    result
}

/// The bytes both ways through a CONNECT stream.
async fn tunnelled(
    mut client: TcpStream,
    opened: hbone::client::Opened,
    record: &Record<'_>,
    timer: Option<&FirstResponse>,
) -> io::Result<()> {
    record.allow_tunnelled();
    client.set_nodelay(true)?;
    let counters = record.counters();
    let result =
        hbone::stream::relay(&mut client, opened.send, opened.recv, counters.sent, counters.received, timer)
            .await;
    drop(opened.claim);
    if result.is_ok() {
        forward::graceful(&client);
    }
    record.finish(relay::Relayed::Copied);
    result
}

/// Reports a failed connect on the flow.
pub fn failed(record: &Record<'_>, failure: &ConnectFailed) {
    if failure.mtls_answered {
        record.mtls_answered();
    }
    record.fail(failure.reason.clone());
}

/// The identity the destination must prove, when the route is an HBONE tunnel: what the flow
/// names as its mutual-TLS peer.
pub fn tunnel_peer(route: &Route) -> Option<Arc<str>> {
    route.tunnel.as_ref().map(|t| Arc::clone(&t.destination_identity))
}
