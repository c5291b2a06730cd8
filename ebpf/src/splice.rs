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
use nodemesh_common::{Counter, SPLICE_BROKEN, SPLICE_SEQ_KNOWN, SpliceState, TcpSockOffsets};

use crate::{
    counters::count,
    ctx,
    maps::{SPLICE_CTL, SPLICE_SOCKS, SPLICE_STATE},
};

/// `bpf_skb_adjust_room` on an sk_skb removes at most this many bytes per call.
const TRIM_STEP: u32 = 0xfff;
/// Calls allowed for one skb: 160 × 4,095 bytes covers the largest skb loopback's TSO limit
/// allows (524,280 bytes). Retransmissions of two whole segments (130,966 bytes of overlap)
/// have been seen. A larger overlap breaks the stream, and the proxy resets the connection.
const TRIM_STEPS: u32 = 160;

#[stream_verdict]
pub fn nm_splice_verdict(ctx: SkBuffContext) -> u32 {
    let (counter, verdict) = decide(&ctx);
    count(counter);
    verdict
}

#[inline(always)]
fn decide(ctx: &SkBuffContext) -> (Counter, u32) {
    if ctx.len() == 0 {
        // The FIN arrives as an empty skb. Redirected or passed, it breaks the target with
        // EPIPE and truncates data; the proxy learns of EOF from the socket state instead.
        return (Counter::SpliceDroppedEmpty, SK_DROP);
    }
    // SAFETY: the skb context is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let (Some(state), Some(ctl)) = (SPLICE_STATE.get_ptr_mut(&cookie), SPLICE_CTL.get_ptr(&cookie)) else {
        return (Counter::SplicePassedNoState, SK_PASS);
    };
    match sequence(ctx, cookie, state) {
        Sequence::New => {}
        Sequence::Trimmed(counter) => count(counter),
        Sequence::Duplicate => return (Counter::SpliceDroppedDuplicate, SK_DROP),
        Sequence::Broken(why) => count(why),
    }
    // Trimming may have shortened the skb.
    let len = u64::from(ctx.len());
    // SAFETY: non-null map value pointers, valid for this program run.
    let (passed, redirected, flags, peer, ctl) = unsafe {
        (&raw mut (*state).passed, &raw mut (*state).redirected, (*state).flags, (*state).peer_cookie, *ctl)
    };
    if flags & SPLICE_BROKEN != 0 {
        // The proxy sees the flag when it reads these bytes, and resets the connection.
        bump(passed, len);
        return (Counter::SplicePassedBroken, SK_PASS);
    }
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

/// Where an skb's bytes stand against the bytes already delivered.
enum Sequence {
    /// Starts exactly where the last one ended.
    New,
    /// Started with bytes already delivered; they have been cut off. The counter tells a
    /// prefix the proxy read before the hand-off from a retransmitted overlap.
    Trimmed(Counter),
    /// Holds nothing new: drop it (its bytes were delivered).
    Duplicate,
    /// The stream can no longer be kept exact; the state is marked broken.
    Broken(Counter),
}

/// Keeps each direction's byte stream exact against TCP's own sequence numbers.
///
/// TCP queues a retransmitted segment that partly overlaps data it has already received
/// without trimming it: ordinary reads skip the overlap by offset (`copied_seq - seq`), but
/// `tcp_read_skb`, which feeds stream verdicts, hands over whole skbs, so the overlap would be
/// delivered twice. Such retransmissions happen on loopback too under load (a collapsed
/// retransmission after a timeout, its head already received). So the verdict remembers where
/// the last skb ended (starting from the socket's `copied_seq`, which covers every byte the
/// proxy read before the splice began) and cuts any such prefix off the front of the skb.
///
/// An sk_skb's `cb[0]` is the first word of the skb's control block, which on a TCP receive
/// queue is `TCP_SKB_CB(skb)->seq`.
#[inline(always)]
fn sequence(ctx: &SkBuffContext, cookie: u64, state: *mut SpliceState) -> Sequence {
    // SAFETY: a valid context; cb[0] is at a constant offset.
    let seq: u32 = ctx::read(unsafe { &(*ctx.skb.skb).cb[0] });
    let len = ctx.len();
    // SAFETY: `state` is a non-null map value pointer, valid for this program run.
    let (flags_ptr, next_ptr) = unsafe { (&raw mut (*state).flags, &raw mut (*state).next_seq) };
    let flags = load32(flags_ptr);
    let first = flags & SPLICE_SEQ_KNOWN == 0;
    let next = if !first {
        load32(next_ptr)
    } else {
        let Some(copied) = copied_seq(cookie) else {
            store32(flags_ptr, flags | SPLICE_BROKEN);
            return Sequence::Broken(Counter::SpliceBrokenNoSeq);
        };
        copied
    };
    // Serial-number arithmetic: how far `next` is ahead of `seq`.
    let overlap = next.wrapping_sub(seq) as i32;
    if overlap < 0 {
        // Bytes between `next` and `seq` never came past the verdict: the stream has a hole.
        store32(flags_ptr, flags | SPLICE_SEQ_KNOWN | SPLICE_BROKEN);
        return Sequence::Broken(Counter::SpliceBrokenGap);
    }
    let overlap = overlap as u32;
    if overlap >= len {
        store32(flags_ptr, flags | SPLICE_SEQ_KNOWN);
        store32(next_ptr, next);
        return Sequence::Duplicate;
    }
    store32(next_ptr, seq.wrapping_add(len));
    store32(flags_ptr, flags | SPLICE_SEQ_KNOWN);
    if overlap == 0 {
        return Sequence::New;
    }
    let mut left = overlap;
    for _ in 0..TRIM_STEPS {
        if left == 0 {
            break;
        }
        let step = if left < TRIM_STEP { left } else { TRIM_STEP };
        if ctx.adjust_room(-(step as i32), 0, 0).is_err() {
            break;
        }
        left -= step;
    }
    // SAFETY: as above.
    bump(unsafe { &raw mut (*state).trimmed }, u64::from(overlap - left));
    if left != 0 {
        store32(flags_ptr, load32(flags_ptr) | SPLICE_BROKEN);
        return Sequence::Broken(Counter::SpliceBrokenTrimFailed);
    }
    Sequence::Trimmed(if first { Counter::SpliceTrimmedHandOff } else { Counter::SpliceTrimmedOverlap })
}

/// Where `struct tcp_sock` keeps the fields read below, set by the agent at load time from
/// the running kernel's BTF (Rust eBPF has no CO-RE). The map holding it is read-only and
/// frozen, so the verifier knows the offsets and checks each access against the BTF type.
/// Zeros mean unknown; the agent then never splices.
#[unsafe(no_mangle)]
static NM_TCP_SOCK: Global<TcpSockOffsets> =
    Global::new(TcpSockOffsets { bytes_sent: 0, bytes_retrans: 0, copied_seq: 0, _pad: 0 });

/// Bytes the socket with `cookie` (in the splice sockhash) has transmitted, counting each
/// once. (`bpf_tcp_sock`, the stable view, is not allowed in stream verdicts and lacks these
/// fields; `bpf_skc_to_tcp_sock` is allowed.)
#[inline(always)]
fn transmitted(cookie: u64) -> Option<u64> {
    let offsets = NM_TCP_SOCK.load();
    if offsets.bytes_sent == 0 || offsets.bytes_retrans == 0 {
        return None;
    }
    with_tcp_sock(cookie, |tcp| {
        // SAFETY: the offsets come from this kernel's BTF for struct tcp_sock, and the
        // verifier checks both loads against that type.
        let (sent, retrans) = unsafe {
            (
                ptr::read_volatile(tcp.add(offsets.bytes_sent as usize).cast::<u64>()),
                ptr::read_volatile(tcp.add(offsets.bytes_retrans as usize).cast::<u64>()),
            )
        };
        sent.saturating_sub(retrans)
    })
}

/// The sequence number of the next byte the socket with `cookie` will hand to a reader.
#[inline(always)]
fn copied_seq(cookie: u64) -> Option<u32> {
    let offsets = NM_TCP_SOCK.load();
    if offsets.copied_seq == 0 {
        return None;
    }
    // SAFETY: as in `transmitted`.
    with_tcp_sock(cookie, |tcp| unsafe {
        ptr::read_volatile(tcp.add(offsets.copied_seq as usize).cast::<u32>())
    })
}

/// Runs `read` on the `struct tcp_sock` of the socket with `cookie` in the splice sockhash.
#[inline(always)]
fn with_tcp_sock<R>(cookie: u64, read: impl FnOnce(*const u8) -> R) -> Option<R> {
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
    let value = if tcp.is_null() { None } else { Some(read(tcp.cast_const())) };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    value
}

#[inline(always)]
fn load32(field: *mut u32) -> u32 {
    // SAFETY: a valid, aligned map value field.
    unsafe { ptr::read_volatile(field) }
}

/// Writes a per-direction field; the same reasoning as [`bump`] makes it safe unlocked.
#[inline(always)]
fn store32(field: *mut u32, value: u32) {
    // SAFETY: a valid, aligned map value field.
    unsafe { ptr::write_volatile(field, value) };
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
