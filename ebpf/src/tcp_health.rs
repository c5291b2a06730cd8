//! sock_ops on the agent's own cgroup: kernel TCP health (smoothed RTT, retransmits, state
//! changes) of the proxy's sockets, by socket cookie, in the `nm_tcp_health` LRU.
//!
//! The proxy's sockets are the ones the agent creates or accepts inside pod namespaces; its
//! admin API and control-plane sockets live in the node's namespace and are skipped. A
//! tracked socket asks the kernel for RTT, retransmit and state callbacks; everything else
//! costs one callback at establishment and nothing after.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RETRANS_CB,
        BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use nodemesh_common::{Counter, TcpHealth};

use crate::{
    counters::count,
    ctx,
    maps::{CONFIG, TCP_HEALTH},
};

/// sock_ops verdict: carry on.
const OK: u32 = 1;
const CALLBACKS: i32 =
    (BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG) as i32;

#[sock_ops]
pub fn nm_sock_ops_proxy(ctx: SockOpsContext) -> u32 {
    if let Some(counter) = observe(&ctx) {
        count(counter);
    }
    OK
}

#[inline(always)]
fn observe(ctx: &SockOpsContext) -> Option<Counter> {
    let op = ctx.op();
    match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => Some(track(ctx)),
        BPF_SOCK_OPS_RTT_CB | BPF_SOCK_OPS_RETRANS_CB | BPF_SOCK_OPS_STATE_CB => update(ctx, op),
        _ => None,
    }
}

#[inline(always)]
fn track(ctx: &SockOpsContext) -> Counter {
    let node_netns = CONFIG.get(0).map(|c| c.node_netns_cookie).unwrap_or(0);
    // SAFETY: the kernel hands sock_ops programs a valid context.
    if unsafe { bpf_get_netns_cookie(ctx.ops.cast()) } == node_netns {
        return Counter::TcpHealthSkipNodeNetns;
    }
    if ctx.set_cb_flags(CALLBACKS).is_err() {
        return Counter::TcpHealthInsertFailed;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let mut health = TcpHealth::default();
    fill(ctx, &mut health);
    match TCP_HEALTH.insert(&cookie, &health, 0) {
        Ok(()) => Counter::TcpHealthTracked,
        Err(_) => Counter::TcpHealthInsertFailed,
    }
}

#[inline(always)]
fn update(ctx: &SockOpsContext, op: u32) -> Option<Counter> {
    // SAFETY: the kernel hands sock_ops programs a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(health) = TCP_HEALTH.get_ptr_mut(&cookie) else {
        // Callbacks are only ever switched on for tracked sockets: this one was evicted.
        return Some(Counter::TcpHealthSkipUntracked);
    };
    // SAFETY: a valid map value pointer for this program run; callbacks for one socket run
    // under its lock, so plain updates do not race.
    let health = unsafe { &mut *health };
    fill(ctx, health);
    match op {
        BPF_SOCK_OPS_RETRANS_CB => health.retrans_events = health.retrans_events.wrapping_add(1),
        BPF_SOCK_OPS_STATE_CB => {
            // The callback runs before the socket's state changes: args[1] is the new one.
            health.state = ctx.arg(1);
            health.state_changes = health.state_changes.wrapping_add(1);
        }
        _ => {}
    }
    None
}

/// Copies what the kernel exposes of `struct tcp_sock` into the record.
#[inline(always)]
fn fill(ctx: &SockOpsContext, health: &mut TcpHealth) {
    // SAFETY: valid context pointer; every field below is readable for full TCP sockets,
    // which is all these callbacks are ever called for.
    let ops = unsafe { &*ctx.ops };
    let (srtt, min_rtt, retrans, cwnd, acked, received) = (
        ctx::read(&ops.srtt_us),
        ctx::read(&ops.rtt_min),
        ctx::read(&ops.total_retrans),
        ctx::read(&ops.snd_cwnd),
        ctx::read(&ops.bytes_acked),
        ctx::read(&ops.bytes_received),
    );
    // The kernel keeps the smoothed RTT times eight.
    health.srtt_us = srtt >> 3;
    health.min_rtt_us = min_rtt;
    health.total_retrans = retrans;
    health.snd_cwnd = cwnd;
    health.bytes_acked = acked;
    health.bytes_received = received;
    if health.state == 0 {
        health.state = ctx::read(&ops.state);
    }
    // SAFETY: no preconditions.
    health.updated_ns = unsafe { bpf_ktime_get_ns() };
}
