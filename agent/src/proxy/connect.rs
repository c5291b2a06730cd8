//! The connect stage: the transport to the route's endpoint. Plain TCP today, opened from
//! inside a pod's network namespace so that the source address stays the pod's (or, into a
//! pod's own app, 127.0.0.6 / ::1, which sk_lookup never steers back into the proxy). The
//! identity issue adds HBONE (HTTP/2 CONNECT over mutual TLS) here, and the routing issue
//! retries another endpoint before the app has sent a byte.

use std::{io, os::fd::AsRawFd, time::Duration};

use socket2::Domain;
use tokio::net::{TcpSocket, TcpStream};

use super::route::Route;

/// Connects to the route's endpoint from a socket created in its pod's namespace.
pub async fn connect(route: &Route, timeout: Duration) -> io::Result<TcpStream> {
    let dst = route.endpoint;
    let socket = route.from_pod.netns.tcp_socket(Domain::for_address(dst))?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = route.source {
        // Let connect() pick the port with the full 4-tuple, or many connections from one
        // source address would run out of ports at bind().
        bind_address_no_port(&socket)?;
        socket.bind(&std::net::SocketAddr::new(source, 0).into())?;
    }
    finish(socket, dst, timeout).await
}

/// Connects to an app in the route's pod from the client's own address (`route.source`),
/// as the HBONE server does where the pod is set up for it (`pods::transparent`). The
/// socket is bound to the pod's loopback interface, which is how its packets reach the app
/// anyway (the address is local): sk_lookup leaves what arrives on `lo` alone, so the
/// connection reaches the app instead of looping back into the proxy, and the kernel may
/// reuse a TIME_WAIT of the same addresses for it (as it does on loopback), so a client's
/// connection rate is not bounded by the pod's ephemeral ports. The port is picked at
/// connect(), with the whole 4-tuple.
pub async fn connect_transparent(route: &Route, timeout: Duration) -> io::Result<TcpStream> {
    let dst = route.endpoint;
    let source = route.source.ok_or_else(|| io::Error::other("a transparent connect needs a source"))?;
    let socket = route.from_pod.netns.tcp_socket(Domain::for_address(dst))?;
    socket.set_tcp_nodelay(true)?;
    crate::pods::transparent::prepare_socket(&socket, source.is_ipv6())?;
    socket.bind_device(Some(b"lo"))?;
    bind_address_no_port(&socket)?;
    socket.bind(&std::net::SocketAddr::new(source, 0).into())?;
    finish(socket, dst, timeout).await
}

async fn finish(
    socket: socket2::Socket,
    dst: std::net::SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = TcpSocket::from_std_stream(socket.into());
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {dst} timed out after {timeout:?}"),
        )),
    }
}

fn bind_address_no_port(socket: &socket2::Socket) -> io::Result<()> {
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size on a valid socket.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A short, stable reason for a failed connect (flows and metrics labels).
pub fn failure_reason(e: &io::Error) -> String {
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
