//! One proxied connection: find where it was going, connect there, forward.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, atomic::Ordering::Relaxed},
};

use nodemesh_common::{OrigDstKey, SockAddr, addr};
use tokio::net::TcpStream;
use tracing::Instrument as _;

use super::{ListenerKind, PodRuntime, Proxy, forward, ip_words, splice, stats::DirectionStats, upstream};

pub(super) async fn handle(
    kind: ListenerKind,
    stream: TcpStream,
    peer: SocketAddr,
    pod: Arc<PodRuntime>,
    proxy: Proxy,
) {
    let span = tracing::debug_span!("conn", pod = %pod.name, ?kind, %peer);
    async move {
        let stats = match kind {
            ListenerKind::Outbound => &pod.stats.outbound,
            ListenerKind::Inbound => &pod.stats.inbound,
        };
        let _active = stats.open();
        let _node_active = NodeActive::new(&proxy);
        let result = match kind {
            ListenerKind::Outbound => outbound(stream, peer, &pod, &proxy, stats).await,
            ListenerKind::Inbound => inbound(stream, &pod, &proxy, stats).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
    .instrument(span)
    .await
}

/// An app in `pod` connected somewhere; connect4 sent it here.
async fn outbound(
    mut client: TcpStream,
    peer: SocketAddr,
    pod: &Arc<PodRuntime>,
    proxy: &Proxy,
    stats: &DirectionStats,
) -> io::Result<()> {
    let key = OrigDstKey {
        netns_cookie: pod.netns.cookie(),
        addr: ip_words(peer.ip()),
        port: peer.port(),
        _pad: [0; 6],
    };
    let Some(dst) = proxy.maps().orig_dst.take::<_, SockAddr>(&key)?.map(to_socket_addr) else {
        // Not a connection connect4 redirected (or its entry was evicted): nowhere to send it.
        stats.failed.fetch_add(1, Relaxed);
        forward::reset(&client);
        return Err(io::Error::new(io::ErrorKind::NotFound, "no original destination"));
    };
    tracing::debug!(%dst, "outbound");
    let settings = proxy.settings();
    // Same node and enrolled: go straight into the destination pod's namespace (its inbound
    // side handled here too), instead of out through the network and back in through its
    // inbound listener.
    let (connected, splice) = match proxy.pod_by_ip(&dst.ip()) {
        Some(target) => {
            target.stats.inbound.accepted.fetch_add(1, Relaxed);
            let source = Some(upstream::local_app_source(&dst));
            let connected = upstream::connect(&target.netns, source, dst, settings.connect_timeout).await;
            (connected, pod.splice() && target.splice())
        }
        None => (upstream::connect(&pod.netns, None, dst, settings.connect_timeout).await, pod.splice()),
    };
    splice_or_copy(&mut client, connected, splice, proxy, stats).await
}

/// A client reached `pod`'s address; sk_lookup sent it here, so our local address is the
/// destination it asked for.
async fn inbound(
    mut client: TcpStream,
    pod: &Arc<PodRuntime>,
    proxy: &Proxy,
    stats: &DirectionStats,
) -> io::Result<()> {
    let dst = client.local_addr()?;
    tracing::debug!(%dst, "inbound");
    let connected = upstream::connect(
        &pod.netns,
        Some(upstream::local_app_source(&dst)),
        dst,
        proxy.settings().connect_timeout,
    )
    .await;
    splice_or_copy(&mut client, connected, pod.splice(), proxy, stats).await
}

async fn splice_or_copy(
    client: &mut TcpStream,
    connected: io::Result<TcpStream>,
    splice: bool,
    proxy: &Proxy,
    stats: &DirectionStats,
) -> io::Result<()> {
    let mut upstream = match connected {
        Ok(u) => u,
        Err(e) => {
            // The app's connect already succeeded (to us); a reset is the closest thing to
            // the refusal or timeout it would have seen directly.
            stats.failed.fetch_add(1, Relaxed);
            forward::reset(client);
            return Err(e);
        }
    };
    client.set_nodelay(true)?;
    let settings = proxy.settings();
    let (max, sent, received) = (settings.max_buffer_bytes, &stats.bytes_sent, &stats.bytes_received);
    // Copy first; once the connection has moved `splice_after_bytes`, hand it to the kernel.
    // One-shot connections never pay for the hand-off; persistent and bulk ones get the splice.
    let hand_off_after = splice.then_some(settings.splice_after_bytes);
    if let forward::Outcome::Done(_) =
        forward::forward(client, &mut upstream, max, sent, received, hand_off_after).await?
    {
        return Ok(());
    }
    match splice::splice(client, &mut upstream, proxy.maps(), settings.splice_inflight_cap).await {
        Ok(result) => {
            stats.spliced.fetch_add(1, Relaxed);
            let transfer = result?;
            stats.bytes_sent.fetch_add(transfer.client_to_upstream, Relaxed);
            stats.bytes_received.fetch_add(transfer.upstream_to_client, Relaxed);
            Ok(())
        }
        Err(splice::NotSpliced(e)) => {
            tracing::debug!(error = %e, "not spliced; copying");
            forward::forward(client, &mut upstream, max, sent, received, None).await.map(|_| ())
        }
    }
}

fn to_socket_addr(a: SockAddr) -> SocketAddr {
    let mut octets = [0u8; 16];
    for (i, w) in a.addr.iter().enumerate() {
        octets[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let ip = if addr::is_v4_mapped(&a.addr) {
        IpAddr::V4(Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    SocketAddr::new(ip, a.port)
}

/// Counts a connection in the node-wide total until dropped.
struct NodeActive<'a>(&'a Proxy);

impl<'a> NodeActive<'a> {
    fn new(proxy: &'a Proxy) -> Self {
        proxy.shared.active.fetch_add(1, Relaxed);
        Self(proxy)
    }
}

impl Drop for NodeActive<'_> {
    fn drop(&mut self) {
        self.0.shared.active.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_kernel_layout() {
        for text in ["10.1.2.3:80", "[fd00::5]:8080"] {
            let sa: SocketAddr = text.parse().expect("addr");
            let k = SockAddr { addr: ip_words(sa.ip()), port: sa.port(), _pad: [0; 2] };
            assert_eq!(to_socket_addr(k), sa);
        }
        assert_eq!(ip_words("10.1.2.3".parse().expect("ip")), addr::from_v4(addr::v4([10, 1, 2, 3])));
    }
}
