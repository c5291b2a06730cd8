//! The HTTP stage's connections to endpoints, kept per client connection (so one source's
//! requests never ride another source's connection): HTTP/1.1 connections are reused once
//! their last response ended (keep-alive), an HTTP/2 connection carries every request to its
//! endpoint at once. A client's one long connection still spreads its requests over every
//! endpoint: each request is balanced on its own, and the pool only saves the handshakes.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::body::Body;
use crate::proxy::{hbone::io::StreamIo, upstream::Upstream};

/// HTTP/1.1 connections kept per endpoint (in use or idle).
const MAX_KEPT_H1: usize = 32;

/// How requests are framed to an endpoint: what its service port declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    H1,
    H2,
}

/// A connection to an endpoint, and whether an HBONE stream carries it (mutual TLS).
pub struct Sender {
    conn: Conn,
    pub tunnelled: bool,
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// A send that failed; `unsent` gives the request back when it never left, so it can go
/// to another connection whatever its body.
pub struct SendFailed {
    pub error: hyper::Error,
    pub unsent: Option<http::Request<Body>>,
}

impl Sender {
    pub async fn send(
        &mut self,
        request: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, SendFailed> {
        let sent = match &mut self.conn {
            Conn::H1(s) => {
                if let Err(error) = s.ready().await {
                    return Err(SendFailed { error, unsent: Some(request) });
                }
                s.try_send_request(request).await
            }
            Conn::H2(s) => {
                if let Err(error) = s.ready().await {
                    return Err(SendFailed { error, unsent: Some(request) });
                }
                s.try_send_request(request).await
            }
        };
        sent.map_err(|mut e| {
            let unsent = e.take_message();
            SendFailed { error: e.into_error(), unsent }
        })
    }
}

#[derive(Default)]
pub struct Pool {
    /// HTTP/1.1 connections (in use or idle), and the one HTTP/2 connection, per endpoint.
    h1: Mutex<HashMap<SocketAddr, Vec<Sender>>>,
    h2: Mutex<HashMap<SocketAddr, Sender>>,
}

impl Pool {
    /// A connection to `endpoint` that can take a request now, when the pool has one.
    pub fn take(&self, endpoint: SocketAddr, proto: Proto) -> Option<Sender> {
        match proto {
            Proto::H2 => {
                let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
                match h2.get(&endpoint) {
                    Some(Sender { conn: Conn::H2(s), tunnelled }) if !s.is_closed() => {
                        Some(Sender { conn: Conn::H2(s.clone()), tunnelled: *tunnelled })
                    }
                    Some(_) => {
                        h2.remove(&endpoint);
                        None
                    }
                    None => None,
                }
            }
            Proto::H1 => {
                let mut h1 = self.h1.lock().unwrap_or_else(|p| p.into_inner());
                let kept = h1.get_mut(&endpoint)?;
                kept.retain(|s| matches!(&s.conn, Conn::H1(c) if !c.is_closed()));
                // Ready: its last response has ended (one still streaming is not).
                let ready = kept.iter().rposition(|s| matches!(&s.conn, Conn::H1(c) if c.is_ready()))?;
                Some(kept.swap_remove(ready))
            }
        }
    }

    /// Keeps `sender` for the next request, as soon as its response's head has arrived: an
    /// HTTP/2 connection takes more requests at once; an HTTP/1.1 one is taken again once it
    /// is ready (`take`), which its connection task says as soon as the response has ended,
    /// before the client could have read it and asked again.
    pub fn give_back(&self, endpoint: SocketAddr, sender: Sender) {
        match sender.conn {
            Conn::H2(_) => {
                self.h2.lock().unwrap_or_else(|p| p.into_inner()).entry(endpoint).or_insert(sender);
            }
            Conn::H1(_) => {
                let mut h1 = self.h1.lock().unwrap_or_else(|p| p.into_inner());
                let kept = h1.entry(endpoint).or_default();
                if kept.len() < MAX_KEPT_H1 {
                    kept.push(sender);
                }
            }
        }
    }

    /// Forgets a connection that failed.
    pub fn discard(&self, endpoint: SocketAddr, sender: &Sender) {
        if let Conn::H2(s) = &sender.conn
            && s.is_closed()
        {
            self.h2.lock().unwrap_or_else(|p| p.into_inner()).remove(&endpoint);
        }
    }
}

/// Runs HTTP over a new transport to an endpoint; `keep` lives as long as the connection
/// (what it counts against, a rate limit's concurrency for one). HTTP/1.1 connections
/// allow upgrades (WebSocket, CONNECT).
pub async fn handshake(
    upstream: Upstream,
    proto: Proto,
    keep: impl Send + 'static,
) -> Result<Sender, hyper::Error> {
    let tunnelled = matches!(upstream, Upstream::Tunnel(_));
    let io = TokioIo::new(match upstream {
        Upstream::Tcp(tcp) => {
            let _ = tcp.set_nodelay(true);
            UpstreamIo::Tcp(tcp)
        }
        Upstream::Tunnel(opened) => UpstreamIo::Tunnel(Box::new(StreamIo::new(opened))),
    });
    match proto {
        Proto::H1 => {
            let (sender, conn) = http1::Builder::new().handshake(io).await?;
            tokio::spawn(async move {
                let _keep = keep;
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "HTTP/1.1 connection to an endpoint ended");
                }
            });
            Ok(Sender { conn: Conn::H1(sender), tunnelled })
        }
        Proto::H2 => {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new()).handshake(io).await?;
            tokio::spawn(async move {
                let _keep = keep;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/2 connection to an endpoint ended");
                }
            });
            Ok(Sender { conn: Conn::H2(sender), tunnelled })
        }
    }
}

/// The transport under an endpoint connection: TCP, or an HBONE stream to its node.
enum UpstreamIo {
    Tcp(TcpStream),
    Tunnel(Box<StreamIo>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tunnel(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tunnel(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tunnel(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tunnel(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
