//! The kernel's own byte counts of a TCP socket, which the proxy checks its counts against
//! (the splice's drain and audit, and the copy path's audit).

use std::{io, os::fd::AsRawFd};

/// One `TCP_INFO` read.
pub fn tcp_info(socket: &impl AsRawFd) -> io::Result<libc::tcp_info> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a tcp_info-sized out buffer on a valid TCP socket.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getsockopt filled (a prefix of) the zeroed struct.
    Ok(unsafe { info.assume_init() })
}

/// Bytes ever written into a socket's send queue: sent (without retransmissions) plus not yet
/// sent. Cheap (one `TCP_INFO`), but a retransmission can make it lag; see [`queued`].
pub fn handed(info: &libc::tcp_info) -> u64 {
    info.tcpi_bytes_sent.saturating_sub(info.tcpi_bytes_retrans) + u64::from(info.tcpi_notsent_bytes)
}

/// Bytes ever queued on a socket's send side, exactly (unlike `handed`, retransmissions do
/// not enter into it): acknowledged (`bytes_acked`) plus still queued (SIOCOUTQ, sent and
/// unacknowledged or unsent). The two are read in separate calls, so an acknowledgement in
/// between would skew the sum; it is read until `bytes_acked` holds still around SIOCOUTQ.
/// `None` while acknowledgements keep arriving. Includes the SYN where the socket counts it:
/// only differences are meaningful.
pub fn queued(socket: &impl AsRawFd) -> Option<u64> {
    for _ in 0..8 {
        let before = tcp_info(socket).ok()?.tcpi_bytes_acked;
        let mut outq: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut outq) } != 0 {
            return None;
        }
        if tcp_info(socket).ok()?.tcpi_bytes_acked == before {
            return Some(before + u64::try_from(outq).ok()?);
        }
    }
    None
}

/// Bytes the socket has received in order, its FIN not counted (`bytes_received` counts the
/// FIN's sequence number once it has arrived). Only meaningful once the reader saw EOF.
pub fn received_before_fin(socket: &impl AsRawFd) -> io::Result<u64> {
    Ok(tcp_info(socket)?.tcpi_bytes_received.saturating_sub(1))
}

/// Best effort: a failure leaves the kernel's default, which is slower but correct.
pub fn set_int_option(socket: &impl AsRawFd, level: libc::c_int, option: libc::c_int, value: libc::c_int) {
    // SAFETY: an int option of the right size on a valid socket.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            std::ptr::from_ref(&value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    #[test]
    fn counts_match_a_plain_transfer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let base = queued(&client).expect("queued at start");
        client.write_all(&[7u8; 100_000]).expect("write");
        client.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut got = Vec::new();
        server.read_to_end(&mut got).expect("read");
        assert_eq!(got.len(), 100_000);
        assert_eq!(received_before_fin(&server).expect("info"), 100_000);
        // The FIN takes a sequence number on the sender's side too.
        let sent = queued(&client).expect("queued at end") - base;
        assert!(sent == 100_000 || sent == 100_001, "{sent}");
    }
}
