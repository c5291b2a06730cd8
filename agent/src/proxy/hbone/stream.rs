//! Bytes between a TCP connection and an HBONE stream (one HTTP/2 CONNECT stream), both ways
//! at once, with ztunnel's mapping of the ends:
//! - TCP EOF → an empty DATA frame with END_STREAM; END_STREAM → FIN (half-close both ways).
//! - RST_STREAM with NO_ERROR or CANCEL reads as EOF; any other code is an error, and the
//!   TCP side is then reset.
//! - An error on the TCP side drops the stream, which h2 resets (CANCEL).
//!
//! HTTP/2 flow control does the backpressure: a DATA frame's capacity is released to the
//! peer only once its bytes are written to the TCP side.

use std::{
    future::poll_fn,
    io,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};

use crate::proxy::relay::first_response::{self, FirstResponse, Way};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

/// Reads from the TCP side start with this much room and grow, doubling while reads fill it,
/// up to [`MAX_CHUNK`]: a request/response exchange of a few KiB never allocates a bulk
/// transfer's buffer per message (each read's bytes go to h2 as their own `Bytes`, so every
/// new reservation is a fresh allocation once the old one is in flight).
const FIRST_CHUNK: usize = 16 << 10;
const MAX_CHUNK: usize = 256 << 10;

/// Relays until both directions have ended. `up` counts TCP → stream, `down` stream → TCP;
/// `timer` (the client side's, where the stream leads to the endpoint) times its first
/// answer.
pub async fn relay(
    tcp: &mut TcpStream,
    send: SendStream<Bytes>,
    recv: RecvStream,
    up: &AtomicU64,
    down: &AtomicU64,
    timer: Option<&FirstResponse>,
) -> io::Result<()> {
    let (reader, writer) = tcp.split();
    tokio::try_join!(tcp_to_stream(reader, send, up, timer), stream_to_tcp(recv, writer, down, timer))
        .map(|_| ())
}

pub fn h2_error(e: h2::Error) -> io::Error {
    let kind = match e.reason() {
        Some(Reason::REFUSED_STREAM) => io::ErrorKind::ConnectionRefused,
        Some(_) => io::ErrorKind::ConnectionReset,
        None if e.is_io() => io::ErrorKind::BrokenPipe,
        None => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

async fn tcp_to_stream(
    mut reader: impl AsyncRead + Unpin,
    mut send: SendStream<Bytes>,
    counter: &AtomicU64,
    timer: Option<&FirstResponse>,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    let mut chunk_size = FIRST_CHUNK;
    loop {
        if buf.capacity() < chunk_size / 4 {
            buf.reserve(chunk_size);
        }
        let room = buf.capacity();
        let n = reader.read_buf(&mut buf).await?;
        if n == room && chunk_size < MAX_CHUNK {
            chunk_size *= 2;
        }
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_error)?;
            return Ok(());
        }
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(granted) => granted.map_err(h2_error)?,
                None => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the HBONE stream closed")),
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(h2_error)?;
        }
        counter.fetch_add(n as u64, Relaxed);
        first_response::moved(timer, Way::ToEndpoint);
    }
}

async fn stream_to_tcp(
    mut recv: RecvStream,
    mut writer: impl AsyncWrite + Unpin,
    counter: &AtomicU64,
    timer: Option<&FirstResponse>,
) -> io::Result<()> {
    loop {
        match recv.data().await {
            None => break,
            Some(Ok(data)) => {
                let n = data.len();
                writer.write_all(&data).await?;
                let _ = recv.flow_control().release_capacity(n);
                counter.fetch_add(n as u64, Relaxed);
                first_response::moved(timer, Way::FromEndpoint);
            }
            Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) => break,
            Some(Err(e)) => return Err(h2_error(e)),
        }
    }
    writer.shutdown().await
}
