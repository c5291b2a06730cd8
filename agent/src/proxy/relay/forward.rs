//! Plain L4 forwarding between the accepted socket and the upstream socket.
//!
//! Each direction reads into one buffer and writes it out before reading again, so a slow
//! reader closes the TCP window on its writer (backpressure, no unbounded queue). Buffers
//! start at 4 KiB and double while reads fill them, up to the configured maximum, so idle and
//! request/response connections stay small and bulk transfers get large copies. EOF in one
//! direction becomes a FIN (shutdown of the write side) on the other while the reverse
//! direction keeps flowing (half-close). An error in either direction resets both sockets, as
//! a reset on a direct connection would.
//!
//! At each direction's end the proxy's count is checked against the kernel's exact one (the
//! audit, as on the splice path): everything the source received in order was read (what was
//! read was written: `write_all` returns only once the destination's kernel took every byte).
//! A mismatch is an error, so both sides get a reset instead of a FIN and no app takes a
//! corrupted stream for a complete one.

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
};

use super::{
    first_response::{self, FirstResponse, Way},
    idle::IdleWatch,
    tcp_counts,
};

/// Copied directions whose byte counts disagreed with the kernel's at their end; exported as
/// `nodemesh_copy_audit_mismatches_total`.
pub static AUDIT_MISMATCHES: AtomicU64 = AtomicU64::new(0);

const INITIAL_BUFFER: usize = 4096;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// How forwarding ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions reached EOF.
    Done(Transfer),
    /// Stopped at a clean point once the hand-off threshold was crossed: neither direction
    /// at EOF and no byte held by the proxy (every byte read was written). The caller hands
    /// the connection to the kernel, or calls [`forward`] again to carry on.
    Paused(Transfer),
}

/// How one direction ended.
enum HalfEnd {
    Eof(u64),
    Paused(u64),
}

/// How to copy.
#[derive(Clone, Copy, Debug)]
pub struct CopySettings {
    pub max_buffer: usize,
    /// Pause once the connection has moved this many bytes both ways together.
    pub hand_off_after: Option<u64>,
    /// Fail when no byte moves either way for this long (zero: never).
    pub idle_timeout: Duration,
}

/// Forwards until both directions have seen EOF, or one fails, or (with `hand_off_after`)
/// the connection has moved that many bytes both ways together.
pub async fn forward(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    settings: CopySettings,
    sent: &AtomicU64,
    received: &AtomicU64,
    first_response: Option<&FirstResponse>,
) -> io::Result<Outcome> {
    if settings.hand_off_after == Some(0) {
        return Ok(Outcome::Paused(Transfer::default()));
    }
    let result = forward_halves(client, upstream, settings, sent, received, first_response).await;
    if result.is_err() {
        reset(client);
        reset(upstream);
    }
    result
}

async fn forward_halves(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    settings: CopySettings,
    sent: &AtomicU64,
    received: &AtomicU64,
    first_response: Option<&FirstResponse>,
) -> io::Result<Outcome> {
    let CopySettings { max_buffer, hand_off_after, idle_timeout } = settings;
    let mut idle = IdleWatch::new(idle_timeout);
    let moved_total = || sent.load(Relaxed) + received.load(Relaxed);
    let (mut client_r, mut client_w) = client.split();
    let (mut upstream_r, mut upstream_w) = upstream.split();
    let moved = AtomicU64::new(0);
    let (pause, _) = watch::channel(false);
    let limit = Limit { after: hand_off_after, moved: &moved, pause: &pause, timer: first_response };
    let (up, down) = watched(
        async {
            tokio::try_join!(
                copy_half(&mut client_r, &mut upstream_w, max_buffer, (sent, Way::ToEndpoint), &limit),
                copy_half(&mut upstream_r, &mut client_w, max_buffer, (received, Way::FromEndpoint), &limit),
            )
        },
        &mut idle,
        moved_total,
    )
    .await?;
    let unlimited = Limit { after: None, ..limit };
    Ok(match (up, down) {
        (HalfEnd::Eof(a), HalfEnd::Eof(b)) => {
            Outcome::Done(Transfer { client_to_upstream: a, upstream_to_client: b })
        }
        (HalfEnd::Paused(a), HalfEnd::Paused(b)) => {
            Outcome::Paused(Transfer { client_to_upstream: a, upstream_to_client: b })
        }
        // One side already half-closed: nothing worth handing over, finish copying the other.
        (HalfEnd::Eof(a), HalfEnd::Paused(b)) => {
            let rest = watched(
                copy_half(
                    &mut upstream_r,
                    &mut client_w,
                    max_buffer,
                    (received, Way::FromEndpoint),
                    &unlimited,
                ),
                &mut idle,
                moved_total,
            )
            .await?;
            Outcome::Done(Transfer { client_to_upstream: a, upstream_to_client: b + rest.bytes() })
        }
        (HalfEnd::Paused(a), HalfEnd::Eof(b)) => {
            let rest = watched(
                copy_half(&mut client_r, &mut upstream_w, max_buffer, (sent, Way::ToEndpoint), &unlimited),
                &mut idle,
                moved_total,
            )
            .await?;
            Outcome::Done(Transfer { client_to_upstream: a + rest.bytes(), upstream_to_client: b })
        }
    })
}

/// Runs `copy` until it ends, or until no byte has moved (per `moved`) for the idle timeout.
async fn watched<T>(
    copy: impl Future<Output = io::Result<T>>,
    idle: &mut IdleWatch,
    moved: impl Fn() -> u64,
) -> io::Result<T> {
    tokio::pin!(copy);
    loop {
        tokio::select! {
            result = &mut copy => return result,
            () = idle.tick() => if idle.expired(moved()) {
                return Err(idle.error());
            },
        }
    }
}

impl HalfEnd {
    fn bytes(&self) -> u64 {
        match self {
            HalfEnd::Eof(n) | HalfEnd::Paused(n) => *n,
        }
    }
}

/// The audit at the source's EOF, before the FIN is passed on: every byte the source received
/// in order was read (`read` counts every byte read from it over the connection's life, all
/// of them copied: a connection handed to the splice is audited there).
fn audit(src: &TcpStream, read: u64) -> io::Result<()> {
    let received = tcp_counts::received_before_fin(src)?;
    if received == read {
        return Ok(());
    }
    AUDIT_MISMATCHES.fetch_add(1, Relaxed);
    tracing::error!(received, read, "copied bytes disagree with the kernel's counts");
    Err(io::Error::new(io::ErrorKind::InvalidData, "copied bytes disagree with the kernel's counts"))
}

/// The hand-off threshold shared by both directions.
#[derive(Clone, Copy)]
struct Limit<'a> {
    after: Option<u64>,
    moved: &'a AtomicU64,
    pause: &'a watch::Sender<bool>,
    timer: Option<&'a FirstResponse>,
}

/// Copies until EOF (then shuts down the writer's sending side) or a pause.
///
/// A pause cancels a pending read, which loses nothing (the bytes stay queued), and never a
/// write, so every byte read has been written when it returns. A pause may leave an skb in the
/// reader's receive queue partly read: the splice verdict starts from the socket's
/// `copied_seq` and cuts the prefix already read off that skb (ebpf/src/splice.rs).
async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    max_buffer: usize,
    (counter, way): (&AtomicU64, Way),
    limit: &Limit<'_>,
) -> io::Result<HalfEnd>
where
    R: AsyncRead + AsRef<TcpStream> + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; INITIAL_BUFFER.min(max_buffer)];
    let mut total = 0u64;
    let mut paused = limit.pause.subscribe();
    let may_pause = limit.after.is_some();
    loop {
        if may_pause && *paused.borrow() {
            return Ok(HalfEnd::Paused(total));
        }
        let n = tokio::select! {
            biased;
            _ = paused.changed(), if may_pause => continue,
            n = reader.read(&mut buf) => n?,
        };
        if n == 0 {
            audit(reader.as_ref(), counter.load(Relaxed))?;
            writer.shutdown().await?;
            return Ok(HalfEnd::Eof(total));
        }
        writer.write_all(&buf[..n]).await?;
        total += n as u64;
        counter.fetch_add(n as u64, Relaxed);
        first_response::moved(limit.timer, way);
        if let Some(after) = limit.after
            && limit.moved.fetch_add(n as u64, Relaxed) + n as u64 >= after
        {
            limit.pause.send_replace(true);
        }
        if n == buf.len() && buf.len() < max_buffer {
            buf.resize((buf.len() * 2).min(max_buffer), 0);
        }
    }
}

/// Makes the next close send a RST instead of a FIN.
///
/// The proxy sets this on both of a connection's sockets as soon as it has them, and clears
/// it ([`graceful`]) only once the connection has ended cleanly: if the agent dies (a crash,
/// `kill -9`, the OOM killer), the kernel closes every socket it held with a reset, so no app
/// takes a cut transfer for a complete one.
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Undoes [`reset`] for a connection that ended cleanly: its close lingers as usual.
pub fn graceful(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn copy(max_buffer: usize, hand_off_after: Option<u64>) -> CopySettings {
        CopySettings { max_buffer, hand_off_after, idle_timeout: Duration::ZERO }
    }

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
            forward(&mut client_side, &mut upstream_side, copy(64 * 1024, None), &sent, &received, None).await
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
        let outcome = proxy.await.expect("join").expect("forward");
        let expected = Transfer { client_to_upstream: request.len() as u64, upstream_to_client: 23 };
        assert_eq!(outcome, Outcome::Done(expected));
    }

    #[tokio::test]
    async fn a_reset_upstream_resets_the_client() {
        let (mut app, mut client_side) = pair().await;
        let (mut upstream_side, server) = pair().await;
        let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
        let proxy = tokio::spawn(async move {
            forward(&mut client_side, &mut upstream_side, copy(64 * 1024, None), &sent, &received, None).await
        });
        reset(&server);
        drop(server);
        assert!(proxy.await.expect("join").is_err());
        let mut buf = [0u8; 1];
        let err = app.read(&mut buf).await.expect_err("the app sees the reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn a_direction_whose_count_disagrees_with_the_kernel_is_reset() {
        let (mut app, mut client_side) = pair().await;
        let (mut upstream_side, _server) = pair().await;
        // As if the proxy had read 7 bytes the kernel never received from the app.
        let (sent, received) = (AtomicU64::new(7), AtomicU64::new(0));
        app.write_all(b"hello").await.expect("write");
        app.shutdown().await.expect("half-close");
        let before = AUDIT_MISMATCHES.load(Relaxed);
        let e = forward(&mut client_side, &mut upstream_side, copy(4096, None), &sent, &received, None)
            .await
            .expect_err("the audit fails the copy");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(AUDIT_MISMATCHES.load(Relaxed) > before);
        drop(client_side);
        let mut buf = [0u8; 1];
        let err = app.read(&mut buf).await.expect_err("the app sees a reset, not a FIN");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_reset() {
        let (mut app, mut client_side) = pair().await;
        let (mut upstream_side, _server) = pair().await;
        let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
        let settings = CopySettings { idle_timeout: Duration::from_secs(30), ..copy(4096, None) };
        app.write_all(b"one request, then silence").await.expect("write");
        let started = tokio::time::Instant::now();
        let e = forward(&mut client_side, &mut upstream_side, settings, &sent, &received, None)
            .await
            .expect_err("idle connections end");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(30), "{:?}", started.elapsed());
        drop(client_side);
        let mut buf = [0u8; 1];
        let err = app.read(&mut buf).await.expect_err("the app sees the reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn pauses_at_a_clean_point_and_resumes() {
        let (mut app, mut client_side) = pair().await;
        let (mut upstream_side, mut server) = pair().await;
        let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
        let request: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let to_send = request.clone();
        let app_task = tokio::spawn(async move {
            app.write_all(&to_send).await.expect("write");
            app.shutdown().await.expect("half-close");
            let mut answer = Vec::new();
            app.read_to_end(&mut answer).await.expect("read");
            answer
        });
        // Crosses 10 kB, pauses with nothing held, then carries on where it stopped.
        let first =
            forward(&mut client_side, &mut upstream_side, copy(4096, Some(10_000)), &sent, &received, None)
                .await
                .expect("forward");
        let Outcome::Paused(before) = first else { panic!("expected a pause, got {first:?}") };
        assert!(before.client_to_upstream >= 10_000 && before.client_to_upstream < request.len() as u64);
        let server_task = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("server reads");
            server.write_all(b"ok").await.expect("answer");
            server.shutdown().await.expect("shutdown");
            got
        });
        let rest = forward(&mut client_side, &mut upstream_side, copy(4096, None), &sent, &received, None)
            .await
            .expect("rest");
        let Outcome::Done(after) = rest else { panic!("expected the end, got {rest:?}") };
        assert_eq!(before.client_to_upstream + after.client_to_upstream, request.len() as u64);
        assert_eq!(server_task.await.expect("join"), request, "byte-exact across the pause");
        assert_eq!(app_task.await.expect("join"), b"ok");
    }
}
