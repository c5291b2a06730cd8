//! `nodemesh sidecar --http`: the sidecar terminating HTTP, as an Envoy sidecar does for an
//! HTTP port: each redirected connection is served with hyper (HTTP/1.1 or HTTP/2), and each
//! request is sent on a pooled keep-alive HTTP/1.1 connection to the original destination,
//! its head put in the upstream's form by the node proxy's own code (`proxy::http::headers`).
//! It holds no route table: the benchmark's route sends every request to the one endpoint
//! the app dialled, so the per-request work left out is a route match and a balancer pick.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::{TcpSocket, TcpStream};

use crate::proxy::http::{
    body::{self, Body},
    headers,
    pool::Proto,
};

/// Idle connections kept per client connection.
const MAX_IDLE: usize = 32;

/// Serves one redirected connection whose original destination is `dst`.
pub async fn handle(client: TcpStream, dst: SocketAddr, mark: u32) -> io::Result<()> {
    client.set_nodelay(true)?;
    let idle: Arc<Mutex<Vec<SendRequest<Body>>>> = Arc::default();
    let service = hyper::service::service_fn(move |request| {
        let idle = Arc::clone(&idle);
        async move { Ok::<_, Infallible>(forward(request, dst, mark, idle).await) }
    });
    auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(client), service)
        .await
        .map_err(|e| io::Error::other(e.to_string()))
}

async fn forward(
    request: Request<Incoming>,
    dst: SocketAddr,
    mark: u32,
    idle: Arc<Mutex<Vec<SendRequest<Body>>>>,
) -> Response<Body> {
    let (mut parts, incoming) = request.into_parts();
    headers::for_upstream(&mut parts, Proto::H1, false);
    let request = Request::from_parts(parts, body::boxed(incoming));
    let pooled = {
        let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
        std::iter::from_fn(|| idle.pop()).find(SendRequest::is_ready)
    };
    let mut sender = match pooled {
        Some(sender) => sender,
        None => match connect(dst, mark).await {
            Ok(sender) => sender,
            Err(e) => return failure(503, &format!("upstream connect error: {e}")),
        },
    };
    if let Err(e) = sender.ready().await {
        return failure(503, &format!("upstream connection closed: {e}"));
    }
    match sender.send_request(request).await {
        Ok(response) => {
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                    if idle.len() < MAX_IDLE {
                        idle.push(sender);
                    }
                }
            });
            let (mut parts, incoming) = response.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, false);
            Response::from_parts(parts, body::boxed(incoming))
        }
        Err(e) => failure(503, &format!("upstream reset: {e}")),
    }
}

/// A keep-alive connection to `dst`, marked so the REDIRECT rule lets it pass.
async fn connect(dst: SocketAddr, mark: u32) -> io::Result<SendRequest<Body>> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_mark(mark)?;
    socket.set_tcp_nodelay(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

fn failure(status: u16, message: &str) -> Response<Body> {
    eprintln!("sidecar request to the destination failed: {message}");
    let mut response = Response::new(body::full(bytes::Bytes::from(message.to_owned())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    response
}
