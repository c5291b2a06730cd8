//! Asking an autoscaler for capacity, the way Knative's activator and KEDA's HTTP add-on
//! are asked: an HTTP POST to the service's configured URL with a JSON body naming the
//! service and the connections held for it, at most once per hold window per service. The
//! answer does not matter: capacity shows up as endpoints over xDS.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::services::ScaleFromZero;

/// How long one request may take, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Autoscaler {
    last_asked: Mutex<HashMap<Arc<str>, Instant>>,
    pub asked: AtomicU64,
    pub failed: AtomicU64,
}

impl Autoscaler {
    /// Asks for `service` on behalf of `node` unless it was asked for within `window`;
    /// returns at once (the request runs on its own task).
    pub fn ask(
        self: &Arc<Self>,
        service: &Arc<str>,
        node: &str,
        policy: &ScaleFromZero,
        held: u32,
        window: Duration,
    ) {
        {
            let mut last = self.last_asked.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if last.get(service).is_some_and(|at| now.duration_since(*at) < window) {
                return;
            }
            last.insert(Arc::clone(service), now);
        }
        let (namespace, hostname) = service.split_once('/').unwrap_or(("", service));
        let body = serde_json::json!({
            "service": hostname,
            "namespace": namespace,
            "name": hostname.split('.').next().unwrap_or(hostname),
            "held_connections": held,
            "node": node,
        })
        .to_string();
        let (url, me) = (policy.autoscaler_url.clone(), Arc::clone(self));
        tokio::spawn(async move {
            me.asked.fetch_add(1, Relaxed);
            match tokio::time::timeout(REQUEST_TIMEOUT, post(&url, body)).await {
                Ok(Ok(status)) if status.is_success() => {
                    tracing::info!(%url, %status, "asked the autoscaler for capacity")
                }
                Ok(Ok(status)) => {
                    me.failed.fetch_add(1, Relaxed);
                    tracing::warn!(%url, %status, "the autoscaler refused the scale-up request");
                }
                Ok(Err(e)) => {
                    me.failed.fetch_add(1, Relaxed);
                    tracing::warn!(%url, error = %e, "could not ask the autoscaler for capacity");
                }
                Err(_) => {
                    me.failed.fetch_add(1, Relaxed);
                    tracing::warn!(%url, "the autoscaler did not answer in time");
                }
            }
        });
    }
}

async fn post(url: &str, body: String) -> anyhow::Result<http::StatusCode> {
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().ok_or_else(|| anyhow::anyhow!("no host in {url}"))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))?;
    Ok(sender.send_request(request).await?.status())
}
