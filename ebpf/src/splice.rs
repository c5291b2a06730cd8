//! The splice: a stream verdict on the proxy's own two sockets of a connection (never the
//! app's, whose blocking reads would then see spurious EAGAIN), moving each byte that arrives
//! on one to the other's egress inside the kernel, so the proxy leaves the byte path once it
//! has set a connection up.
//!
//! Bytes go up to the proxy instead (SK_PASS) when it must take part: while bytes it was
//! given earlier are not yet forwarded (so redirected bytes never overtake them), when the
//! peer socket holds more than `SpliceCtl::inflight_cap` bytes it has not transmitted
//! (backpressure: the proxy's blocking write then closes the source's TCP window), or when
//! the redirect fails. Either way every byte is counted, per direction, in `nm_splice_st`.

use core::ptr;

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{
        bpf_sock,
        sk_action::{SK_DROP, SK_PASS},
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_map_lookup_elem, bpf_sk_release, bpf_skc_to_tcp_sock},
    macros::stream_verdict,
    programs::SkBuffContext,
};
use nodemesh_common::{Counter, TcpSockOffsets};

use crate::{
    counters::count,
    maps::{SPLICE_CTL, SPLICE_SOCKS, SPLICE_STATE},
};

#[stream_verdict]
pub fn nm_splice_verdict(ctx: SkBuffContext) -> u32 {
    let (counter, verdict) = decide(&ctx);
    count(counter);
    verdict
}

#[inline(always)]
fn decide(ctx: &SkBuffContext) -> (Counter, u32) {
    let len = u64::from(ctx.len());
    if len == 0 {
        // The FIN arrives as an empty skb. Redirected or passed, it breaks the target with
        // EPIPE and truncates data; the proxy learns of EOF from the socket state instead.
        return (Counter::SpliceDroppedEmpty, SK_DROP);
    }
    // SAFETY: the skb context is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let (Some(state), Some(ctl)) = (SPLICE_STATE.get_ptr_mut(&cookie), SPLICE_CTL.get_ptr(&cookie)) else {
        return (Counter::SplicePassedNoState, SK_PASS);
    };
    // SAFETY: non-null map value pointers, valid for this program run.
    let (passed, redirected, peer, ctl) =
        unsafe { (&raw mut (*state).passed, &raw mut (*state).redirected, (*state).peer_cookie, *ctl) };
    if load(passed) != ctl.forwarded {
        bump(passed, len);
        return (Counter::SplicePassedCatchUp, SK_PASS);
    }
    let Some(peer_transmitted) = transmitted(peer) else {
        bump(passed, len);
        return (Counter::SplicePassedRedirectFailed, SK_PASS);
    };
    let given = load(redirected) + ctl.forwarded;
    let in_flight = given.saturating_sub(peer_transmitted.saturating_sub(ctl.peer_base_sent));
    if in_flight + len > ctl.inflight_cap {
        bump(passed, len);
        return (Counter::SplicePassedBackpressure, SK_PASS);
    }
    // SK_PASS from the helper means "redirect"; on a miss it returns SK_DROP, which must not
    // be returned as is: the bytes are already acknowledged to the sender.
    if SPLICE_SOCKS.redirect_skb(ctx, peer, 0) == i64::from(SK_PASS) {
        bump(redirected, len);
        (Counter::SpliceRedirected, SK_PASS)
    } else {
        bump(passed, len);
        (Counter::SplicePassedRedirectFailed, SK_PASS)
    }
}

/// Where `struct tcp_sock` keeps the fields read below, set by the agent at load time from
/// the running kernel's BTF (Rust eBPF has no CO-RE). The map holding it is read-only and
/// frozen, so the verifier knows the offsets and checks each access against the BTF type.
/// Zeros mean unknown; the agent then never splices.
#[unsafe(no_mangle)]
static NM_TCP_SOCK: Global<TcpSockOffsets> = Global::new(TcpSockOffsets { bytes_sent: 0, bytes_retrans: 0 });

/// Bytes the socket with `cookie` (in the splice sockhash) has transmitted, counting each
/// once. (`bpf_tcp_sock`, the stable view, is not allowed in stream verdicts and lacks these
/// fields; `bpf_skc_to_tcp_sock` is allowed.)
#[inline(always)]
fn transmitted(cookie: u64) -> Option<u64> {
    let offsets = NM_TCP_SOCK.load();
    if offsets.bytes_sent == 0 || offsets.bytes_retrans == 0 {
        return None;
    }
    // SAFETY: our own map definition; a sockhash lookup takes a reference on the socket,
    // released below on every path.
    let sk = unsafe {
        bpf_map_lookup_elem(ptr::from_ref(&SPLICE_SOCKS).cast_mut().cast(), ptr::from_ref(&cookie).cast())
    }
    .cast::<bpf_sock>();
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is a referenced socket; the helper checks it is a TCP socket.
    let tcp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) }.cast::<u8>();
    let sent = if tcp.is_null() {
        None
    } else {
        // SAFETY: the offsets come from this kernel's BTF for struct tcp_sock, and the
        // verifier checks both loads against that type.
        let (sent, retrans) = unsafe {
            (
                ptr::read_volatile(tcp.add(offsets.bytes_sent as usize).cast::<u64>()),
                ptr::read_volatile(tcp.add(offsets.bytes_retrans as usize).cast::<u64>()),
            )
        };
        Some(sent.saturating_sub(retrans))
    };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    sent
}

#[inline(always)]
fn load(counter: *mut u64) -> u64 {
    // SAFETY: a valid, aligned map value field.
    unsafe { ptr::read_volatile(counter) }
}

/// Adds to a per-direction counter. Not atomic, and need not be: the verdict for one socket
/// runs under that socket's lock (softirq and process context exclude each other), each
/// direction has its own entry, and the agent only reads. Aligned 8-byte stores do not tear.
#[inline(always)]
fn bump(counter: *mut u64, len: u64) {
    // SAFETY: as in `load`.
    unsafe { ptr::write_volatile(counter, ptr::read_volatile(counter) + len) };
}
