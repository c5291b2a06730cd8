//! `nodemesh sidecar`: the same forwarding code, run the way sidecar meshes run it, as a
//! process inside one pod, fed by an nftables/iptables REDIRECT rule and finding the original
//! destination with `SO_ORIGINAL_DST`. It exists so the benchmark can compare the node agent
//! with what users run today, proxy code held equal.

use std::{
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
    sync::atomic::AtomicU64,
    time::Duration,
};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::proxy::relay::forward;

mod http;

#[derive(Debug, clap::Args)]
pub struct SidecarArgs {
    /// Port the REDIRECT rule sends outbound connections to (on 127.0.0.1 in this netns).
    #[arg(long, default_value_t = 15001)]
    pub port: u16,
    /// SO_MARK on upstream connections, which the REDIRECT rule must skip (Istio uses uid 1337).
    #[arg(long, default_value_t = 1337)]
    pub mark: u32,
    /// Worker threads (Envoy sidecars default to 2).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// The longest a worker polls for work before it sleeps, in µs (as the agent's
    /// `idle_poll_us`).
    #[arg(long, default_value_t = 50)]
    pub idle_poll_us: u64,
    /// Terminate HTTP (HTTP/1.1 or HTTP/2 from the app, pooled HTTP/1.1 to the destination)
    /// instead of relaying bytes, as a sidecar does on an HTTP port.
    #[arg(long)]
    pub http: bool,
    /// Largest copy buffer per direction.
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_buffer_bytes: usize,
}

pub fn main(args: SidecarArgs) -> anyhow::Result<()> {
    // The agent's runtime, its idle polling included, so that the two compare as designs.
    let runtime = crate::idle_poll::IdlePoll::new(std::time::Duration::from_micros(args.idle_poll_us))
        .build(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.workers.max(1))
                .thread_name("nm-sidecar")
                .enable_all(),
        )?;
    runtime.block_on(serve(args))
}

async fn serve(args: SidecarArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{}", args.port))?;
    eprintln!("sidecar listening on 127.0.0.1:{} (upstream mark {})", args.port, args.mark);
    loop {
        let (client, _) = listener.accept().await?;
        let (mark, max_buffer, terminate_http) = (args.mark, args.max_buffer_bytes, args.http);
        tokio::spawn(async move {
            let handled = if terminate_http {
                match original_dst(&client) {
                    Ok(dst) => http::handle(client, dst, mark).await,
                    Err(e) => Err(e),
                }
            } else {
                handle(client, mark, max_buffer).await
            };
            if let Err(e) = handled {
                eprintln!("sidecar connection: {e}");
            }
        });
    }
}

async fn handle(mut client: TcpStream, mark: u32, max_buffer: usize) -> io::Result<()> {
    let dst = original_dst(&client)?;
    let socket =
        Socket::new(Domain::for_address(dst), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    socket.set_mark(mark)?;
    socket.set_tcp_nodelay(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    let mut upstream = match tokio::time::timeout(Duration::from_secs(10), socket.connect(dst)).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            forward::reset(&client);
            return Err(e);
        }
        Err(_) => {
            forward::reset(&client);
            return Err(io::Error::new(io::ErrorKind::TimedOut, "upstream connect timed out"));
        }
    };
    client.set_nodelay(true)?;
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let settings =
        forward::CopySettings { max_buffer, hand_off_after: None, idle_timeout: std::time::Duration::ZERO };
    forward::forward(&mut client, &mut upstream, settings, &sent, &received, None).await.map(|_| ())
}

/// The destination before REDIRECT rewrote it (netfilter's conntrack remembers it).
fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let fd = stream.as_raw_fd();
    if stream.local_addr()?.is_ipv4() {
        let mut addr = MaybeUninit::<libc::sockaddr_in>::zeroed();
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: a sockaddr_in out-parameter of the right size.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST, addr.as_mut_ptr().cast(), &mut len)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: filled by the kernel.
        let addr = unsafe { addr.assume_init() };
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
    } else {
        let mut addr = MaybeUninit::<libc::sockaddr_in6>::zeroed();
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: as above; IP6T_SO_ORIGINAL_DST has the same number.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_IPV6, SO_ORIGINAL_DST, addr.as_mut_ptr().cast(), &mut len)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: filled by the kernel.
        let addr = unsafe { addr.assume_init() };
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), 0, 0)))
    }
}
