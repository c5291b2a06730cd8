//! Outbound capture: cgroup connect4/connect6 on each enrolled pod's cgroup.
//!
//! A TCP connect to anything but loopback or an excluded port is rewritten to the agent's
//! outbound listener on loopback inside the pod's own network namespace, and the original
//! destination is kept in the socket's local storage (sock_ops then publishes it for the
//! proxy, getpeername restores it for the app). Before rewriting we look the listener up: if
//! the agent is gone or not ready for this pod, the connect goes direct (fail-open). The
//! listener must also carry the agent's mark (`nm_listen_mark`): any other process can listen
//! on 127.0.0.1:15001 inside a pod, and must never receive the pod's outbound traffic.

use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock_addr, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as Tuple6,
    },
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_release, bpf_sk_storage_get},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use nodemesh_common::{
    Counter, SockAddr,
    addr::{self, LOOPBACK_V6},
};

use crate::{
    counters::count,
    ctx,
    maps::{CONFIG, EXCLUDED_OUTBOUND, LISTENER_MARK, SOCKET_DST},
    ports::is_excluded,
};

/// Verdict of a cgroup sock_addr program that lets the syscall proceed.
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const LOOPBACK_V4: u32 = addr::v4([127, 0, 0, 1]);

#[cgroup_sock_addr(connect4)]
pub fn nm_connect4(ctx: SockAddrContext) -> i32 {
    count(try_connect4(&ctx).unwrap_or_else(|reason| reason));
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn nm_connect6(ctx: SockAddrContext) -> i32 {
    count(try_connect6(&ctx).unwrap_or_else(|reason| reason));
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn nm_getpeername4(ctx: SockAddrContext) -> i32 {
    if restore_peer4(&ctx) {
        count(Counter::GetPeerNameRestored);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn nm_getpeername6(ctx: SockAddrContext) -> i32 {
    if restore_peer6(&ctx) {
        count(Counter::GetPeerNameRestored);
    }
    ALLOW
}

/// `Ok` and `Err` both carry the counter to bump; `Err` means the connect was left alone.
type Decision = Result<Counter, Counter>;

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Decision {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    if ctx::read(&sa.type_) != SOCK_STREAM || ctx::read(&sa.protocol) != IPPROTO_TCP {
        return Err(Counter::ConnectSkipNotTcp);
    }
    let dst = ctx::read(&sa.user_ip4);
    if addr::is_loopback_v4(dst) {
        return Err(Counter::ConnectSkipLoopback);
    }
    let port = addr::port_from_be_low(ctx::read(&sa.user_port));
    let proxy_port = outbound_port(port)?;

    let mut tuple = Tuple4 { saddr: 0, daddr: LOOPBACK_V4, sport: 0, dport: proxy_port.to_be() };
    listener_exists(ctx, ptr::from_mut(&mut tuple).cast(), size_of::<Tuple4>())?;
    remember(sa, SockAddr { addr: addr::from_v4(dst), port, _pad: [0; 2] })?;

    sa.user_ip4 = LOOPBACK_V4;
    sa.user_port = addr::port_to_be_low(proxy_port);
    Ok(Counter::ConnectRedirected)
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext) -> Decision {
    // SAFETY: as in try_connect4.
    let sa = unsafe { &mut *ctx.sock_addr };
    if ctx::read(&sa.type_) != SOCK_STREAM || ctx::read(&sa.protocol) != IPPROTO_TCP {
        return Err(Counter::ConnectSkipNotTcp);
    }
    let dst = ctx::read_words(&sa.user_ip6);
    if addr::is_loopback(&dst) {
        return Err(Counter::ConnectSkipLoopback);
    }
    let port = addr::port_from_be_low(ctx::read(&sa.user_port));
    let proxy_port = outbound_port(port)?;

    // A dual-stack socket connecting to ::ffff:a.b.c.d speaks IPv4 on the wire, so it must
    // land on the IPv4 listener.
    let proxy_addr = if addr::is_v4_mapped(&dst) {
        let mut tuple = Tuple4 { saddr: 0, daddr: LOOPBACK_V4, sport: 0, dport: proxy_port.to_be() };
        listener_exists(ctx, ptr::from_mut(&mut tuple).cast(), size_of::<Tuple4>())?;
        addr::from_v4(LOOPBACK_V4)
    } else {
        let mut tuple = Tuple6 { saddr: [0; 4], daddr: LOOPBACK_V6, sport: 0, dport: proxy_port.to_be() };
        listener_exists(ctx, ptr::from_mut(&mut tuple).cast(), size_of::<Tuple6>())?;
        LOOPBACK_V6
    };
    remember(sa, SockAddr { addr: dst, port, _pad: [0; 2] })?;

    sa.user_ip6[0] = proxy_addr[0];
    sa.user_ip6[1] = proxy_addr[1];
    sa.user_ip6[2] = proxy_addr[2];
    sa.user_ip6[3] = proxy_addr[3];
    sa.user_port = addr::port_to_be_low(proxy_port);
    Ok(Counter::ConnectRedirected)
}

/// The outbound listener's port, unless `port` must not be intercepted.
#[inline(always)]
fn outbound_port(port: u16) -> Result<u16, Counter> {
    let config = CONFIG.get(0).ok_or(Counter::ConnectFailOpenNoConfig)?;
    if config.outbound_port == 0 {
        return Err(Counter::ConnectFailOpenNoConfig);
    }
    if is_excluded(&EXCLUDED_OUTBOUND, port) {
        return Err(Counter::ConnectSkipExcludedPort);
    }
    Ok(config.outbound_port)
}

/// Fail-open check: is the agent's listener there, in this socket's network namespace? The
/// listener dies with the agent, so a killed agent stops interception at once. A listener
/// without the agent's mark belongs to some other process: the connect goes direct.
#[inline(always)]
fn listener_exists(ctx: &SockAddrContext, tuple: *mut bpf_sock_tuple, len: usize) -> Result<(), Counter> {
    // SAFETY: `tuple` points at a live tuple of `len` bytes on our stack.
    let sk =
        unsafe { bpf_sk_lookup_tcp(ctx.sock_addr.cast(), tuple, len as u32, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        return Err(Counter::ConnectFailOpenNoListener);
    }
    // SAFETY: our own map; `sk` is a referenced socket; without the create flag the helper
    // only looks up.
    let mark = unsafe {
        bpf_sk_storage_get(ptr::from_ref(&LISTENER_MARK).cast_mut().cast(), sk.cast(), ptr::null_mut(), 0)
    };
    // SAFETY: `sk` is the non-null reference the lookup took; it must be released.
    unsafe { bpf_sk_release(sk.cast()) };
    if mark.is_null() {
        return Err(Counter::ConnectFailOpenForeignListener);
    }
    Ok(())
}

/// Stores the original destination on the socket.
#[inline(always)]
fn remember(sa: &bpf_sock_addr, dst: SockAddr) -> Result<(), Counter> {
    // SAFETY: `sk` of a sock_addr context is the socket being connected.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    // SAFETY: the map pointer is our own map definition; the kernel validates `sk`.
    let slot = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&SOCKET_DST).cast_mut().cast(),
            sk.cast(),
            ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<SockAddr>();
    if slot.is_null() {
        return Err(Counter::ConnectFailOpenNoStorage);
    }
    // SAFETY: a non-null storage pointer points at a SockAddr-sized value of this socket.
    unsafe { *slot = dst };
    Ok(())
}

/// The destination connect4/connect6 stored on this socket, if it was intercepted.
#[inline(always)]
fn stored_dst(sa: &bpf_sock_addr) -> Option<SockAddr> {
    // SAFETY: as in `remember`; without the create flag the helper only looks up.
    let slot = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&SOCKET_DST).cast_mut().cast(),
            sa.__bindgen_anon_1.sk.cast(),
            ptr::null_mut(),
            0,
        )
    }
    .cast::<SockAddr>();
    // SAFETY: non-null means a valid SockAddr.
    (!slot.is_null()).then(|| unsafe { *slot })
}

/// getpeername on an intercepted socket reports the destination the app asked for, not the
/// proxy's loopback listener.
#[inline(always)]
fn restore_peer4(ctx: &SockAddrContext) -> bool {
    // SAFETY: valid context, as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    if ctx::read(&sa.user_ip4) != LOOPBACK_V4 {
        return false;
    }
    match stored_dst(sa) {
        Some(dst) if addr::is_v4_mapped(&dst.addr) => {
            sa.user_ip4 = dst.addr[3];
            sa.user_port = addr::port_to_be_low(dst.port);
            true
        }
        _ => false,
    }
}

#[inline(always)]
fn restore_peer6(ctx: &SockAddrContext) -> bool {
    // SAFETY: valid context, as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let peer = ctx::read_words(&sa.user_ip6);
    if !addr::is_loopback(&peer) {
        return false;
    }
    let Some(dst) = stored_dst(sa) else { return false };
    sa.user_ip6[0] = dst.addr[0];
    sa.user_ip6[1] = dst.addr[1];
    sa.user_ip6[2] = dst.addr[2];
    sa.user_ip6[3] = dst.addr[3];
    sa.user_port = addr::port_to_be_low(dst.port);
    true
}
