//! `verify`: bulk streams both ways at once whose every byte is checked, for the splice stress
//! test. Each direction carries a pseudo-random stream that either end can compute at any
//! offset, so a duplicated, lost or reordered byte shows as a content mismatch at its exact
//! offset, and a stream that ends early or runs long shows too.
//!
//! Wire protocol, after the 4-byte `VERIFY` head: the client sends `seed`, `up` and `down`
//! (u64, big endian), then `up` bytes of [`stream`]`(seed)`, then FIN. Meanwhile the server
//! sends `down` bytes of [`stream`]`(!seed)`; once the upload has ended it sends a trailer,
//! `received` (u64) and the offset of the first wrong byte (`u64::MAX` if none), then FIN.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use crate::{connect, flag};

pub const VERIFY: u32 = u32::MAX - 1;
const CHUNK: usize = 256 * 1024;
const NONE: u64 = u64::MAX;

/// The stream's 8-byte word at `index` (splitmix64 of the seed and the index), so any byte
/// can be computed on its own.
fn word(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the stream's bytes from `offset` on.
fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let bytes = word(seed, pos / 8).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[start..start + n]);
        i += n;
        pos += n as u64;
    }
}

/// Writes `len` bytes of the stream. Writes vary in size from one byte to [`CHUNK`]
/// (log-uniform): small writes leave small skbs in TCP's queues, which a retransmission may
/// collapse with the next ones, and which come back partly overlapping what the receiver has.
fn send(conn: &mut TcpStream, seed: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0;
    let mut writes = 0u64;
    while sent < len {
        writes += 1;
        let r = word(!seed ^ 0x5752_4954_4553, writes);
        let size = ((r & 0x3ffff) >> (r >> 60)).clamp(1, CHUNK as u64);
        let n = (len - sent).min(size) as usize;
        fill(seed, sent, &mut buf[..n]);
        conn.write_all(&buf[..n])?;
        sent += n as u64;
    }
    Ok(())
}

/// Reads `len` bytes and checks them against the stream: the offset of the first wrong byte,
/// if any. Stops early (with that offset) at EOF.
fn check(conn: &mut TcpStream, seed: u64, len: u64) -> io::Result<(u64, u64)> {
    let (mut got, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut received = 0u64;
    let mut first_bad = NONE;
    while received < len {
        let room = (len - received).min(CHUNK as u64) as usize;
        let n = conn.read(&mut got[..room])?;
        if n == 0 {
            return Ok((received, first_bad.min(received)));
        }
        if first_bad == NONE {
            fill(seed, received, &mut want[..n]);
            if let Some(i) = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
                first_bad = received + i as u64;
            }
        }
        received += n as u64;
    }
    Ok((received, first_bad))
}

fn read_u64(conn: &mut TcpStream) -> io::Result<u64> {
    let mut b = [0u8; 8];
    conn.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Whether the peer closed exactly here (no byte beyond what was announced).
fn at_eof(conn: &mut TcpStream) -> io::Result<bool> {
    let mut extra = [0u8; 1];
    Ok(conn.read(&mut extra)? == 0)
}

/// The server's side, after the `VERIFY` head.
pub fn serve(mut conn: TcpStream) -> io::Result<()> {
    let (seed, up, down) = (read_u64(&mut conn)?, read_u64(&mut conn)?, read_u64(&mut conn)?);
    let mut writer = conn.try_clone()?;
    let sender = thread::spawn(move || send(&mut writer, !seed, down).map(|()| writer));
    let (received, mut first_bad) = check(&mut conn, seed, up)?;
    if received == up && !at_eof(&mut conn)? {
        // More than announced: the first surplus byte is wrong.
        first_bad = first_bad.min(up);
    }
    let mut writer = sender.join().map_err(|_| io::Error::other("sender panicked"))??;
    writer.write_all(&received.to_be_bytes())?;
    writer.write_all(&first_bad.to_be_bytes())?;
    writer.shutdown(Shutdown::Write)
}

/// One connection from the client's side; an error names what went wrong where.
fn one(target: SocketAddr, seed: u64, bytes: u64) -> io::Result<()> {
    let mut conn = connect(target, VERIFY)?;
    let mut head = Vec::with_capacity(24);
    for v in [seed, bytes, bytes] {
        head.extend_from_slice(&v.to_be_bytes());
    }
    conn.write_all(&head)?;
    let mut writer = conn.try_clone()?;
    let sender = thread::spawn(move || {
        send(&mut writer, seed, bytes)?;
        writer.shutdown(Shutdown::Write)
    });
    let (received, first_bad) = check(&mut conn, !seed, bytes)?;
    sender.join().map_err(|_| io::Error::other("sender panicked"))??;
    let fail = |m: String| Err(io::Error::other(format!("connection {seed:#x}: {m}")));
    if first_bad != NONE {
        return fail(format!("download byte {first_bad} differs from what the server sent"));
    }
    if received != bytes {
        return fail(format!("download ended after {received} of {bytes} bytes"));
    }
    let (server_received, server_first_bad) = (read_u64(&mut conn)?, read_u64(&mut conn)?);
    if server_first_bad != NONE {
        return fail(format!("upload byte {server_first_bad} arrived wrong at the server"));
    }
    if server_received != bytes {
        return fail(format!("the server received {server_received} of {bytes} upload bytes"));
    }
    if !at_eof(&mut conn)? {
        return fail("bytes after the server's trailer".into());
    }
    Ok(())
}

/// `verify --target A --conns C --bytes B [--seed S]`: C connections at once, each carrying B
/// checked bytes each way.
pub fn run(args: &[String]) -> io::Result<()> {
    let target: SocketAddr = flag(args, "--target", None)?;
    let conns: u64 = flag(args, "--conns", Some(4))?;
    let bytes: u64 = flag(args, "--bytes", Some(64 << 20))?;
    let seed: u64 = flag(args, "--seed", Some(0x6e6d_7665_7269_6679))?;
    let begin = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let seed = word(seed, i);
            thread::spawn(move || one(target, seed, bytes))
        })
        .collect();
    let mut failures = Vec::new();
    for w in workers {
        if let Err(e) = w.join().map_err(|_| io::Error::other("worker panicked"))? {
            failures.push(e.to_string());
        }
    }
    let elapsed = begin.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    let total = 2 * conns * bytes;
    println!(
        "{{\"conns\":{conns},\"bytes_checked\":{total},\"seconds\":{elapsed:.3},\"gbps\":{:.3},\"failures\":{}}}",
        total as f64 * 8.0 / elapsed / 1e9,
        failures.len()
    );
    if failures.is_empty() { Ok(()) } else { Err(io::Error::other(failures.join("; "))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_offset_gives_the_same_bytes() {
        let mut whole = vec![0u8; 100];
        fill(7, 0, &mut whole);
        for start in [0usize, 1, 7, 8, 13, 64] {
            let mut part = vec![0u8; 100 - start];
            fill(7, start as u64, &mut part);
            assert_eq!(part, whole[start..]);
        }
        let mut other = vec![0u8; 100];
        fill(!7, 0, &mut other);
        assert_ne!(other, whole);
    }

    #[test]
    fn a_round_trip_over_loopback_checks_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let target = listener.local_addr().expect("addr");
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut head = [0u8; 4];
            conn.read_exact(&mut head).expect("head");
            assert_eq!(u32::from_be_bytes(head), VERIFY);
            serve(conn).expect("serve");
        });
        one(target, 42, 3_000_001).expect("verified");
        server.join().expect("server");
    }
}
