//! sock_ops on each enrolled pod's cgroup: publishes an intercepted socket's original
//! destination under the key the proxy can compute from its accepted socket.
//!
//! connect4/connect6 run before the kernel picks the client's local port, so they can only
//! store the destination on the socket. At TCP_CONNECT_CB the port is chosen and the SYN is
//! not yet sent, so the entry exists before the proxy can possibly accept the connection.

use core::ptr;

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    helpers::generated::{bpf_get_netns_cookie, bpf_sk_storage_get},
    macros::sock_ops,
    programs::SockOpsContext,
};
use nodemesh_common::{Counter, OrigDstKey, SockAddr, addr};

use crate::{
    counters::count,
    ctx,
    maps::{ORIG_DST, SOCKET_DST},
};

/// sock_ops verdict: carry on.
const OK: u32 = 1;
const AF_INET: u32 = 2;

#[sock_ops]
pub fn nm_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        if let Some(counter) = publish_orig_dst(&ctx) {
            count(counter);
        }
    }
    OK
}

#[inline(always)]
fn publish_orig_dst(ctx: &SockOpsContext) -> Option<Counter> {
    // SAFETY: the kernel hands sock_ops programs a valid context; `sk` may be null.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: our own map; a lookup without the create flag.
    let dst = unsafe {
        bpf_sk_storage_get(ptr::from_ref(&SOCKET_DST).cast_mut().cast(), sk.cast(), ptr::null_mut(), 0)
    }
    .cast::<SockAddr>();
    if dst.is_null() {
        // Not intercepted (loopback, excluded port, agent absent).
        return None;
    }
    // SAFETY: valid context pointer.
    let ops = unsafe { &*ctx.ops };
    // Read both families' fields, then pick a value (see ctx.rs).
    let (family, ip4, ip6) =
        (ctx::read(&ops.family), ctx::read(&ops.local_ip4), ctx::read_words(&ops.local_ip6));
    let local = if family == AF_INET { addr::from_v4(ip4) } else { ip6 };
    let key = OrigDstKey {
        // SAFETY: valid context pointer.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.ops.cast()) },
        addr: local,
        port: ctx::read(&ops.local_port) as u16,
        _pad: [0; 6],
    };
    // SAFETY: non-null storage holds a SockAddr.
    let value = unsafe { *dst };
    Some(match ORIG_DST.insert(&key, &value, 0) {
        Ok(()) => Counter::SockOpsOrigDstPublished,
        Err(_) => Counter::SockOpsOrigDstMapFull,
    })
}
