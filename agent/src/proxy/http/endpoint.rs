//! One request's way to an endpoint of its backend service: the balancer's pick (as for a
//! connection), the destination's authorization when the endpoint is a pod of this node,
//! then a pooled connection, or a new one (with the destination's rate limit, and connect
//! retries on other endpoints: nothing of the request has left yet).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use super::{
    Conn,
    pool::{self, Proto, Sender},
};
use crate::{
    directory::Directory,
    proxy::{
        authorize,
        balance::{Ask, EndpointState, ServiceState, pick},
        context::{Classified, Party},
        rate_limit, route, upstream,
    },
    services::{EndpointKey, ServiceInfo},
    workload::WorkloadRef,
};

/// Connect attempts one request may make across endpoints (as a connection may).
const MAX_CONNECTS: usize = 8;

/// Why the proxy answers instead of an endpoint: the status, Envoy's response flag, and
/// the body it sends.
#[derive(Clone, Debug)]
pub struct Failure {
    pub status: u16,
    pub flags: &'static str,
    pub message: &'static str,
}

impl Failure {
    pub const NO_HEALTHY: Failure = Failure { status: 503, flags: "UH", message: "no healthy upstream" };
    pub const CONNECT: Failure = Failure {
        status: 503,
        flags: "UF",
        message: "upstream connect error or disconnect/reset before headers",
    };
    pub const RESET: Failure = Failure {
        status: 503,
        flags: "UC",
        message: "upstream connect error or disconnect/reset before headers",
    };
    pub const TIMEOUT: Failure = Failure { status: 504, flags: "UT", message: "upstream request timeout" };
    pub const DENIED: Failure = Failure { status: 403, flags: "-", message: "RBAC: access denied" };
    pub const RATE_LIMITED: Failure = Failure { status: 429, flags: "RL", message: "rate limited" };
    pub const NO_ROUTE: Failure = Failure { status: 404, flags: "NR", message: "no route" };
    pub const NO_BACKEND: Failure = Failure { status: 500, flags: "NC", message: "no backend for the route" };
}

/// An endpoint ready to take the request.
pub struct Connected {
    pub sender: Sender,
    pub addr: SocketAddr,
    pub key: EndpointKey,
    pub workload: Arc<WorkloadRef>,
    pub state: Arc<EndpointState>,
}

/// Picks an endpoint of `service` not in `tried` and gets a connection to it; `fresh` asks
/// for a connection of its own (an upgrade takes its connection over). Endpoints whose
/// connect failed are added to `tried`.
#[expect(clippy::too_many_arguments, reason = "one request's context, each part used once")]
pub async fn connect(
    conn: &Conn,
    directory: &Directory,
    service: &ServiceInfo,
    state: &ServiceState,
    port: u16,
    proto: Proto,
    tried: &mut Vec<EndpointKey>,
    fresh: bool,
) -> Result<Connected, Failure> {
    let mut connects = 0;
    loop {
        let now = Instant::now();
        let ask = Ask { port, v4: conn.vip.is_ipv4(), here: &directory.here, now, tried };
        let (addr, key, workload, endpoint_state) =
            match pick::candidates(service, &ask, |e| state.endpoint(e)) {
                Ok(tier) => {
                    let c = pick::choose(&tier, service.policy.algorithm, state.rr(), now);
                    (c.addr, c.endpoint.key(), Arc::clone(&c.endpoint.workload), Arc::clone(&c.state))
                }
                Err(pick::NoEndpoint::None | pick::NoEndpoint::NoPort) => {
                    state.counters.no_endpoint.fetch_add(1, Relaxed);
                    return Err(Failure::NO_HEALTHY);
                }
                Err(pick::NoEndpoint::NoneHealthy) => {
                    state.counters.no_endpoint.fetch_add(1, Relaxed);
                    return Err(if connects > 0 { Failure::CONNECT } else { Failure::NO_HEALTHY });
                }
            };
        let destination = for_endpoint(conn, service, addr, &workload);
        let subject = authorize::authorize(&destination, &directory.policies).map_err(|_| Failure::DENIED)?;
        if !fresh && let Some(sender) = conn.pool.take(addr, proto) {
            return Ok(Connected { sender, addr, key, workload, state: endpoint_state });
        }
        let route = route::route(&conn.accepted, &destination, conn.proxy.route_settings())
            .map_err(|_| Failure::CONNECT)?;
        let limited =
            rate_limit::check(&conn.proxy.state.rate_limits, subject.as_ref(), &destination, directory)
                .map_err(|_| Failure::RATE_LIMITED)?;
        let timeout = service.policy.connect_timeout.unwrap_or(conn.proxy.state.settings.connect_timeout);
        let started = Instant::now();
        let failure = match upstream::open(&route, &destination, &conn.proxy, timeout).await {
            Ok(opened) => {
                let latency = opened.latency(started.elapsed());
                match pool::handshake(opened, proto, limited).await {
                    Ok(sender) => {
                        endpoint_state.connected(latency, Instant::now());
                        state.counters.connections.fetch_add(1, Relaxed);
                        return Ok(Connected { sender, addr, key, workload, state: endpoint_state });
                    }
                    Err(e) => format!("http_handshake: {e}"),
                }
            }
            // The destination's node refused it by its rate limit: not another endpoint's to fix.
            Err(f) if f.reason == "hbone_status_429" => return Err(Failure::RATE_LIMITED),
            Err(f) => f.reason,
        };
        tracing::debug!(endpoint = %addr, reason = %failure, "connect to an endpoint failed");
        let now = Instant::now();
        let may_eject = state.may_eject(service, now);
        if endpoint_state.failed(service.policy.outlier_detection.as_ref(), may_eject, now) {
            state.counters.ejections.fetch_add(1, Relaxed);
        }
        state.counters.retries.fetch_add(1, Relaxed);
        tried.push(key);
        connects += 1;
        if connects >= MAX_CONNECTS {
            state.counters.no_endpoint.fetch_add(1, Relaxed);
            return Err(Failure::CONNECT);
        }
    }
}

/// The connection as if the app had dialled the endpoint of `service` itself.
fn for_endpoint(
    conn: &Conn,
    service: &ServiceInfo,
    addr: SocketAddr,
    workload: &Arc<WorkloadRef>,
) -> Classified {
    let mut destination = conn.classified.clone();
    destination.original = Some(addr);
    destination.destination = Party { addr, workload: Some(Arc::clone(workload)) };
    destination.local_destination = conn.proxy.pod_by_ip(&addr.ip());
    destination.service = Some(service.name.to_string());
    destination
}
