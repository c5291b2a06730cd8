//! Upgrades: a WebSocket handshake (`Connection: upgrade`) or a `CONNECT` goes to one
//! endpoint on an HTTP/1.1 connection of its own; when the endpoint agrees (101, or 2xx to
//! a CONNECT) the two connections become one tunnel and the bytes pass through untouched.
//! Not retried: the endpoint may have acted on it.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use http::{Method, Response, StatusCode, request::Parts};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::{
    Conn,
    body::{self, Body},
    decide::Plan,
    endpoint::{self, Failure},
    forward::Answered,
    headers,
    pool::Proto,
};
use crate::{directory::Directory, proxy::balance::Outstanding, services::ServiceInfo};

#[expect(clippy::too_many_arguments, reason = "one request's parts, each used once")]
pub(super) async fn forward(
    conn: &Arc<Conn>,
    directory: &Directory,
    service: &ServiceInfo,
    plan: &Plan,
    mut parts: Parts,
    body: Body,
    client_upgrade: OnUpgrade,
    answered: &mut Answered,
) -> Result<Response<Body>, Failure> {
    let state = conn.proxy.state.balancer.service(&service.name);
    let mut tried = Vec::new();
    let connected =
        endpoint::connect(conn, directory, service, &state, plan.port, Proto::H1, &mut tried, true).await?;
    answered.workload = Some(Arc::clone(&connected.workload));
    answered.mtls = connected.sender.tunnelled;
    let outstanding = Outstanding::new(Arc::clone(&connected.state));
    let connect = parts.method == Method::CONNECT;
    headers::for_upstream(&mut parts, Proto::H1, true);
    let mut sender = connected.sender;
    let mut response = match sender.send(http::Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(failed) => {
            tracing::debug!(error = %failed.error, "upgrade request to an endpoint failed");
            return Err(Failure::RESET);
        }
    };
    let agreed = if connect {
        response.status().is_success()
    } else {
        response.status() == StatusCode::SWITCHING_PROTOCOLS
    };
    if !agreed {
        return Ok(response.map(body::boxed));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let flow = Arc::clone(&conn.flow);
    // The client connection's flow stays open until the tunnel ends.
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    *conn.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(ended);
    tokio::spawn(async move {
        let _done = done;
        let _outstanding = outstanding;
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                flow.sent.fetch_add(up, Relaxed);
                flow.received.fetch_add(down, Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, body::empty()))
}
