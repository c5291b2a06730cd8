//! Serving the admin, metrics and readiness ports with limits.
//!
//! Metrics and readiness listen on the node's network (Prometheus and the kubelet reach them
//! from outside the node namespace), so anyone who can reach the node can open connections
//! to them. Each port therefore caps its connections at once (past the cap a new connection
//! is closed at once and counted), gives a client a few seconds to send its request headers,
//! and closes connections that stay silent: a flood of idle connections holds at most the cap
//! in descriptors, never the data path's.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::{Instant, Sleep},
};

/// The limits of one port.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections at once.
    pub max_connections: usize,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// A connection that neither sends nor receives a byte this long is closed.
    pub idle_timeout: Duration,
    /// No connection lives longer than this.
    pub max_lifetime: Duration,
}

/// The admin API (loopback only): the CLI, an SRE's curl.
pub const ADMIN: Limits = Limits {
    max_connections: 32,
    header_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(30),
    max_lifetime: Duration::from_secs(300),
};

/// Metrics and readiness (the node's network): a few scrapers and the kubelet's probes.
pub const NETWORK: Limits = Limits {
    max_connections: 16,
    header_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(30),
    max_lifetime: Duration::from_secs(300),
};

/// Connections closed at once because their port was at its cap, per port.
#[derive(Debug, Default)]
pub struct Refused {
    pub admin: AtomicU64,
    pub metrics: AtomicU64,
    pub readiness: AtomicU64,
}

pub static REFUSED: Refused =
    Refused { admin: AtomicU64::new(0), metrics: AtomicU64::new(0), readiness: AtomicU64::new(0) };

/// Serves `app` on `listener` within `limits` until the listener fails for good.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    refused: &'static AtomicU64,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors: back off rather than spin; the kernel keeps the queue.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let io = TokioIo::new(Idle::new(stream, limits.idle_timeout));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(limits.max_lifetime, connection).await;
        });
    }
}

/// A stream that fails once no byte has moved either way for `timeout`.
struct Idle {
    stream: TcpStream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Idle {
    fn new(stream: TcpStream, timeout: Duration) -> Self {
        Self { stream, timeout, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }

    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "idle admin connection")
}

impl AsyncRead for Idle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                self.moved();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    static TEST_REFUSED: AtomicU64 = AtomicU64::new(0);

    async fn start(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/ok", get(|| async { "ok" }));
        tokio::spawn(serve(listener, app, limits, &TEST_REFUSED));
        addr
    }

    #[tokio::test]
    async fn caps_connections_and_closes_silent_ones() {
        let limits = Limits {
            max_connections: 2,
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            max_lifetime: Duration::from_secs(10),
        };
        let addr = start(limits).await;
        // Two silent connections take both slots; a third is closed at once.
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 64];
        let n =
            tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf)).await.expect("closed soon");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        assert!(TEST_REFUSED.load(Relaxed) >= 1);
        // The silent ones are closed after the header timeout, freeing the slots.
        for mut s in silent {
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.expect("closed");
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
        let mut ok = TcpStream::connect(addr).await.expect("connect");
        ok.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("request");
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
