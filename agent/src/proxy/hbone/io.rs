//! One HBONE stream as a byte stream (`AsyncRead` + `AsyncWrite`), for a protocol that runs
//! on top of it: the HTTP stage's client connections to endpoints on other nodes. The ends
//! map as in `stream`: shutdown sends END_STREAM; END_STREAM, or a reset with NO_ERROR or
//! CANCEL, reads as EOF; any other reset is an error.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{client::Opened, pool::StreamClaim, stream::h2_error};

pub struct StreamIo {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    pending: Bytes,
    read_done: bool,
    write_done: bool,
    /// Keeps the pooled connection counted as in use while the stream lives.
    _claim: StreamClaim,
}

impl StreamIo {
    pub fn new(opened: Opened) -> Self {
        Self {
            send: opened.send,
            recv: opened.recv,
            pending: Bytes::new(),
            read_done: false,
            write_done: false,
            _claim: opened.claim,
        }
    }
}

impl AsyncRead for StreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() && !this.read_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The peer may send more once these bytes are ours to hand out.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                None => this.read_done = true,
                Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) => {
                    this.read_done = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        if this.write_done {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream shut down")));
        }
        this.send.reserve_capacity(buf.len());
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(buf.len());
                    this.send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(h2_error)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the HBONE stream closed",
                    )));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes frames as its connection task gets to them; nothing is held here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_done {
            this.write_done = true;
            this.send.send_data(Bytes::new(), true).map_err(h2_error)?;
        }
        Poll::Ready(Ok(()))
    }
}
