//! `--async`: the same request/response load and server on a tokio runtime instead of one
//! blocking thread per connection.
//!
//! Most servers and many clients a mesh carries are event-driven (tokio, Go, Netty, nginx):
//! a few threads serve many connections, and a thread woken by epoll handles every
//! connection that is ready before it sleeps again. One blocking thread per connection pays
//! a wake-up and a context switch per message instead, which costs more CPU per request than
//! the path under test and so hides part of the proxy's cost (docs/performance.md). The wire
//! protocol is the blocking mode's (`main.rs`), so either client works with either server.

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Barrier,
};

use crate::{STREAM, WARMUP, flag, report};

/// Worker threads: `--threads`, else one per CPU (tokio's default, as `#[tokio::main]`).
fn runtime(args: &[String]) -> io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let threads: usize = flag(args, "--threads", Some(cpus))?;
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()
}

/// `server --async --port P`: request/response and stream connections (not `verify`).
pub fn server(args: &[String]) -> io::Result<()> {
    let port: u16 = flag(args, "--port", None)?;
    runtime(args)?.block_on(async move {
        let listener = TcpListener::bind(("::", port)).await?;
        loop {
            let (conn, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = serve(conn).await;
            });
        }
    })
}

async fn serve(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let size = conn.read_u32().await?;
    if size == STREAM {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf).await? {
                0 => break,
                n => total += n as u64,
            }
        }
        return conn.write_all(&total.to_be_bytes()).await;
    }
    if size == crate::verify::VERIFY {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "verify needs the blocking server"));
    }
    let mut buf = vec![0u8; size as usize];
    loop {
        match conn.read_exact(&mut buf).await {
            Ok(_) => conn.write_all(&buf).await?,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// `rr --async`: C persistent connections, one request in flight each, as tasks.
pub fn rr(args: &[String]) -> io::Result<()> {
    let target: SocketAddr = flag(args, "--target", None)?;
    let size: u32 = flag(args, "--size", Some(1024))?;
    let conns: usize = flag(args, "--conns", Some(1))?;
    let seconds: f64 = flag(args, "--seconds", Some(3.0))?;
    let (all, errors) = runtime(args)?.block_on(async move {
        let start = Arc::new(Barrier::new(conns + 1));
        let mut tasks = Vec::new();
        for i in 0..conns {
            let start = Arc::clone(&start);
            tasks.push(tokio::spawn(async move {
                let request: Vec<u8> = (0..size).map(|b| (b as usize + i) as u8).collect();
                let mut response = vec![0u8; size as usize];
                let connected =
                    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await;
                // Every task reaches the barrier, connected or not, so none waits forever.
                let conn = async {
                    let mut conn = connected.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                    conn.set_nodelay(true)?;
                    conn.write_all(&size.to_be_bytes()).await?;
                    io::Result::Ok(conn)
                }
                .await;
                start.wait().await;
                let mut conn = conn?;
                let begin = Instant::now();
                let (warm, end) = (begin + WARMUP, begin + WARMUP + Duration::from_secs_f64(seconds));
                let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    conn.write_all(&request).await?;
                    conn.read_exact(&mut response).await?;
                    if response != request {
                        errors += 1;
                    } else if t >= warm {
                        latencies.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
                    }
                }
                io::Result::Ok((latencies, errors))
            }));
        }
        start.wait().await;
        let (mut all, mut errors) = (Vec::new(), 0u64);
        for task in tasks {
            let (latencies, e) = task.await.map_err(|_| io::Error::other("task panicked"))??;
            all.extend(latencies);
            errors += e;
        }
        io::Result::Ok((all, errors))
    })?;
    let rate = all.len() as f64 / seconds;
    report(all, errors, rate)
}
