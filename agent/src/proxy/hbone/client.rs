//! The HBONE client: an app connection to a captured workload on another node becomes a
//! CONNECT stream to `<pod IP>:15008`, `:authority` = the original `ip:port`, on a pooled
//! mutual-TLS HTTP/2 connection opened from the source pod's namespace (so it leaves from
//! the pod's address, as ztunnel's do). Bytes flow only after the server's 200.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use rustls::pki_types::ServerName;

use super::{
    CONNECTION_WINDOW, HANDSHAKE_TIMEOUT, Hbone, MAX_FRAME, STREAM_WINDOW,
    pool::{PoolKey, Pooled, StreamClaim},
    stream::h2_error,
};
use crate::{
    identity::{Unavailable, tls},
    proxy::{
        connect,
        route::{Route, Tunnel},
    },
};

const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// An open CONNECT stream and its claim on the pooled connection.
pub struct Opened {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub claim: StreamClaim,
    /// How long the CONNECT took to be answered: the endpoint's connect latency as seen
    /// through its node (the pooled connection's handshake, a one-off, is not in it).
    pub exchange: Duration,
}

/// Why no stream was opened: the flow's reason.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{}", .0.reason())]
    Certificate(Unavailable),
    #[error("{0}")]
    Connect(String),
    #[error("tls_handshake: {0}")]
    Handshake(String),
    #[error("hbone_http2: {0}")]
    Http2(String),
    #[error("hbone_status_{0}")]
    Status(u16),
    #[error("hbone_timeout")]
    Timeout,
}

impl OpenError {
    /// A short, stable label (the flow's reason, a metrics label).
    pub fn reason(&self) -> String {
        match self {
            OpenError::Certificate(why) => why.reason().into(),
            OpenError::Connect(reason) => reason.clone(),
            OpenError::Handshake(_) => "tls_handshake_failed".into(),
            OpenError::Http2(_) => "hbone_http2_error".into(),
            OpenError::Status(code) => format!("hbone_status_{code}"),
            OpenError::Timeout => "hbone_timeout".into(),
        }
    }
}

/// Opens a CONNECT stream for `authority` (the original destination) through the tunnel.
/// `forwarded_for` is the app's address, sent as `forwarded: for=...`.
pub async fn open(
    hbone: &Hbone,
    route: &Route,
    tunnel: &Tunnel,
    authority: SocketAddr,
    forwarded_for: SocketAddr,
    timeout: Duration,
) -> Result<Opened, OpenError> {
    let key = PoolKey {
        source: Arc::clone(&tunnel.source_identity),
        destination: Arc::clone(&tunnel.destination_identity),
        netns: route.from_pod.netns.cookie(),
        peer: tunnel.peer,
    };
    let claim = hbone.pool.claim(&key, async || dial(hbone, route, tunnel, timeout).await).await?;
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority.to_string())
        .header("forwarded", format!("for=\"{forwarded_for}\""))
        .body(())
        .map_err(|e| OpenError::Http2(e.to_string()))?;
    let exchange = async {
        let mut sender =
            claim.conn.sender.clone().ready().await.map_err(|e| OpenError::Http2(e.to_string()))?;
        let (response, send) =
            sender.send_request(request, false).map_err(|e| OpenError::Http2(e.to_string()))?;
        let response = response.await.map_err(|e| OpenError::Http2(h2_error(e).to_string()))?;
        if response.status() != http::StatusCode::OK {
            return Err(OpenError::Status(response.status().as_u16()));
        }
        Ok((send, response.into_body()))
    };
    let started = std::time::Instant::now();
    let (send, recv) = tokio::time::timeout(timeout, exchange).await.map_err(|_| OpenError::Timeout)??;
    Ok(Opened { send, recv, claim, exchange: started.elapsed() })
}

/// A new pooled connection: TCP from the source pod, TLS as the source identity, HTTP/2.
async fn dial(
    hbone: &Hbone,
    route: &Route,
    tunnel: &Tunnel,
    timeout: Duration,
) -> Result<Arc<Pooled>, OpenError> {
    let slot =
        hbone.identities.slot(&tunnel.source_identity).ok_or(OpenError::Certificate(Unavailable::NotHeld))?;
    let cert = slot.get(timeout).await.map_err(|why| {
        hbone.identities.counters.refused(why);
        OpenError::Certificate(why)
    })?;
    let to_peer = Route { endpoint: tunnel.peer, ..route.clone() };
    let tcp = connect::connect(&to_peer, timeout)
        .await
        .map_err(|e| OpenError::Connect(connect::failure_reason(&e)))?;
    let config = tls::client_config(
        Arc::clone(&cert.certified),
        vec![Arc::clone(&tunnel.destination_identity)],
        &hbone.identities.roots,
    )
    .map_err(|e| OpenError::Handshake(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = connector.connect(ServerName::IpAddress(tunnel.peer.ip().into()), tcp);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT.min(timeout), handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            hbone.counters.handshake_failed("client", tls::handshake_reason(&e));
            return Err(OpenError::Handshake(e.to_string()));
        }
        Err(_) => {
            hbone.counters.handshake_failed("client", "timeout");
            return Err(OpenError::Timeout);
        }
    };
    hbone.count_handshake("client");
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(16 << 10)
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| OpenError::Http2(e.to_string()))?;
    let closed = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&closed);
    let peer = tunnel.peer;
    let mut connection = connection;
    let pings = connection.ping_pong();
    tokio::spawn(async move {
        tokio::select! {
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "HBONE connection ended");
                }
            }
            () = keepalive(pings) => {
                // Dropping the connection closes it; its streams end with an error.
                tracing::info!(%peer, "HBONE peer stopped answering PINGs; connection dropped");
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    Ok(Pooled::new(sender, closed, cert.not_after))
}

/// ztunnel's keepalive: a PING every 10 s; a peer that has not answered within 20 s is gone
/// (a node that vanished without a FIN), so its pooled connection must not take new streams.
/// Resolves only then.
async fn keepalive(pings: Option<h2::PingPong>) {
    let Some(mut pings) = pings else { return std::future::pending().await };
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match tokio::time::timeout(PING_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection ended (its own task reports that) or the peer is silent.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}
