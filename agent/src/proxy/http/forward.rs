//! One request, from the route's decision to the response the client gets: the attempts
//! (a retry goes to another endpoint, within the route's attempts and the service's budget,
//! only with a body that could be kept), the timeouts (the route's for the whole request,
//! the backend's for each attempt; dropping an attempt cancels it upstream), the response
//! filters, and the metrics and flow counts taken when the response ends.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header, request::Parts};
use hyper::body::Incoming;

use super::{
    Conn,
    body::{self, Body},
    budget::RetryBudget,
    decide::{self, DEFAULT_BACKOFF, DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_CODES, Decision, Plan},
    endpoint::{self, Connected, Failure},
    headers,
    metrics::{RequestLabels, SeriesKey},
    pool::Proto,
    upgrade,
};
use crate::{
    flows::metrics::SeriesLabels,
    proxy::balance::{Outstanding, ServiceState, pick},
    report::flows::Direction,
    services::{ServiceInfo, http::AppProtocol},
    workload::WorkloadRef,
};

/// Request bodies up to this size are kept for a retry (a longer or unsized one is
/// streamed, and its request is not retried).
pub const REPLAY_LIMIT: u64 = 64 << 10;
/// Sends one request may make again because its connection closed before it left.
const MAX_UNSENT: u32 = 4;

/// What answered the request, for its metrics.
#[derive(Default)]
pub(super) struct Answered {
    service: Option<Arc<str>>,
    pub workload: Option<Arc<WorkloadRef>>,
    pub mtls: bool,
    retries: u32,
    flags: &'static str,
}

pub(super) async fn handle(conn: Arc<Conn>, mut request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let on_upgrade = {
        let (method, version, h) = (request.method(), request.version(), request.headers());
        headers::is_upgrade(method, version, h).then(|| hyper::upgrade::on(&mut request))
    };
    let (mut parts, incoming) = request.into_parts();
    let request_bytes = Arc::new(AtomicU64::new(0));
    let (counted, flow) = (Arc::clone(&request_bytes), Arc::clone(&conn.flow));
    let body = body::counted(incoming, move |n| {
        counted.fetch_add(n, Relaxed);
        flow.sent.fetch_add(n, Relaxed);
    });

    let directory = conn.proxy.directory();
    let mut answered = Answered { flags: "-", ..Answered::default() };
    let front = directory.service_at(&conn.vip.ip()).cloned();
    let decision = match &front {
        Some(front) => decide::decide(front, conn.vip.port(), &mut parts, pick::random() >> 11),
        None => Decision::NoBackend,
    };
    answered.service = front.as_ref().map(|f| Arc::clone(&f.name));
    let result = match decision {
        Decision::Redirect { status, location } => {
            let mut response = Response::new(body::empty());
            *response.status_mut() = status;
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Ok((response.map(|b| b), Vec::new(), None))
        }
        Decision::NoRoute => Err(Failure::NO_ROUTE),
        Decision::NoBackend => Err(Failure::NO_BACKEND),
        Decision::Forward(plan) => match directory.service_named(&plan.service) {
            None => Err(Failure::NO_BACKEND),
            Some(service) => {
                answered.service = Some(Arc::clone(&service.name));
                tracing::debug!(route = ?plan.route, backend = %service.name, "routed");
                let proto = upstream_proto(service, plan.port, conn.protocol);
                if let Some(on_upgrade) = on_upgrade {
                    let upgraded = upgrade::forward(
                        &conn,
                        &directory,
                        service,
                        &plan,
                        parts,
                        body,
                        on_upgrade,
                        &mut answered,
                    )
                    .await;
                    upgraded.map(|response| (response, Vec::new(), None))
                } else {
                    headers::for_upstream(&mut parts, proto, false);
                    let outcome =
                        attempts(&conn, &directory, service, &plan, proto, parts, body, &mut answered);
                    let outcome = match plan.request_timeout {
                        Some(limit) => {
                            tokio::time::timeout(limit, outcome).await.unwrap_or(Err(Failure::TIMEOUT))
                        }
                        None => outcome.await,
                    };
                    outcome.map(|(response, outstanding)| (response, plan.response_headers, outstanding))
                }
            }
        },
    };
    let (mut response, outstanding) = match result {
        Ok((mut response, modifiers, outstanding)) => {
            let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            headers::strip_hop_by_hop(response.headers_mut(), switching);
            for m in &modifiers {
                decide::modify(response.headers_mut(), m);
            }
            (response, outstanding)
        }
        Err(failure) => {
            if answered.flags == "-" {
                answered.flags = failure.flags;
            }
            (synthetic(&failure, grpc), None)
        }
    };
    let status = response.status().as_u16();
    tracing::debug!(status, flags = answered.flags, retries = answered.retries, "answered");
    conn.flow.http(|h| h.count(status, answered.retries));
    let metered_conn = Arc::clone(&conn);
    let (parts, inner) = response.into_parts();
    let grpc_in_headers = body::grpc_status(&parts.headers);
    let inner = body::metered(inner, grpc_in_headers, move |ended| {
        let _outstanding: Option<Outstanding> = outstanding;
        let conn = metered_conn;
        conn.flow.received.fetch_add(ended.bytes, Relaxed);
        let flags = if !ended.complete && answered.flags == "-" {
            // The response did not reach its end: the client left, or the endpoint did.
            "DC"
        } else {
            answered.flags
        };
        let key = SeriesKey {
            service: answered.service,
            workload: answered.workload,
            mtls: answered.mtls,
            grpc,
            status,
            grpc_status: ended.grpc_status,
            flags,
        };
        let measured = (started.elapsed().as_secs_f64() * 1000.0, request_bytes.load(Relaxed), ended.bytes);
        conn.series.observe(&conn.proxy.state.http.metrics, key, |key| labels(&conn, key), measured);
    });
    response = Response::from_parts(parts, inner);
    response
}

/// Tries endpoints until one answers with a response that is not retried, or the attempts,
/// the budget or the endpoints run out.
#[expect(clippy::too_many_arguments, reason = "one request's parts, each used once")]
async fn attempts(
    conn: &Conn,
    directory: &crate::directory::Directory,
    service: &ServiceInfo,
    plan: &Plan,
    proto: Proto,
    parts: Parts,
    body: Body,
    answered: &mut Answered,
) -> Result<(Response<Body>, Option<Outstanding>), Failure> {
    let state = conn.proxy.state.balancer.service(&service.name);
    let budget = conn.proxy.state.http.budget(&service.name);
    budget.deposit(Instant::now());
    let retry = plan.retry.as_ref();
    let max_retries = retry.map_or(0, |r| if r.attempts == 0 { DEFAULT_RETRY_ATTEMPTS } else { r.attempts });
    let codes: &[u16] = match retry {
        Some(r) if !r.codes.is_empty() => &r.codes,
        _ => &DEFAULT_RETRY_CODES,
    };
    // A body that can be sent again, when retries may need it.
    let (replay, mut once) = if max_retries > 0 {
        match body::buffer_within(body, REPLAY_LIMIT).await {
            Ok(Ok(bytes)) => (Some(bytes), None),
            Ok(Err(_)) => return Err(Failure::RESET),
            Err(body) => (None, Some(body)),
        }
    } else {
        (None, Some(body))
    };
    // The head is kept only when a retry may send the request again.
    let head = replay.as_ref().map(|_| Head::of(&parts));
    let mut parts = Some(parts);
    let mut tried = Vec::new();
    let mut pending: Option<Request<Body>> = None;
    // Sends that failed before the request left: free, but bounded (an endpoint that closes
    // every connection at once must not keep the request going round).
    let mut unsent_sends = 0;
    loop {
        let request = match (pending.take(), &replay, once.take()) {
            (Some(request), _, _) => request,
            (None, Some(bytes), _) => match &head {
                Some(head) => head.request(body::full(bytes.clone())),
                None => return Err(Failure::RESET),
            },
            (None, None, Some(body)) => match parts.take() {
                Some(mut parts) => {
                    // What the server side put there is not the next hop's.
                    parts.extensions = http::Extensions::new();
                    Request::from_parts(parts, body)
                }
                None => return Err(Failure::RESET),
            },
            // A streamed body already went to an endpoint that failed.
            (None, None, None) => return Err(Failure::RESET),
        };
        let connected =
            endpoint::connect(conn, directory, service, &state, plan.port, proto, &mut tried, false).await;
        let Connected { mut sender, addr, key, workload, state: endpoint_state } = match connected {
            Ok(c) => c,
            Err(failure) => {
                if answered.retries > 0 && failure.flags == "UH" {
                    answered.flags = "URX";
                }
                return Err(failure);
            }
        };
        answered.workload = Some(Arc::clone(&workload));
        answered.mtls = sender.tunnelled;
        let outstanding = Outstanding::new(Arc::clone(&endpoint_state));
        let sent_at = Instant::now();
        let send = sender.send(request);
        let sent = match plan.backend_request_timeout {
            Some(limit) => tokio::time::timeout(limit, send).await.map_err(|_| ()),
            None => Ok(send.await),
        };
        let answer: Result<Response<Incoming>, Failure> = match sent {
            Ok(Ok(response)) => {
                endpoint_state.responded(sent_at.elapsed(), Instant::now());
                conn.pool.give_back(addr, sender);
                Ok(response)
            }
            Ok(Err(failed)) => {
                conn.pool.discard(addr, &sender);
                if let Some(unsent) = failed.unsent.filter(|_| unsent_sends < MAX_UNSENT) {
                    // The connection closed before the request left (a stale keep-alive):
                    // any endpoint may take it, nothing was lost.
                    tracing::debug!(error = %failed.error, "pooled connection closed before the request left");
                    unsent_sends += 1;
                    pending = Some(unsent);
                    continue;
                }
                tracing::debug!(endpoint = %addr, error = %failed.error, "request to an endpoint failed");
                Err(Failure::RESET)
            }
            Err(_) => Err(Failure::TIMEOUT),
        };
        let status = answer.as_ref().map_or_else(|f| f.status, |r| r.status().as_u16());
        judge(service, &state, &endpoint_state, status);
        let retryable = codes.contains(&status) && answered.retries < max_retries && replay.is_some();
        if retryable {
            if budget_allows(conn, &budget) {
                answered.retries += 1;
                tried.push(key);
                // Every endpoint tried: start over rather than give up while attempts remain.
                if tried.len() >= service.endpoints.len() {
                    tried.clear();
                }
                let base = retry.and_then(|r| r.backoff).unwrap_or(DEFAULT_BACKOFF);
                tokio::time::sleep(backoff(base, answered.retries)).await;
                continue;
            }
            answered.flags = "URX";
        } else if answered.retries > 0 && answer.is_err() {
            answered.flags = "URX";
        }
        return answer.map(|response| (response.map(body::boxed), Some(outstanding)));
    }
}

fn budget_allows(conn: &Conn, budget: &RetryBudget) -> bool {
    let counters = &conn.proxy.state.http.counters;
    if budget.withdraw(Instant::now()) {
        counters.retried.fetch_add(1, Relaxed);
        true
    } else {
        counters.budget_exhausted.fetch_add(1, Relaxed);
        false
    }
}

/// Outlier detection on answers: a 5xx (or no answer) counts as the endpoint's failure,
/// anything else clears its run of them.
fn judge(
    service: &ServiceInfo,
    state: &ServiceState,
    endpoint: &crate::proxy::balance::EndpointState,
    status: u16,
) {
    let now = Instant::now();
    if status >= 500 {
        let may_eject = state.may_eject(service, now);
        if endpoint.errored(service.policy.outlier_detection.as_ref(), may_eject, now) {
            state.counters.ejections.fetch_add(1, Relaxed);
            tracing::info!(service = %service.name, "endpoint ejected after consecutive 5xx answers");
        }
    } else {
        endpoint.succeeded();
    }
}

/// Exponential from `base`, at most ten times it (Envoy's retry back-off).
fn backoff(base: Duration, retry: u32) -> Duration {
    (base * 2u32.saturating_pow(retry.saturating_sub(1))).min(base * 10)
}

/// The HTTP version to an endpoint: its service port's, or the front port's when that port
/// does not say.
fn upstream_proto(service: &ServiceInfo, port: u16, front: AppProtocol) -> Proto {
    let declared = service.port(port).map(|p| p.protocol).filter(|p| p.is_http()).unwrap_or(front);
    match declared {
        AppProtocol::Http2 | AppProtocol::Grpc => Proto::H2,
        AppProtocol::Http1 | AppProtocol::Tcp => Proto::H1,
    }
}

/// The request head, kept to build each attempt's request (`Parts` cannot be cloned: its
/// extensions are not).
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Head {
    fn of(parts: &Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn request(&self, body: Body) -> Request<Body> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The proxy's own answer. A gRPC client gets its status in gRPC's terms too (trailers-only,
/// as Envoy maps them), so it reads UNAVAILABLE or DEADLINE_EXCEEDED, not a bare HTTP error.
pub(super) fn synthetic(failure: &Failure, grpc: bool) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::from_static(failure.message.as_bytes())));
    *response.status_mut() = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if grpc {
        let code = match failure.status {
            404 => "12",       // UNIMPLEMENTED
            429 | 503 => "14", // UNAVAILABLE
            504 => "4",        // DEADLINE_EXCEEDED
            403 => "7",        // PERMISSION_DENIED
            _ => "13",         // INTERNAL
        };
        h.insert("grpc-status", HeaderValue::from_static(code));
        h.insert("grpc-message", HeaderValue::from_static(failure.message));
    }
    response
}

fn labels(conn: &Conn, key: &SeriesKey) -> RequestLabels {
    RequestLabels {
        series: SeriesLabels::new(
            Direction::Outbound,
            conn.classified.source.workload.as_deref(),
            key.workload.as_deref(),
            key.service.as_deref(),
            key.mtls,
        ),
        protocol: if key.grpc { "grpc" } else { "http" },
        response_code: key.status,
        grpc_status: key.grpc_status.map(|s| s.to_string()).unwrap_or_default(),
        flags: key.flags,
    }
}
