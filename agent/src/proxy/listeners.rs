//! Per-pod listeners, bound on loopback inside the pod's network namespace. Nothing opens on
//! the node: connect4 rewrites outbound connects to the outbound listener, and sk_lookup
//! hands inbound connections to the inbound listener.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
};

use socket2::Domain;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use super::{
    PodRuntime, Proxy,
    accept::{self, Kind},
};
use crate::report::status::ListenerInfo;

/// A pod's open listeners. [`PodListeners::retire`] closes them; dropping them without it
/// aborts the accept loops at once.
#[derive(Debug)]
pub struct PodListeners {
    info: Vec<ListenerInfo>,
    /// Duplicates of the inbound listeners' descriptors, for the sk_lookup map.
    inbound: Vec<(IpFamily, OwnedFd)>,
    /// The same for the HBONE listeners, when the node speaks HBONE.
    hbone: Vec<(IpFamily, OwnedFd)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { IpFamily::V4 } else { IpFamily::V6 }
    }
}

impl PodListeners {
    pub fn info(&self) -> &[ListenerInfo] {
        &self.info
    }

    /// The inbound listener for addresses of `family`, if the pod has one.
    pub fn inbound(&self, family: IpFamily) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inbound.iter().find(|(f, _)| *f == family).map(|(_, fd)| fd.as_fd())
    }

    /// The HBONE listener for addresses of `family`, if the pod has one.
    pub fn hbone(&self, family: IpFamily) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.hbone.iter().find(|(f, _)| *f == family).map(|(_, fd)| fd.as_fd())
    }

    /// Stops accepting after taking in what is already queued, and waits for that.
    /// Connections already accepted carry on; they belong to their own tasks.
    pub async fn retire(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for PodListeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub(super) fn open(proxy: &Proxy, pod: &Arc<PodRuntime>) -> io::Result<PodListeners> {
    let settings = proxy.settings();
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let has = |family| pod.ips.iter().any(|ip| IpFamily::of(ip) == family);

    let mut wanted = vec![(Kind::Outbound, SocketAddr::new(v4, settings.outbound_port), true)];
    // IPv6 loopback exists only where IPv6 is enabled in the pod; without it an IPv6 connect
    // cannot happen either, so a missing ::1 is not an error for outbound.
    wanted.push((Kind::Outbound, SocketAddr::new(v6, settings.outbound_port), false));
    let hbone = proxy.state.hbone.is_some();
    for (family, ip) in [(IpFamily::V4, v4), (IpFamily::V6, v6)] {
        if has(family) {
            wanted.push((Kind::Inbound, SocketAddr::new(ip, settings.inbound_port), true));
            if hbone {
                wanted.push((Kind::Hbone, SocketAddr::new(ip, settings.hbone_port), true));
            }
        }
    }

    let (stop, _) = watch::channel(false);
    let mut listeners =
        PodListeners { info: Vec::new(), inbound: Vec::new(), hbone: Vec::new(), stop, tasks: Vec::new() };
    for (kind, addr, required) in wanted {
        let std_listener = match bind_in(&pod.netns, addr) {
            Ok(l) => l,
            Err(e) if !required && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{addr} in the pod is taken by another process; waiting for it to be released"),
                ));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("listening on {addr} in the pod: {e}"))),
        };
        match kind {
            Kind::Inbound => {
                listeners
                    .inbound
                    .push((IpFamily::of(&addr.ip()), std_listener.as_fd().try_clone_to_owned()?));
            }
            Kind::Hbone => {
                listeners.hbone.push((IpFamily::of(&addr.ip()), std_listener.as_fd().try_clone_to_owned()?));
            }
            // connect4 rewrites only to a listener carrying this mark (ebpf/src/connect.rs).
            Kind::Outbound => proxy
                .state
                .listener_marks
                .mark(std_listener.as_fd(), pod.netns.cookie())
                .map_err(|e| io::Error::new(e.kind(), format!("marking the listener on {addr}: {e}")))?,
        }
        let listener = {
            let _runtime = proxy.state.runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        listeners.info.push(ListenerInfo { kind: kind.direction(), addr, hbone: kind == Kind::Hbone });
        let task = proxy.state.runtime.spawn(accept::accept_loop(
            listener,
            kind,
            Arc::clone(pod),
            proxy.clone(),
            listeners.stop.subscribe(),
        ));
        listeners.tasks.push(task);
    }
    Ok(listeners)
}

fn bind_in(netns: &crate::pods::Netns, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = netns.tcp_socket(Domain::for_address(addr))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
