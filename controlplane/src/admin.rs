//! The control plane's admin API: `/status` (input problems, served resources, connected
//! agents with their ACK/NACK state) and `/ready`.

use std::sync::{Arc, Mutex};

use axum::{Json, Router, extract::State, routing::get};
use serde::Serialize;

use crate::{server::Registry, store::InputError};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Served {
    pub generation: u64,
    pub addresses: usize,
    pub authorizations: usize,
    pub service_policies: usize,
    pub http_routes: usize,
    /// Input problems; the objects those files last held keep serving.
    pub input_errors: Vec<InputError>,
}

#[derive(Clone)]
pub struct AdminState {
    pub served: Arc<Mutex<Served>>,
    pub registry: Registry,
    /// The certificate authority's counts, when it is served.
    pub ca: Option<Arc<crate::ca::CaCounters>>,
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app =
        Router::new().route("/status", get(status)).route("/ready", get(|| async { "ok" })).with_state(state);
    tracing::info!(addr = %listener.local_addr()?, "control plane admin API listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn status(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let served = s.served.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut agents: Vec<_> = s.registry.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    agents.sort_by(|a, b| a.node.cmp(&b.node));
    let ca = s.ca.as_ref().map(|c| {
        use std::sync::atomic::Ordering::Relaxed;
        serde_json::json!({
            "issued": c.issued.load(Relaxed),
            "denied": c.denied.load(Relaxed),
            "unauthenticated": c.unauthenticated.load(Relaxed),
            "invalid": c.invalid.load(Relaxed),
        })
    });
    Json(serde_json::json!({ "served": served, "agents": agents, "ca": ca }))
}
