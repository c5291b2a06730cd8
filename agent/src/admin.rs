//! The admin API on 127.0.0.1:15000 (node namespace): `/status`, `/config_dump`, `/ready`.
//! It runs on the control runtime, never on the data-plane threads.

pub mod client;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Instant,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::json;

use crate::{
    config::Config,
    datapath::Datapath,
    enroll::SourceStatus,
    proxy::ProxyTotals,
    reconcile::View,
    status::{CounterReport, PodReport, StatusReport},
};

/// Where the node's pods come from.
#[derive(Clone)]
pub enum Source {
    File(Arc<Mutex<SourceStatus>>),
    ControlPlane(Arc<crate::xds::Shared>),
    None,
}

#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<Config>,
    pub started: Instant,
    pub datapath: Arc<Mutex<Datapath>>,
    pub view: Arc<Mutex<View>>,
    pub source: Source,
    pub spec: tokio::sync::watch::Receiver<Arc<crate::spec::NodeSpec>>,
    /// Set once the first reconcile has run.
    pub ready: Arc<AtomicBool>,
}

pub async fn serve(addr: SocketAddr, state: AdminState) -> std::io::Result<()> {
    let app = Router::new()
        .route("/status", get(status))
        .route("/config_dump", get(config_dump))
        .route("/ready", get(ready))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin API listening");
    axum::serve(listener, app).await
}

async fn status(State(s): State<AdminState>) -> Json<StatusReport> {
    Json(report(&s))
}

async fn config_dump(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let spec = Arc::clone(&s.spec.borrow());
    let xds = match &s.source {
        Source::ControlPlane(shared) => shared.state.lock().unwrap_or_else(|p| p.into_inner()).dump(),
        _ => serde_json::Value::Null,
    };
    Json(json!({ "config": &*s.config, "node_spec": &*spec, "xds": xds }))
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
    let mut totals = ProxyTotals::default();
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
            Source::File(status) => Some(status.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            _ => None,
        },
        sync: match &s.source {
            Source::ControlPlane(shared) => {
                Some(shared.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
            }
            _ => None,
        },
        pods,
        pending: view.pending.clone(),
        programs,
        counters: counters
            .into_iter()
            .map(|(c, count)| CounterReport { program: c.program().into(), reason: c.reason().into(), count })
            .collect(),
        proxy: totals,
        memory: crate::memory::now(),
    }
}
