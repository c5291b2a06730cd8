//! Handing an established connection to the kernel: both of the proxy's sockets go into the
//! splice sockhash, whose stream verdict (ebpf/src/splice.rs) moves each direction's bytes to
//! the other socket's egress. The app's socket never enters a map, so blocking apps keep
//! plain TCP semantics (no spurious EAGAIN).
//!
//! The proxy stays in charge of what the kernel cannot do alone, woken only when the verdict
//! passes bytes up or a side reaches EOF:
//! - **Ordering.** Before writing bytes of its own to a socket, and before shutting it down,
//!   it waits until every byte redirected to that socket is in its send queue ("drain").
//! - **Hand-back.** Bytes the verdict passed up are forwarded, then published as
//!   `SpliceCtl::forwarded`; the verdict redirects only once all passed bytes are forwarded.
//! - **Backpressure.** The verdict redirects while the target socket has fewer than
//!   `inflight_cap` bytes unacknowledged (it reads the target's `bytes_acked` itself); past
//!   that it passes bytes up, and the proxy's blocking write closes the source's TCP window.
//! - **Half-close.** EOF on one side becomes a FIN on the other after the drain.

use std::{
    io,
    os::fd::AsFd,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use nodemesh_common::{SPLICE_BROKEN, SpliceCtl, SpliceState};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{
    forward::{Transfer, reset},
    idle::IdleWatch,
    tcp_counts::{handed, queued, received_before_fin, set_int_option, tcp_info},
};
use crate::{
    datapath::{SpliceKeys, SpliceMaps},
    pods::netns::socket_cookie,
};

/// The proxy's read buffer for bytes the verdict passes up (as large as the copy path's).
const BUFFER: usize = 256 * 1024;
/// How often a half-closed spliced connection is checked for a reset.
const RESET_CHECK: Duration = Duration::from_millis(500);

/// Why a connection was not spliced (it is copied instead).
#[derive(Debug)]
pub struct NotSpliced(pub io::Error);

/// Directions whose byte counts disagreed with the kernel's (see [`OneWay::audit`]), or
/// whose verdict lost track of the sequence; exported as
/// `nodemesh_splice_audit_mismatches_total`. Each one reset its connection.
pub static AUDIT_MISMATCHES: AtomicU64 = AtomicU64::new(0);

/// One direction: bytes arriving on `src` leave through `dst`.
struct OneWay {
    /// Cookie of the socket the bytes arrive on (the key of its state and control).
    key: u64,
    /// Bytes the proxy copied from `src` before the splice began.
    src_copied: u64,
    /// Bytes ever queued on `dst` when the splice began (see [`queued`]), if it could tell.
    dst_base_queued: Option<u64>,
    /// Bytes the proxy forwarded itself.
    forwarded: u64,
    /// Bytes already handed to `dst`'s TCP before the splice began.
    dst_base_handed: u64,
    /// The redirected count at the last drain: while it has not moved, every redirected byte
    /// is known to be in dst's send queue and the next write need not wait.
    drained_redirected: u64,
    eof: bool,
}

/// How to splice.
#[derive(Clone, Copy, Debug)]
pub struct SpliceSettings {
    /// See `SpliceCtl::inflight_cap`.
    pub inflight_cap: u64,
    /// Fail when no byte moves either way for this long (zero: never).
    pub idle_timeout: Duration,
}

pub async fn splice(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    maps: &SpliceMaps,
    settings: SpliceSettings,
    copied: Transfer,
    on_splice: impl FnOnce(SpliceKeys),
) -> Result<io::Result<Transfer>, NotSpliced> {
    let mut inflight_cap = settings.inflight_cap;
    let cookies = (socket_cookie(client).map_err(NotSpliced)?, socket_cookie(upstream).map_err(NotSpliced)?);
    let (client_info, upstream_info) =
        (tcp_info(client).map_err(NotSpliced)?, tcp_info(upstream).map_err(NotSpliced)?);
    let mut up = OneWay::new(cookies.0, copied.client_to_upstream, upstream, &upstream_info);
    let mut down = OneWay::new(cookies.1, copied.upstream_to_client, client, &client_info);
    let entries = Entries { maps, cookies };
    // The kernel's worker that sends redirected bytes retries a full send buffer only a tick
    // (4 ms at HZ=250) later, and an autotuned buffer starts small. A fixed buffer above the
    // in-flight cap means the verdict hands bytes to the proxy before the worker would stall.
    for stream in [&*client, &*upstream] {
        set_int_option(
            stream,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            inflight_cap.min(1 << 30) as libc::c_int,
        );
    }
    for (dir, peer) in [(&up, cookies.1), (&down, cookies.0)] {
        let state = SpliceState { peer_cookie: peer, ..Default::default() };
        maps.begin(dir.key, &state, &dir.ctl(inflight_cap)).map_err(NotSpliced)?;
    }
    // Upstream first: once the client's socket is in, its bytes are redirected to upstream.
    if let Err(e) = maps.insert(cookies.1, upstream.as_fd()) {
        // Nothing entered the map (typically the peer already sent FIN): plain copy.
        return Err(NotSpliced(e));
    }
    if let Err(e) = maps.insert(cookies.0, client.as_fd()) {
        // Upstream is in the map and may already hold passed bytes in its queue, which
        // leaving the map would drop. Keep it there with no room in flight: the verdict
        // passes every byte up and the proxy forwards them all.
        tracing::debug!(error = %e, "splice insert failed; forwarding through the proxy");
        inflight_cap = 0;
        for dir in [&up, &down] {
            let _ = maps.control(dir.key, &dir.ctl(0));
        }
    }
    on_splice(SpliceKeys { client_to_upstream: cookies.0, upstream_to_client: cookies.1 });
    // Bytes queued before the insert wait for the next wakeup; a receive low-water mark set
    // now makes the kernel run the verdict over them.
    for stream in [&*client, &*upstream] {
        set_int_option(stream, libc::SOL_SOCKET, libc::SO_RCVLOWAT, 1);
    }

    let mut idle = IdleWatch::new(settings.idle_timeout);
    let result = supervise(client, upstream, &mut up, &mut down, &entries, inflight_cap, &mut idle).await;
    let transfer = Transfer {
        client_to_upstream: up.forwarded + entries.redirected(cookies.0),
        upstream_to_client: down.forwarded + entries.redirected(cookies.1),
    };
    drop(entries);
    Ok(match result {
        Ok(()) => Ok(transfer),
        Err(e) => {
            reset(client);
            reset(upstream);
            Err(e)
        }
    })
}

async fn supervise(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    up: &mut OneWay,
    down: &mut OneWay,
    entries: &Entries<'_>,
    inflight_cap: u64,
    idle: &mut IdleWatch,
) -> io::Result<()> {
    let maps = entries.maps;
    let mut buf = vec![0u8; BUFFER];
    // Once one direction is done its socket is no longer watched, so a reset there would go
    // unnoticed (the kernel drops what it can no longer redirect); look at it now and then.
    let mut watchdog = tokio::time::interval(RESET_CHECK);
    while !(up.eof && down.eof) {
        tokio::select! {
            () = idle.tick() => {
                let moved = up.forwarded
                    + down.forwarded
                    + entries.redirected(entries.cookies.0)
                    + entries.redirected(entries.cookies.1);
                if idle.expired(moved) {
                    return Err(idle.error());
                }
            }
            _ = watchdog.tick(), if up.eof || down.eof => {
                // A reset leaves a pending socket error; a clean close does not (TCP_CLOSE alone
                // is also what a socket shows once it has gone to TIME_WAIT).
                for stream in [&*client, &*upstream] {
                    if let Some(e) = stream.take_error()? {
                        return Err(e);
                    }
                }
            }
            ready = client.readable(), if !up.eof => {
                ready?;
                up.on_readable(client, upstream, &mut buf, maps, inflight_cap).await?;
            }
            ready = upstream.readable(), if !down.eof => {
                ready?;
                down.on_readable(upstream, client, &mut buf, maps, inflight_cap).await?;
            }
        }
    }
    Ok(())
}

impl OneWay {
    fn new(key: u64, src_copied: u64, dst: &TcpStream, dst_info: &libc::tcp_info) -> Self {
        Self {
            key,
            src_copied,
            dst_base_queued: queued(dst),
            forwarded: 0,
            dst_base_handed: handed(dst_info),
            drained_redirected: 0,
            eof: false,
        }
    }

    /// At the direction's end, before its FIN is passed on: every byte `src` received was
    /// copied before the splice, passed up or redirected, and every byte queued on `dst` since
    /// was forwarded or redirected. The kernel's own counts are exact (`bytes_received`;
    /// `bytes_acked` plus the send queue), so a mismatch means the in-kernel path duplicated
    /// or lost bytes: it is logged with both sides' numbers, counted, and returned as an
    /// error, so both apps get a reset rather than a FIN after a corrupted stream.
    fn audit(&self, src: &TcpStream, dst: &TcpStream, maps: &SpliceMaps) -> io::Result<()> {
        let state = self.state(maps)?;
        let received = received_before_fin(src)?;
        let seen = self.src_copied + state.passed + state.redirected;
        let queued_since = self.dst_base_queued.zip(queued(dst)).map(|(base, now)| now.saturating_sub(base));
        let given = self.forwarded + state.redirected;
        if received != seen || queued_since.is_some_and(|q| q != given) {
            AUDIT_MISMATCHES.fetch_add(1, Relaxed);
            tracing::error!(
                received,
                seen,
                copied_before = self.src_copied,
                passed = state.passed,
                redirected = state.redirected,
                trimmed = state.trimmed,
                forwarded = self.forwarded,
                queued_since,
                "spliced bytes disagree with the kernel's counts"
            );
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "spliced bytes disagree with the kernel's counts",
            ));
        }
        Ok(())
    }

    async fn on_readable(
        &mut self,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        buf: &mut [u8],
        maps: &SpliceMaps,
        inflight_cap: u64,
    ) -> io::Result<()> {
        // Take everything passed up so far in one go: the fewer round trips here, the sooner
        // forwarded catches up with passed and the verdict goes back to redirecting.
        let (mut n, mut eof) = (0, false);
        while n < buf.len() {
            match src.try_read(&mut buf[n..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if n > 0 {
            self.drain(dst, maps).await?;
            dst.write_all(&buf[..n]).await?;
            self.forwarded += n as u64;
            // Published only now that the bytes are in dst's send queue: from here on, bytes
            // the verdict redirects land behind them.
            maps.control(self.key, &self.ctl(inflight_cap))?;
        }
        if eof {
            self.drain(dst, maps).await?;
            self.audit(src, dst, maps)?;
            dst.shutdown().await?;
            self.eof = true;
        }
        Ok(())
    }

    fn ctl(&self, inflight_cap: u64) -> SpliceCtl {
        SpliceCtl { forwarded: self.forwarded, inflight_cap, peer_base_sent: self.dst_base_handed }
    }

    fn state(&self, maps: &SpliceMaps) -> io::Result<SpliceState> {
        maps.state(self.key)?.ok_or_else(|| io::Error::other("splice state vanished"))
    }

    /// Waits until every byte meant for `dst` (redirected by the kernel or written by us) is
    /// in its send queue. Fails if the verdict has lost track of the byte stream: it passes
    /// everything up from then on, and nothing it passed may reach the peer.
    async fn drain(&mut self, dst: &TcpStream, maps: &SpliceMaps) -> io::Result<()> {
        let state = self.state(maps)?;
        if state.flags & SPLICE_BROKEN != 0 {
            AUDIT_MISMATCHES.fetch_add(1, Relaxed);
            tracing::error!(
                trimmed = state.trimmed,
                "the splice verdict lost track of the byte stream; resetting"
            );
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the splice lost track of the byte stream",
            ));
        }
        let redirected = state.redirected;
        if redirected == self.drained_redirected {
            return Ok(());
        }
        let target = self.dst_base_handed + self.forwarded + redirected;
        let mut pause = Duration::from_micros(50);
        loop {
            let info = tcp_info(dst)?;
            if handed(&info) >= target {
                self.drained_redirected = redirected;
                return Ok(());
            }
            // ESTABLISHED or CLOSE_WAIT: the socket can still send; anything else means the
            // redirected bytes will never get there.
            if !matches!(info.tcpi_state, 1 | 8) {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "splice target closed before draining",
                ));
            }
            if pause < Duration::from_millis(1) {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
            // Never longer than the timer's resolution: the worker drains in microseconds
            // unless the target is genuinely blocked, and a long nap stalls the stream.
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }
}

/// The map entries of one spliced connection; removed on drop. Closing the sockets takes
/// them out of the sockhash anyway, but the state and control entries are ours to delete.
struct Entries<'a> {
    maps: &'a SpliceMaps,
    cookies: (u64, u64),
}

impl Entries<'_> {
    fn redirected(&self, key: u64) -> u64 {
        self.maps.state(key).ok().flatten().map_or(0, |s| s.redirected)
    }
}

impl Drop for Entries<'_> {
    fn drop(&mut self) {
        self.maps.remove(self.cookies.0);
        self.maps.remove(self.cookies.1);
    }
}
