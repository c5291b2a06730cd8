//! The splice: a stream verdict on the proxy's own two sockets of a connection (never the
//! app's, whose blocking reads would then see spurious EAGAIN), moving each byte that arrives
//! on one to the other's egress inside the kernel, so the proxy leaves the byte path once it
//! has set a connection up.
//!
//! Bytes go up to the proxy instead (SK_PASS) when it must take part: while bytes it was
//! given earlier are not yet forwarded (so redirected bytes never overtake them), when the
//! peer socket has more than `SpliceCtl::inflight_cap` bytes unacknowledged (backpressure:
//! the proxy's blocking write then closes the source's TCP window), or when the redirect
//! fails. Either way every byte is counted, per direction, in `nm_splice_st`.

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
use nodemesh_common::Counter;

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
    let Some(peer_acked) = bytes_acked(peer) else {
        bump(passed, len);
        return (Counter::SplicePassedRedirectFailed, SK_PASS);
    };
    let given = load(redirected) + ctl.forwarded;
    let in_flight = given.saturating_sub(peer_acked.saturating_sub(ctl.peer_base_acked));
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

/// Offset of `bytes_acked` in the kernel's `struct tcp_sock`, set by the agent at load time
/// from the running kernel's BTF (Rust eBPF has no CO-RE). The map holding it is read-only
/// and frozen, so the verifier knows the value and checks the access against the BTF type.
/// Zero means unknown; the agent then never splices.
#[unsafe(no_mangle)]
static NM_TCP_SOCK_BYTES_ACKED: Global<u32> = Global::new(0);

/// `bytes_acked` of the socket with `cookie` in the splice sockhash. (`bpf_tcp_sock`, the
/// stable view, is not allowed in stream verdicts; `bpf_skc_to_tcp_sock` is.)
#[inline(always)]
fn bytes_acked(cookie: u64) -> Option<u64> {
    let offset = NM_TCP_SOCK_BYTES_ACKED.load() as usize;
    if offset == 0 {
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
    let acked = if tcp.is_null() {
        None
    } else {
        // SAFETY: the offset comes from this kernel's BTF for struct tcp_sock, and the
        // verifier checks the load against that type.
        Some(unsafe { ptr::read_volatile(tcp.add(offset).cast::<u64>()) })
    };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    acked
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
