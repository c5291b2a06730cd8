//! Upstream connections, opened from inside a pod's network namespace so that the source
//! address stays the pod's (or, into a pod's own app, 127.0.0.6 / ::1, which sk_lookup never
//! steers back into the proxy).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    time::Duration,
};

use socket2::Domain;
use tokio::net::{TcpSocket, TcpStream};

use crate::pods::Netns;
use nodemesh_common::ports::PROXY_SOURCE_V4;

/// Source address of the proxy's connection to an app inside the app's own pod.
pub fn local_app_source(dst: &SocketAddr) -> IpAddr {
    match dst {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(PROXY_SOURCE_V4)),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Connects to `dst` from a socket created in `netns`, optionally bound to `source`.
pub async fn connect(
    netns: &Netns,
    source: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = netns.tcp_socket(Domain::for_address(dst))?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source {
        // Let connect() pick the port with the full 4-tuple, or many connections from one
        // source address would run out of ports at bind().
        bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
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
