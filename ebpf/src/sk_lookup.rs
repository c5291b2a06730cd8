//! Inbound steering: sk_lookup on each enrolled pod's network namespace.
//!
//! A new TCP connection for one of the pod's addresses is handed to the agent's inbound
//! listener in that namespace, found by the pod address (and whether the port is the HBONE
//! port) in `nm_listeners`. Nothing in the
//! packet changes, so the accepted socket's getsockname() is the original destination.
//! Connections from loopback sources (the proxy's own upstream connections to the app, bound
//! to 127.0.0.6 or ::1), and whatever arrives on the namespace's loopback interface (the
//! HBONE server's connections to the app from the client's address, and other traffic that
//! starts inside the namespace) are never steered: without that the proxy's connection to
//! the app would loop back into the proxy. Nothing from the network arrives on `lo`, so no
//! client can use either to pass by the proxy.

use aya_ebpf::{bindings::sk_action::SK_PASS, macros::sk_lookup, programs::SkLookupContext};
use nodemesh_common::{Counter, ListenerKey, addr};

use crate::{
    counters::count,
    ctx,
    maps::{CONFIG, EXCLUDED_INBOUND, LISTENERS},
    ports::is_excluded,
};

const AF_INET: u32 = 2;
/// The loopback interface's index, in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const ENOENT: i32 = 2;

#[sk_lookup]
pub fn nm_sk_lookup(ctx: SkLookupContext) -> u32 {
    count(try_steer(&ctx).unwrap_or_else(|reason| reason));
    // Whether or not we assigned a socket, let the kernel carry on: on a miss its regular
    // lookup finds the app's own listener (fail-open).
    SK_PASS
}

#[inline(always)]
fn try_steer(ctx: &SkLookupContext) -> Result<Counter, Counter> {
    // SAFETY: the kernel hands sk_lookup programs a valid context.
    let lookup = unsafe { &*ctx.lookup };
    if ctx::read(&lookup.protocol) != IPPROTO_TCP {
        return Err(Counter::SkLookupSkipNotTcp);
    }
    // Read both families' fields, then pick values (see ctx.rs).
    let family = ctx::read(&lookup.family);
    let (local4, remote4) = (ctx::read(&lookup.local_ip4), ctx::read(&lookup.remote_ip4));
    let (local6, remote6) = (ctx::read_words(&lookup.local_ip6), ctx::read_words(&lookup.remote_ip6));
    let (local, remote) =
        if family == AF_INET { (addr::from_v4(local4), addr::from_v4(remote4)) } else { (local6, remote6) };
    if addr::is_loopback(&remote)
        || addr::is_loopback(&local)
        || ctx::read(&lookup.ingress_ifindex) == LOOPBACK_IFINDEX
    {
        return Err(Counter::SkLookupSkipLoopback);
    }
    // local_port is in host order in this context.
    let port = ctx::read(&lookup.local_port) as u16;
    let config = CONFIG.get(0).ok_or(Counter::SkLookupSkipNoListener)?;
    // HBONE goes to the pod's HBONE listener, even if the app listens on 15008 itself (a
    // squatter must not receive the mesh's tunnels); the proxy's own ports and excluded
    // ports are never steered.
    let kind = if port == config.hbone_port {
        ListenerKey::HBONE
    } else if port == config.outbound_port
        || port == config.inbound_port
        || is_excluded(&EXCLUDED_INBOUND, port)
    {
        return Err(Counter::SkLookupSkipExcludedPort);
    } else {
        ListenerKey::PLAINTEXT
    };
    match LISTENERS.redirect_sk_lookup(ctx, ListenerKey { addr: local, kind }, 0) {
        Ok(()) => Ok(Counter::SkLookupSteered),
        Err(errno) if errno == -ENOENT => Err(Counter::SkLookupSkipNoListener),
        Err(_) => Err(Counter::SkLookupAssignFailed),
    }
}
