//! Plain L4 forwarding between the accepted socket and the upstream socket.
//!
//! Each direction reads into one buffer and writes it out before reading again, so a slow
//! reader closes the TCP window on its writer (backpressure, no unbounded queue). Buffers
//! start at 4 KiB and double while reads fill them, up to the configured maximum, so idle and
//! request/response connections stay small and bulk transfers get large copies. EOF in one
//! direction becomes a FIN (shutdown of the write side) on the other while the reverse
//! direction keeps flowing (half-close). An error in either direction resets both sockets, as
//! a reset on a direct connection would.

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

const INITIAL_BUFFER: usize = 4096;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// Forwards until both directions have seen EOF, or one fails.
pub async fn forward(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    max_buffer: usize,
    sent: &AtomicU64,
    received: &AtomicU64,
) -> io::Result<Transfer> {
    let result = {
        let (mut client_r, mut client_w) = client.split();
        let (mut upstream_r, mut upstream_w) = upstream.split();
        tokio::try_join!(
            copy_half(&mut client_r, &mut upstream_w, max_buffer, sent),
            copy_half(&mut upstream_r, &mut client_w, max_buffer, received),
        )
    };
    match result {
        Ok((up, down)) => Ok(Transfer { client_to_upstream: up, upstream_to_client: down }),
        Err(e) => {
            reset(client);
            reset(upstream);
            Err(e)
        }
    }
}

/// Copies until EOF, then shuts down the writer's sending side.
pub async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    max_buffer: usize,
    counter: &AtomicU64,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; INITIAL_BUFFER.min(max_buffer)];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(total);
        }
        writer.write_all(&buf[..n]).await?;
        total += n as u64;
        counter.fetch_add(n as u64, Relaxed);
        if n == buf.len() && buf.len() < max_buffer {
            buf.resize((buf.len() * 2).min(max_buffer), 0);
        }
    }
}

/// Makes the next close send a RST instead of a FIN.
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (c, s)
    }

    #[tokio::test]
    async fn forwards_both_ways_with_half_close() {
        // app <-> (client_side | proxy | upstream_side) <-> server
        let (mut app, mut client_side) = pair().await;
        let (mut upstream_side, mut server) = pair().await;
        let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
        let proxy = tokio::spawn(async move {
            forward(&mut client_side, &mut upstream_side, 64 * 1024, &sent, &received).await
        });

        let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        app.write_all(&request).await.expect("write");
        app.shutdown().await.expect("half-close");

        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("server reads to EOF");
        assert_eq!(got, request);
        // The server can still answer after the client's FIN.
        server.write_all(b"answer after half-close").await.expect("write back");
        server.shutdown().await.expect("shutdown");

        let mut answer = Vec::new();
        app.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"answer after half-close");
        let transfer = proxy.await.expect("join").expect("forward");
        assert_eq!(transfer.client_to_upstream, request.len() as u64);
        assert_eq!(transfer.upstream_to_client, 23);
    }

    #[tokio::test]
    async fn a_reset_upstream_resets_the_client() {
        let (mut app, mut client_side) = pair().await;
        let (mut upstream_side, server) = pair().await;
        let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
        let proxy = tokio::spawn(async move {
            forward(&mut client_side, &mut upstream_side, 64 * 1024, &sent, &received).await
        });
        reset(&server);
        drop(server);
        assert!(proxy.await.expect("join").is_err());
        let mut buf = [0u8; 1];
        let err = app.read(&mut buf).await.expect_err("the app sees the reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
