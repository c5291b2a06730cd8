//! The relay stage: moves the bytes between the app's connection and the upstream one.
//! Copied through the proxy first; once a connection has moved `splice_after_bytes` it is
//! handed to the kernel splice, where allowed. One-shot connections never pay for the
//! hand-off; persistent and bulk ones get the splice. The HTTP issue adds a request-aware
//! relay here for ports declared HTTP.

pub mod first_response;
pub(crate) mod forward;
mod idle;
pub(super) mod splice;
mod tcp_counts;

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::net::TcpStream;

use crate::datapath::{SpliceKeys, SpliceMaps};

/// How the relay moves bytes.
#[derive(Clone, Copy, Debug)]
pub struct RelaySettings {
    pub max_buffer_bytes: usize,
    /// Bytes a connection moves (both ways) through the copy path before it is spliced.
    pub splice_after_bytes: u64,
    pub splice_inflight_cap: u64,
    /// Reset connections idle this long (zero: never).
    pub idle_timeout: Duration,
}

/// The flow's byte counters, which the relay keeps current while it runs.
pub struct Counters<'a> {
    /// From the connecting side to the other, and back.
    pub sent: &'a AtomicU64,
    pub received: &'a AtomicU64,
    /// Times the endpoint's first answer, for the balancer (connections to a service).
    pub first_response: Option<&'a first_response::FirstResponse>,
}

/// What the relay did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relayed {
    Copied,
    Spliced,
}

/// Relays until both directions end. `splice` says whether the route allows the hand-off;
/// `on_splice` is called the moment the kernel takes over, with the keys of the splice's
/// records for each direction (client to upstream, then back), so a live flow can show them.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    splice: bool,
    settings: &RelaySettings,
    maps: &SpliceMaps,
    counters: Counters<'_>,
    on_splice: impl FnOnce(SpliceKeys),
) -> (Relayed, io::Result<()>) {
    if let Err(e) = client.set_nodelay(true) {
        return (Relayed::Copied, Err(e));
    }
    let Counters { sent, received, first_response } = counters;
    let copy = forward::CopySettings {
        max_buffer: settings.max_buffer_bytes,
        hand_off_after: splice.then_some(settings.splice_after_bytes),
        idle_timeout: settings.idle_timeout,
    };
    match forward::forward(client, upstream, copy, sent, received, first_response).await {
        Ok(forward::Outcome::Done(_)) => return (Relayed::Copied, Ok(())),
        Ok(forward::Outcome::Paused(_)) => {}
        Err(e) => return (Relayed::Copied, Err(e)),
    }
    let copied = forward::Transfer {
        client_to_upstream: sent.load(Relaxed),
        upstream_to_client: received.load(Relaxed),
    };
    let spliced = splice::SpliceSettings {
        inflight_cap: settings.splice_inflight_cap,
        idle_timeout: settings.idle_timeout,
    };
    match splice::splice(client, upstream, maps, spliced, copied, on_splice).await {
        Ok(result) => (
            Relayed::Spliced,
            result.map(|transfer| {
                sent.fetch_add(transfer.client_to_upstream, Relaxed);
                received.fetch_add(transfer.upstream_to_client, Relaxed);
            }),
        ),
        Err(splice::NotSpliced(e)) => {
            tracing::debug!(error = %e, "not spliced; copying");
            let rest = forward::CopySettings { hand_off_after: None, ..copy };
            let copied = forward::forward(client, upstream, rest, sent, received, first_response).await;
            (Relayed::Copied, copied.map(|_| ()))
        }
    }
}
