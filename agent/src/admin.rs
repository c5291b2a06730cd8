//! The admin API on 127.0.0.1:15000 (node namespace): `/status`, `/flows`, `/config_dump`,
//! `/logging`, `/ready`; Prometheus `/metrics` on :15020; readiness on :15021. All run on the
//! control runtime, never on the data-plane threads.

pub mod flows_query;
pub mod http;
mod prometheus;

pub use prometheus::OccupancyCache;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Instant,
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{
    config::Config,
    datapath::Datapath,
    reconcile::View,
    report::status::{CounterReport, PodReport, ProxyTotals, SourceStatus, StatusReport},
};

/// Where the node's pods come from.
#[derive(Clone)]
pub enum SpecSource {
    File(Arc<Mutex<SourceStatus>>),
    ControlPlane(Arc<crate::xds::XdsHandle>),
    None,
}

#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<Config>,
    pub started: Instant,
    pub datapath: Arc<Mutex<Datapath>>,
    pub view: Arc<Mutex<View>>,
    pub source: SpecSource,
    pub spec: tokio::sync::watch::Receiver<Arc<crate::spec::NodeSpec>>,
    /// Set once the first reconcile has run.
    pub ready: Arc<AtomicBool>,
    pub proxy: crate::proxy::Proxy,
    pub occupancy: Arc<prometheus::OccupancyCache>,
}

/// Binds all three listeners up front, so a port already in use stops the agent at start
/// with a clear error instead of a missing endpoint later.
pub async fn bind(config: &Config) -> std::io::Result<[(SocketAddr, tokio::net::TcpListener); 3]> {
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map(|l| (addr, l))
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
    };
    Ok([bind(config.admin_addr).await?, bind(config.metrics_addr).await?, bind(config.readiness_addr).await?])
}

pub async fn serve(
    [admin, metrics, readiness]: [(SocketAddr, tokio::net::TcpListener); 3],
    state: AdminState,
) -> std::io::Result<()> {
    let admin_app = Router::new()
        .route("/status", get(status))
        .route("/flows", get(flows))
        .route("/config_dump", get(config_dump))
        .route("/logging", get(logging).post(set_logging))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(state.clone());
    let metrics_app = Router::new().route("/metrics", get(metrics_text)).with_state(state.clone());
    let readiness_app =
        Router::new().route("/healthz/ready", get(ready)).route("/ready", get(ready)).with_state(state);
    tracing::info!(admin = %admin.0, metrics = %metrics.0, readiness = %readiness.0, "admin, metrics and readiness listening");
    let refused = &http::REFUSED;
    tokio::try_join!(
        http::serve(admin.1, admin_app, http::ADMIN, &refused.admin),
        http::serve(metrics.1, metrics_app, http::NETWORK, &refused.metrics),
        http::serve(readiness.1, readiness_app, http::NETWORK, &refused.readiness),
    )?;
    Ok(())
}

async fn flows(
    State(s): State<AdminState>,
    query: Result<Query<flows_query::FlowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query.map_err(|e| e.body_text()) else {
        return (
            StatusCode::BAD_REQUEST,
            "bad /flows query: use namespace, pod, verdict, state, top, by, limit\n",
        )
            .into_response();
    };
    // Reading the kernel maps is a syscall per flow: off the control runtime's thread.
    let proxy = s.proxy.clone();
    let records = tokio::task::spawn_blocking(move || proxy.flows().records()).await.unwrap_or_default();
    match query.apply(records) {
        Ok(flows) => Json(crate::report::flows::FlowsReport { node: s.config.node_name.clone(), flows })
            .into_response(),
        Err(message) => (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    }
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    let text = tokio::task::spawn_blocking(move || prometheus::render(&s)).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

#[derive(serde::Deserialize)]
struct LoggingQuery {
    level: Option<String>,
}

async fn logging() -> Json<serde_json::Value> {
    Json(json!({ "level": crate::logging::current() }))
}

/// `POST /logging?level=<filter>`: e.g. `debug`, or `info,nodemesh::proxy=debug`.
async fn set_logging(Query(q): Query<LoggingQuery>) -> Response {
    let Some(level) = q.level else {
        return (StatusCode::BAD_REQUEST, "level: missing (POST /logging?level=debug)\n").into_response();
    };
    match crate::logging::set(&level) {
        Ok(()) => Json(json!({ "level": crate::logging::current() })).into_response(),
        Err(message) => (StatusCode::BAD_REQUEST, format!("level: {message}\n")).into_response(),
    }
}

async fn status(State(s): State<AdminState>) -> Json<StatusReport> {
    Json(report(&s))
}

async fn config_dump(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let spec = Arc::clone(&s.spec.borrow());
    let xds = match &s.source {
        SpecSource::ControlPlane(shared) => shared.state.lock().unwrap_or_else(|p| p.into_inner()).dump(),
        _ => serde_json::Value::Null,
    };
    // Each identity's certificate: serial, validity and state; never a key.
    let certificates = s.proxy.hbone().map(|h| h.identities.report()).unwrap_or_default();
    // Each service's endpoints as the balancer sees them: load, latency, ejection.
    let services = s.proxy.services();
    Json(json!({
        "config": &*s.config,
        "node_spec": &*spec,
        "xds": xds,
        "certificates": certificates,
        "services": services,
    }))
}

async fn ready(State(s): State<AdminState>) -> StatusCode {
    if s.ready.load(std::sync::atomic::Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub fn report(s: &AdminState) -> StatusReport {
    let (programs, counters) = {
        let datapath = s.datapath.lock().unwrap_or_else(|p| p.into_inner());
        (datapath.programs(), datapath.counters())
    };
    let view = s.view.lock().unwrap_or_else(|p| p.into_inner());
    let mut totals = ProxyTotals { refused: s.proxy.refusals(), ..Default::default() };
    let pods = view
        .pods
        .iter()
        .map(|(pod, runtime)| {
            let stats = runtime.stats.snapshot();
            totals.active += stats.outbound.active + stats.inbound.active;
            totals.outbound_accepted += stats.outbound.accepted;
            totals.inbound_accepted += stats.inbound.accepted;
            totals.failed += stats.outbound.failed + stats.inbound.failed;
            totals.spliced += stats.outbound.spliced + stats.inbound.spliced;
            PodReport { pod: pod.clone(), stats }
        })
        .collect();
    StatusReport {
        node: s.config.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: s.started.elapsed().as_secs(),
        splice: s.config.splice,
        bpffs_dir: s.config.bpffs_dir.display().to_string(),
        enrollment: match &s.source {
            SpecSource::File(status) => Some(status.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            _ => None,
        },
        sync: match &s.source {
            SpecSource::ControlPlane(shared) => {
                Some(shared.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
            }
            _ => None,
        },
        pods,
        pending: view.pending.clone(),
        held: view.held.clone(),
        programs,
        counters: counters
            .into_iter()
            .map(|(c, count)| CounterReport { program: c.program().into(), reason: c.reason().into(), count })
            .collect(),
        proxy: totals,
        memory: crate::memory::now(),
        certificates: s.proxy.hbone().map(|h| h.identities.report()).unwrap_or_default(),
        services: s.proxy.services(),
    }
}
