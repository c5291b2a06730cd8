//! `http-server`: an HTTP/1.1 and HTTP/2 (prior knowledge, h2c) server for the HTTP tests
//! and benchmark, and `http`, its load client, both on hyper (no code of the proxy's).
//!
//! `http --target A --conns C --seconds D [--path P] [--threads N]`: C keep-alive HTTP/1.1
//! connections, one GET in flight on each, for D seconds after a warm-up; prints the rate,
//! latency percentiles and errors (any status but 200, or a failed exchange) as `rr` does.
//!
//! `http-server --port P --name N [--delay-ms D] [--fail-every K]` answers every request
//! 200 with `N <method> <path> <version> <body bytes>` and, one per line, the request's
//! headers (`h <name>: <value>`), and the header `x-served-by: N`. `--fail-every K`
//! answers every K-th request 503 instead; `--delay-ms` waits before answering, and a
//! request whose client went away meanwhile is counted as cancelled. `GET /stats` answers
//! `{"requests": .., "completed": .., "cancelled": ..}`; `?status=NNN` asks for that status.

use std::{
    convert::Infallible,
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

use crate::{WARMUP, flag, report};

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
}

struct Server {
    name: String,
    delay: Duration,
    fail_every: u64,
    counts: Counts,
}

pub fn server(args: &[String]) -> io::Result<()> {
    let port: u16 = flag(args, "--port", None)?;
    let server = Arc::new(Server {
        name: flag(args, "--name", Some("server".to_owned()))?,
        delay: Duration::from_millis(flag(args, "--delay-ms", Some(0))?),
        fail_every: flag(args, "--fail-every", Some(0))?,
        counts: Counts::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("::", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let server = Arc::clone(&server);
                    async move { Ok::<_, Infallible>(answer(&server, request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Counts a request as cancelled unless it was answered before being dropped.
struct Pending<'a> {
    counts: &'a Counts,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let counter = if self.done { &self.counts.completed } else { &self.counts.cancelled };
        counter.fetch_add(1, Relaxed);
    }
}

async fn answer(server: &Server, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let counts = &server.counts;
    if request.uri().path() == "/stats" {
        let body = format!(
            "{{\"requests\": {}, \"completed\": {}, \"cancelled\": {}}}\n",
            counts.requests.load(Relaxed),
            counts.completed.load(Relaxed),
            counts.cancelled.load(Relaxed)
        );
        return Response::new(Full::new(Bytes::from(body)));
    }
    let n = counts.requests.fetch_add(1, Relaxed) + 1;
    let mut pending = Pending { counts, done: false };
    if !server.delay.is_zero() {
        tokio::time::sleep(server.delay).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let mut text = format!("{} {} {} {:?} {bytes}\n", server.name, parts.method, parts.uri, parts.version);
    for (name, value) in &parts.headers {
        text.push_str(&format!("h {name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    let asked = parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("status=")))
        .and_then(|s| s.parse::<u16>().ok());
    let failing = server.fail_every > 0 && n.is_multiple_of(server.fail_every);
    let status = if failing { 503 } else { asked.unwrap_or(200) };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(value) = server.name.parse() {
        response.headers_mut().insert("x-served-by", value);
    }
    pending.done = true;
    response
}

pub fn load(args: &[String]) -> io::Result<()> {
    let target: std::net::SocketAddr = flag(args, "--target", None)?;
    let conns: usize = flag(args, "--conns", Some(1))?;
    let seconds: f64 = flag(args, "--seconds", Some(3.0))?;
    let path: String = flag(args, "--path", Some("/".to_owned()))?;
    let threads: usize =
        flag(args, "--threads", Some(std::thread::available_parallelism().map_or(2, |n| n.get())))?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
    let (latencies, errors) = runtime.block_on(async move {
        let begin = std::time::Instant::now();
        let (warm, end) = (begin + WARMUP, begin + WARMUP + Duration::from_secs_f64(seconds));
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let path = path.clone();
            tasks.push(tokio::spawn(async move { one_connection(target, &path, warm, end).await }));
        }
        let (mut all, mut errors) = (Vec::new(), 0u64);
        for task in tasks {
            match task.await {
                Ok(Ok((latencies, failed))) => {
                    all.extend(latencies);
                    errors += failed;
                }
                _ => errors += 1,
            }
        }
        (all, errors)
    });
    let rate = latencies.len() as f64 / seconds;
    report(latencies, errors, rate)
}

/// Requests one after another on one connection until `end`; the latencies (ns) of those
/// sent after `warm`, and how many failed.
async fn one_connection(
    target: std::net::SocketAddr,
    path: &str,
    warm: std::time::Instant,
    end: std::time::Instant,
) -> io::Result<(Vec<u32>, u64)> {
    let stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(io::Error::other)?;
    tokio::spawn(conn);
    let mut latencies = Vec::new();
    let host = target.to_string();
    loop {
        let started = std::time::Instant::now();
        if started >= end {
            return Ok((latencies, 0));
        }
        let request = Request::get(path)
            .header("host", &host)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(io::Error::other)?;
        if sender.ready().await.is_err() {
            return Ok((latencies, 1));
        }
        let ok = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                response.into_body().collect().await.is_ok() && status == hyper::StatusCode::OK
            }
            Err(_) => false,
        };
        if !ok {
            // A failure counts whenever it happens: one in the warm-up is no less a failure.
            return Ok((latencies, 1));
        }
        if started >= warm {
            latencies.push(started.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
        }
    }
}
