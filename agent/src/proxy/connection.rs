//! One proxied connection: find where it was going, connect there, forward.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, atomic::Ordering::Relaxed},
};

use nodemesh_common::{OrigDstKey, SockAddr, addr};
use tokio::net::TcpStream;
use tracing::Instrument as _;

use super::{
    ListenerKind, PodRuntime, Proxy, admission, forward, ip_words, splice, stats::DirectionStats, upstream,
};
use crate::{
    authz::Source,
    directory::{Directory, Names, WorkloadRef},
    flows::{
        LiveFlow, Opening,
        kernel::{KernelIds, veth_key},
        record::{Direction, Verdict},
    },
    pods::netns::socket_cookie,
};

pub(super) async fn handle(
    kind: ListenerKind,
    stream: TcpStream,
    peer: SocketAddr,
    pod: Arc<PodRuntime>,
    proxy: Proxy,
) {
    let span = tracing::debug_span!("conn", pod = %pod.name, ?kind, %peer);
    async move {
        if let Err(why) = admit(kind, &stream, peer, &pod, &proxy) {
            tracing::debug!(reason = why.reason(), "connection refused");
            forward::reset(&stream);
            return;
        }
        let stats = match kind {
            ListenerKind::Outbound => &pod.stats.outbound,
            ListenerKind::Inbound => &pod.stats.inbound,
        };
        let _active = stats.open();
        let _node_active = NodeActive::new(&proxy);
        let result = match kind {
            ListenerKind::Outbound => outbound(stream, peer, &pod, &proxy, stats).await,
            ListenerKind::Inbound => inbound(stream, peer, &pod, &proxy, stats).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
    .instrument(span)
    .await
}

/// The admission stage (see `admission.rs`): loops and caps.
fn admit(
    kind: ListenerKind,
    stream: &TcpStream,
    peer: SocketAddr,
    pod: &PodRuntime,
    proxy: &Proxy,
) -> Result<(), admission::Refusal> {
    let admission = &proxy.shared.admission;
    if kind == ListenerKind::Inbound {
        let local = stream.local_addr().map_err(|_| admission::Refusal::Loop)?;
        admission.admit_inbound(local, peer, &pod.ips)?;
    }
    let pod_active = pod.stats.outbound.active.load(Relaxed) + pod.stats.inbound.active.load(Relaxed);
    admission.admit(pod_active, proxy.active_connections())
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
    let original = proxy.maps().orig_dst.take::<_, SockAddr>(&key)?.map(to_socket_addr);
    let directory = proxy.directory();
    // The app's side as the network would see it: the pod's address (of the destination's
    // family) and the app's own port.
    let family_ip = |dst: &SocketAddr| pod.ips.iter().find(|ip| ip.is_ipv4() == dst.is_ipv4()).copied();
    let dst = original.unwrap_or_else(|| client.local_addr().unwrap_or(peer));
    let source_ip = family_ip(&dst).unwrap_or(peer.ip());
    let source = SocketAddr::new(source_ip, peer.port());
    let dst_workload = directory.workload(&dst.ip());
    let source_workload = pod_workload(pod, &directory, &source_ip);
    let flow_guard = proxy.flows().open(
        proxy.maps(),
        Opening {
            direction: Direction::Outbound,
            pod: &pod.name,
            source: (source, Some(Arc::clone(&source_workload))),
            service: directory.service(&dst, dst_workload.as_deref()),
            destination: (dst, dst_workload.clone()),
        },
    );
    let flow = flow_guard.flow();
    let Some(dst) = original else {
        // Not a connection connect4 redirected (or its entry was evicted): nowhere to send it.
        stats.failed.fetch_add(1, Relaxed);
        flow.fail(Verdict::Failed, "no_original_destination");
        forward::reset(&client);
        return Err(io::Error::new(io::ErrorKind::NotFound, "no original destination"));
    };
    tracing::debug!(%dst, "outbound");
    let settings = proxy.settings();
    // Same node and enrolled: go straight into the destination pod's namespace (its inbound
    // side handled here too), instead of out through the network and back in through its
    // inbound listener.
    let (connected, splice, crosses_veth) = match proxy.pod_by_ip(&dst.ip()) {
        Some(target) => {
            target.stats.inbound.accepted.fetch_add(1, Relaxed);
            // The destination's policies are checked here, as its inbound side would; the
            // source is authenticated: the proxy accepted it inside the client's pod.
            let destination = dst_workload.unwrap_or_else(|| pod_workload(&target, &directory, &dst.ip()));
            let source = Source { ip: source_ip, workload: Some(&source_workload) };
            if let Err(reason) = directory.policies.check(&destination, dst, &source) {
                target.stats.inbound.failed.fetch_add(1, Relaxed);
                stats.failed.fetch_add(1, Relaxed);
                return deny(&client, flow, reason);
            }
            let source = Some(upstream::local_app_source(&dst));
            let connected = upstream::connect(&target.netns, source, dst, settings.connect_timeout).await;
            (connected, pod.splice() && target.splice(), false)
        }
        None => {
            let connected = upstream::connect(&pod.netns, None, dst, settings.connect_timeout).await;
            (connected, pod.splice() && settings.splice_network_legs, true)
        }
    };
    // The network-facing leg is the upstream socket: its TCP health and, when it leaves
    // through the pod's veth, its packets there.
    let kernel = |upstream: &TcpStream| KernelIds {
        cookie: socket_cookie(upstream).ok(),
        veth: crosses_veth.then(|| upstream.local_addr().ok().map(|local| veth_key(local, dst))).flatten(),
    };
    splice_or_copy(&mut client, connected, kernel, splice, proxy, stats, flow).await
}

/// A client reached `pod`'s address; sk_lookup sent it here, so our local address is the
/// destination it asked for.
async fn inbound(
    mut client: TcpStream,
    peer: SocketAddr,
    pod: &Arc<PodRuntime>,
    proxy: &Proxy,
    stats: &DirectionStats,
) -> io::Result<()> {
    let dst = client.local_addr()?;
    tracing::debug!(%dst, "inbound");
    let directory = proxy.directory();
    let dst_workload = pod_workload(pod, &directory, &dst.ip());
    let flow_guard = proxy.flows().open(
        proxy.maps(),
        Opening {
            direction: Direction::Inbound,
            pod: &pod.name,
            source: (peer, directory.workload(&peer.ip())),
            service: directory.service(&dst, Some(&dst_workload)),
            destination: (dst, Some(Arc::clone(&dst_workload))),
        },
    );
    // Plaintext from the network: its address names a workload but proves nothing, so the
    // policies see an unauthenticated source.
    if let Err(reason) =
        directory.policies.check(&dst_workload, dst, &Source { ip: peer.ip(), workload: None })
    {
        stats.failed.fetch_add(1, Relaxed);
        return deny(&client, flow_guard.flow(), reason);
    }
    // The network-facing leg is the accepted socket, which came in through the pod's veth.
    let ids = KernelIds { cookie: socket_cookie(&client).ok(), veth: Some(veth_key(dst, peer)) };
    let connected = upstream::connect(
        &pod.netns,
        Some(upstream::local_app_source(&dst)),
        dst,
        proxy.settings().connect_timeout,
    )
    .await;
    // The accepted socket receives from the network (see `splice_network_legs`).
    let splice = pod.splice() && proxy.settings().splice_network_legs;
    splice_or_copy(&mut client, connected, |_| ids, splice, proxy, stats, flow_guard.flow()).await
}

/// Refuses a connection a policy does not admit: a reset, as Istio's proxies answer it.
fn deny(client: &TcpStream, flow: &LiveFlow, reason: String) -> io::Result<()> {
    tracing::debug!(%reason, "denied by authorization policy");
    flow.fail(Verdict::Denied, reason);
    forward::reset(client);
    Ok(())
}

/// The enrolled pod's own name and identity: from the directory when it knows the address,
/// else from the pod's `namespace/name` with the default service account.
fn pod_workload(pod: &PodRuntime, directory: &Directory, ip: &IpAddr) -> Arc<WorkloadRef> {
    directory.workload(ip).unwrap_or_else(|| {
        let (namespace, name) = pod.name.split_once('/').unwrap_or(("", &pod.name));
        Arc::new(WorkloadRef::new(Names { namespace, pod: name, ..Names::default() }))
    })
}

async fn splice_or_copy(
    client: &mut TcpStream,
    connected: io::Result<TcpStream>,
    kernel: impl FnOnce(&TcpStream) -> KernelIds,
    splice: bool,
    proxy: &Proxy,
    stats: &DirectionStats,
    flow: &LiveFlow,
) -> io::Result<()> {
    let mut upstream = match connected {
        Ok(u) => u,
        Err(e) => {
            // The app's connect already succeeded (to us); a reset is the closest thing to
            // the refusal or timeout it would have seen directly.
            stats.failed.fetch_add(1, Relaxed);
            flow.fail(Verdict::Failed, failure_reason(&e));
            forward::reset(client);
            return Err(e);
        }
    };
    // A crash from here on resets the upstream too (see `forward::reset`).
    forward::reset(&upstream);
    flow.allow(kernel(&upstream));
    let result = forward_both_ways(client, &mut upstream, splice, proxy, flow).await;
    if result.is_ok() {
        forward::graceful(client);
        forward::graceful(&upstream);
    }
    stats.bytes_sent.fetch_add(flow.sent.load(Relaxed), Relaxed);
    stats.bytes_received.fetch_add(flow.received.load(Relaxed), Relaxed);
    if flow.spliced() {
        stats.spliced.fetch_add(1, Relaxed);
    }
    result
}

async fn forward_both_ways(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    splice: bool,
    proxy: &Proxy,
    flow: &LiveFlow,
) -> io::Result<()> {
    client.set_nodelay(true)?;
    let settings = proxy.settings();
    let (sent, received) = (&flow.sent, &flow.received);
    // Copy first; once the connection has moved `splice_after_bytes`, hand it to the kernel.
    // One-shot connections never pay for the hand-off; persistent and bulk ones get the splice.
    let copy = forward::CopySettings {
        max_buffer: settings.max_buffer_bytes,
        hand_off_after: splice.then_some(settings.splice_after_bytes),
        idle_timeout: settings.idle_timeout,
    };
    if let forward::Outcome::Done(_) = forward::forward(client, upstream, copy, sent, received).await? {
        return Ok(());
    }
    let copied = forward::Transfer {
        client_to_upstream: sent.load(Relaxed),
        upstream_to_client: received.load(Relaxed),
    };
    let spliced = splice::SpliceSettings {
        inflight_cap: settings.splice_inflight_cap,
        idle_timeout: settings.idle_timeout,
    };
    match splice::splice(client, upstream, proxy.maps(), spliced, copied).await {
        Ok(result) => {
            flow.set_spliced();
            let transfer = result?;
            sent.fetch_add(transfer.client_to_upstream, Relaxed);
            received.fetch_add(transfer.upstream_to_client, Relaxed);
            Ok(())
        }
        Err(splice::NotSpliced(e)) => {
            tracing::debug!(error = %e, "not spliced; copying");
            let rest = forward::CopySettings { hand_off_after: None, ..copy };
            forward::forward(client, upstream, rest, sent, received).await.map(|_| ())
        }
    }
}

/// A short, stable reason for a failed upstream connect (flows and metrics labels).
fn failure_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut => "connect_timeout".into(),
        io::ErrorKind::ConnectionRefused => "connection_refused".into(),
        io::ErrorKind::ConnectionReset => "connection_reset".into(),
        io::ErrorKind::HostUnreachable => "host_unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network_unreachable".into(),
        _ => match e.raw_os_error() {
            Some(errno) => format!("connect_errno_{errno}"),
            None => "connect_error".into(),
        },
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
