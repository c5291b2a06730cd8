//! The CLI's side of the admin API: one GET, with errors that say what to do.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent's admin API at {addr}: {source}\n\
         Is the agent running on this node (and are you in its network namespace)? \
         Start it with `nodemesh agent`, or point at it with --admin <addr>."
    )]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("talking to the agent at {addr}: {message}")]
    Protocol { addr: SocketAddr, message: String },
    #[error("the agent at {addr} answered {path} with HTTP {status}")]
    Status { addr: SocketAddr, path: String, status: u16 },
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches `path` and returns the body.
pub fn get(addr: SocketAddr, path: &str) -> Result<Bytes, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Protocol { addr, message: e.to_string() })?;
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, fetch(addr, path))
            .await
            .unwrap_or(Err(ClientError::Timeout { addr, timeout: TIMEOUT }))
    })
}

async fn fetch(addr: SocketAddr, path: &str) -> Result<Bytes, ClientError> {
    let proto = |e: &dyn std::fmt::Display| ClientError::Protocol { addr, message: e.to_string() };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Unreachable { addr, source })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| proto(&e))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| proto(&e))?;
    let response = sender.send_request(request).await.map_err(|e| proto(&e))?;
    if !response.status().is_success() {
        return Err(ClientError::Status { addr, path: path.into(), status: response.status().as_u16() });
    }
    Ok(response.into_body().collect().await.map_err(|e| proto(&e))?.to_bytes())
}
