//! `nm-loadgen`: load for the benchmark, independent of the proxy under test (it shares no
//! code with it; `--async` runs on tokio, the blocking modes on std alone).
//!
//! Wire protocol: the client's first 4 bytes (big endian) say what the connection does.
//! - `n` in 1..2^31: request/response; the server answers every `n`-byte request with `n` bytes.
//! - `STREAM` (u32::MAX): the server discards everything until EOF, then answers the byte
//!   count (u64, big endian).
//! - `VERIFY` (u32::MAX - 1): checked bulk streams both ways (`verify.rs`).
//!
//! Commands print one JSON line:
//! - `server --port P [--delay-us U] [--async [--threads N]]`: `--delay-us` waits that long
//!   before each response (a slow endpoint; blocking server only).
//! - `rr --target A --size S --conns C --seconds D [--async [--threads N]]`: C persistent
//!   connections, one request in flight each; requests per second and latency percentiles.
//!   Blocking: one thread per connection. `--async`: tasks on a tokio runtime of N worker
//!   threads (default: one per CPU), as event-driven clients are (`event.rs`).
//! - `crr --target A --size S --conns C --seconds D`: connect, one request, close, again.
//!   `--count N` instead stops after N connections in all (however long they take).
//! - `stream --target A --seconds D`: one connection sending as fast as it can.
//! - `http-server --port P --name N ...`: HTTP/1.1 and h2c, for the HTTP tests; `http --target
//!   A --conns C --seconds D`: keep-alive HTTP/1.1 load against it (`http.rs`).
//! - `verify --target A --conns C --bytes B`: C connections each carrying B bytes both ways at
//!   once, every byte checked (the splice stress test; see `verify.rs`).

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

mod event;
mod http;
mod verify;

const STREAM: u32 = u32::MAX;
const SERVER_THREADS: usize = 160;
const WARMUP: Duration = Duration::from_millis(200);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") if is_async(&args) => event::server(&args[1..]),
        Some("server") => server(&args[1..]),
        Some("rr") if is_async(&args) => event::rr(&args[1..]),
        Some("rr") => rr(&args[1..], false),
        Some("crr") => rr(&args[1..], true),
        Some("stream") => stream(&args[1..]),
        Some("verify") => verify::run(&args[1..]),
        Some("http-server") => http::server(&args[1..]),
        Some("http") => http::load(&args[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: nm-loadgen server|rr|crr|stream|verify|http-server|http ...",
        )),
    };
    if let Err(e) = result {
        eprintln!("nm-loadgen: {e}");
        std::process::exit(1);
    }
}

fn is_async(args: &[String]) -> bool {
    args.iter().any(|a| a == "--async")
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> io::Result<T> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid(format!("{name} needs a valid value"))),
        None => default.ok_or_else(|| invalid(format!("{name} is required"))),
    }
}

fn server(args: &[String]) -> io::Result<()> {
    let port: u16 = flag(args, "--port", None)?;
    let delay = Duration::from_micros(flag(args, "--delay-us", Some(0))?);
    let listener = TcpListener::bind(("::", port))?;
    let mut workers = Vec::new();
    for _ in 0..SERVER_THREADS {
        let listener = listener.try_clone()?;
        workers.push(thread::spawn(move || {
            loop {
                if let Ok((conn, _)) = listener.accept() {
                    let _ = serve(conn, delay);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn serve(mut conn: TcpStream, delay: Duration) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut head = [0u8; 4];
    conn.read_exact(&mut head)?;
    let size = u32::from_be_bytes(head);
    if size == verify::VERIFY {
        return verify::serve(conn);
    }
    if size == STREAM {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf)? {
                0 => break,
                n => total += n as u64,
            }
        }
        return conn.write_all(&total.to_be_bytes());
    }
    let mut buf = vec![0u8; size as usize];
    loop {
        match read_full(&mut conn, &mut buf)? {
            false => return Ok(()),
            true => {
                if !delay.is_zero() {
                    thread::sleep(delay);
                }
                conn.write_all(&buf)?
            }
        }
    }
}

/// Fills `buf`; false on a clean EOF before the first byte.
fn read_full(conn: &mut TcpStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(true)
}

fn connect(target: SocketAddr, size: u32) -> io::Result<TcpStream> {
    let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    conn.set_nodelay(true)?;
    conn.write_all(&size.to_be_bytes())?;
    Ok(conn)
}

fn exchange(conn: &mut TcpStream, request: &[u8], response: &mut [u8]) -> io::Result<()> {
    conn.write_all(request)?;
    if read_full(conn, response)? { Ok(()) } else { Err(io::ErrorKind::UnexpectedEof.into()) }
}

/// `rr` (persistent connections) and `crr` (a new connection per request).
fn rr(args: &[String], new_connection_each: bool) -> io::Result<()> {
    let target: SocketAddr = flag(args, "--target", None)?;
    let size: u32 = flag(args, "--size", Some(1024))?;
    let conns: usize = flag(args, "--conns", Some(1))?;
    let count: u64 = flag(args, "--count", Some(0))?;
    // With a count, each worker makes its share of the connections and time does not limit.
    let seconds: f64 = if count > 0 { 3600.0 } else { flag(args, "--seconds", Some(3.0))? };
    let quota = count.div_ceil(conns as u64);
    let started = Instant::now();
    let start = Arc::new(Barrier::new(conns + 1));
    let mut workers = Vec::new();
    for i in 0..conns {
        let start = Arc::clone(&start);
        workers.push(thread::spawn(move || -> io::Result<(Vec<u32>, u64)> {
            let request: Vec<u8> = (0..size).map(|b| (b as usize + i) as u8).collect();
            let mut response = vec![0u8; size as usize];
            let mut conn = if new_connection_each { None } else { Some(connect(target, size)?) };
            start.wait();
            let begin = Instant::now();
            let (warm, end) = (begin + WARMUP, begin + WARMUP + Duration::from_secs_f64(seconds));
            let mut latencies = Vec::with_capacity(1 << 16);
            let (mut errors, mut done) = (0u64, 0u64);
            loop {
                let t = Instant::now();
                if t >= end || (quota > 0 && done >= quota) {
                    break;
                }
                done += 1;
                let outcome = match conn.as_mut() {
                    Some(c) => exchange(c, &request, &mut response),
                    None => connect(target, size).and_then(|mut c| {
                        exchange(&mut c, &request, &mut response)?;
                        c.shutdown(Shutdown::Write)?;
                        // Wait for the server's FIN, so each connection is whole.
                        let mut rest = [0u8; 1];
                        let _ = c.read(&mut rest)?;
                        Ok(())
                    }),
                };
                match outcome {
                    Ok(()) if response != request => errors += 1,
                    Ok(()) if t >= warm => {
                        latencies.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32)
                    }
                    Ok(()) => {}
                    Err(e) if !new_connection_each => return Err(e),
                    Err(_) => errors += 1,
                }
            }
            Ok((latencies, errors))
        }));
    }
    start.wait();
    let (mut all, mut errors) = (Vec::new(), 0u64);
    for w in workers {
        let (latencies, e) = w.join().map_err(|_| io::Error::other("worker panicked"))??;
        all.extend(latencies);
        errors += e;
    }
    let rate = if count > 0 {
        all.len() as f64 / started.elapsed().as_secs_f64()
    } else {
        all.len() as f64 / seconds
    };
    report(all, errors, rate)
}

/// Prints the JSON line of a request/response run: its rate, latency percentiles, errors.
fn report(mut all: Vec<u32>, errors: u64, rate: f64) -> io::Result<()> {
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0)
    };
    println!(
        "{{\"count\":{},\"rate\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"errors\":{errors}}}",
        all.len(),
        rate,
        f64::from(pct(0.50)) / 1000.0,
        f64::from(pct(0.99)) / 1000.0,
    );
    if errors > 0 { Err(io::Error::other(format!("{errors} bad or failed exchanges"))) } else { Ok(()) }
}

fn stream(args: &[String]) -> io::Result<()> {
    let target: SocketAddr = flag(args, "--target", None)?;
    let seconds: f64 = flag(args, "--seconds", Some(3.0))?;
    let mut conn = connect(target, STREAM)?;
    let chunk = vec![0x5au8; 128 * 1024];
    let begin = Instant::now();
    let end = begin + Duration::from_secs_f64(seconds);
    let mut sent = 0u64;
    while Instant::now() < end {
        conn.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    conn.read_exact(&mut count)?;
    // Until the server has counted the last byte.
    let elapsed = begin.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(count);
    if received != sent {
        return Err(io::Error::other(format!("sent {sent} bytes, the server counted {received}")));
    }
    println!(
        "{{\"bytes\":{received},\"seconds\":{elapsed:.3},\"gbps\":{:.3}}}",
        received as f64 * 8.0 / elapsed / 1e9
    );
    Ok(())
}
