//! The HTTP stage: a connection to a service port declared HTTP (HTTP/1.1, HTTP/2, gRPC) is
//! served as HTTP instead of relayed as bytes. Each request is routed on its own (the
//! service's HTTPRoutes: match, filters, weighted backends), balanced over the backend's
//! endpoints (`balance`, as connections are), sent on a pooled connection to the endpoint
//! (in HBONE when it is on another node), retried within a budget, cut at its timeouts, and
//! counted in Istio's request metrics and in the connection's flow.
//!
//! - `decide`: the route's decision for a request, pure.
//! - `forward`: one request's attempts, from the pick to the response; `endpoint`: the
//!   pick and the connection for one attempt.
//! - `pool`: connections to endpoints; `headers`: the request's form for its next hop.
//! - `budget`: retries per service; `metrics`: Istio's request metrics; `body`: bodies.
//! - `upgrade`: WebSocket and CONNECT, passed through as a tunnel.

pub(crate) mod body;
mod budget;
mod decide;
mod endpoint;
mod forward;
pub(crate) mod headers;
pub mod metrics;
pub(crate) mod pool;
mod upgrade;

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpStream;

use super::{
    Proxy,
    balance::Active,
    context::{Accepted, Classified},
    record::Record,
    relay::Relayed,
};
use crate::{
    flows::LiveFlow,
    services::{ServiceInfo, http::AppProtocol},
};

/// The HTTP stage's state on this node, shared by every HTTP connection.
#[derive(Debug, Default)]
pub struct HttpState {
    budgets: Mutex<HashMap<Arc<str>, Arc<budget::RetryBudget>>>,
    pub metrics: metrics::RequestMetrics,
    pub counters: HttpCounters,
}

/// Retries, for `nodemesh_http_retries_total`.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Requests sent again after a retryable answer or failure.
    pub retried: AtomicU64,
    /// Retries the budget refused: the request's last answer went back to the client.
    pub budget_exhausted: AtomicU64,
}

impl HttpState {
    /// Forgets the retry budgets of services the directory no longer has (a request under way
    /// keeps its own).
    pub fn prune(&self, directory: &crate::directory::Directory) {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets.retain(|name, _| directory.service_named(name).is_some());
    }

    fn budget(&self, service: &Arc<str>) -> Arc<budget::RetryBudget> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(budgets.entry(Arc::clone(service)).or_default())
    }
}

/// The service port's protocol, when it is HTTP.
pub(super) fn protocol_of(service: &ServiceInfo, port: u16) -> Option<AppProtocol> {
    service.port(port).map(|p| p.protocol).filter(|p| p.is_http())
}

/// What every request of one client connection shares.
struct Conn {
    proxy: Proxy,
    accepted: Accepted,
    classified: Classified,
    /// The service address the app dialled.
    vip: SocketAddr,
    /// The front service's port protocol: what a backend port that does not say is spoken as.
    protocol: AppProtocol,
    pool: Arc<pool::Pool>,
    flow: Arc<LiveFlow>,
    /// The request series its requests last went to.
    series: metrics::SeriesCache,
    /// Ends when an upgraded connection's tunnel does (the sender drops).
    tunnel: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// Serves HTTP on `client` (HTTP/1.1 or HTTP/2, whichever it speaks) until it closes.
pub(super) async fn serve(
    accepted: &Accepted,
    client: TcpStream,
    classified: Classified,
    service: Arc<ServiceInfo>,
    protocol: AppProtocol,
    proxy: &Proxy,
) -> io::Result<()> {
    let Some(vip) = classified.original else { return Ok(()) };
    let stats = accepted.pod.stats.of(accepted.direction);
    let record = Record::open(&proxy.state.flows, accepted, &classified, None, stats);
    let state = proxy.state.balancer.service(&service.name);
    // The client's connection counts against the service's circuit breaker, as at L4.
    let Some(_active) = Active::admit(&state, service.policy.max_connections) else {
        state.counters.circuit_open.fetch_add(1, Relaxed);
        record.fail("circuit_open");
        return Ok(());
    };
    record.allow_proxied();
    client.set_nodelay(true)?;
    let conn = Arc::new(Conn {
        proxy: proxy.clone(),
        accepted: accepted.clone(),
        classified,
        vip,
        protocol,
        pool: Arc::default(),
        flow: record.shared_flow(),
        series: metrics::SeriesCache::default(),
        tunnel: Mutex::default(),
    });
    let shared = Arc::clone(&conn);
    let service = hyper::service::service_fn(move |request| {
        let conn = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(forward::handle(conn, request).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(1024);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(client), service).await;
    let tunnel = conn.tunnel.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(tunnel) = tunnel {
        let _ = tunnel.await;
    }
    record.finish(Relayed::Copied);
    if let Err(e) = &served {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
    served.map_err(|e| io::Error::other(e.to_string()))
}
