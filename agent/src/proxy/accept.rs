//! The accept stage: a pod's listener took a connection. Which listener tells the proxy which
//! pod is speaking and in which direction. Each connection then goes through the stages in a
//! task of its own (`connection.rs`), where admission (`admission.rs`) first decides whether
//! the proxy takes it at all.

use std::{sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::{PodRuntime, Proxy, connection, context::Accepted, hbone, relay::forward};
use crate::report::flows::Direction;

/// What a listener takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The pod's outbound connections (connect4 sends them here).
    Outbound,
    /// Plaintext connections to the pod (sk_lookup).
    Inbound,
    /// HBONE to the pod: mutual TLS and HTTP/2 CONNECT (sk_lookup, port 15008).
    Hbone,
}

impl Kind {
    pub fn direction(self) -> Direction {
        match self {
            Kind::Outbound => Direction::Outbound,
            Kind::Inbound | Kind::Hbone => Direction::Inbound,
        }
    }
}

/// After the hooks are detached, a connection whose connect4 ran just before may still be
/// arriving; keep accepting that long before closing.
pub const RETIRE_GRACE: Duration = Duration::from_millis(100);

pub async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    pod: Arc<PodRuntime>,
    proxy: Proxy,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => take(stream, peer, kind, &pod, &proxy),
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning; the
                    // kernel keeps the connection queued meanwhile.
                    tracing::warn!(pod = %pod.name, ?kind, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    tokio::time::sleep(RETIRE_GRACE).await;
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
        take(stream, peer, kind, &pod, &proxy);
    }
}

fn take(stream: TcpStream, peer: std::net::SocketAddr, kind: Kind, pod: &Arc<PodRuntime>, proxy: &Proxy) {
    // Until it ends cleanly, the connection ends with a reset if the agent dies.
    forward::reset(&stream);
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(e) => {
            tracing::debug!(error = %e, "accepted socket has no local address");
            return;
        }
    };
    if kind == Kind::Hbone {
        let task = hbone::server::handle(stream, peer, local, Arc::clone(pod), proxy.clone());
        proxy.state.runtime.spawn(task);
        return;
    }
    let accepted = Accepted { direction: kind.direction(), pod: Arc::clone(pod), peer, local };
    proxy.state.runtime.spawn(connection::handle(accepted, stream, proxy.clone()));
}
