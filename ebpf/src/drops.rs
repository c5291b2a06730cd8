//! The drop tracer (`tp_btf/kfree_skb`): when the kernel drops a packet of a flow the tc
//! programs know, anywhere on the node (a netfilter rule, a full queue, a bad checksum), the
//! flow's drop count goes up and its reason joins the set the flow has seen and becomes its
//! latest. Packets of unknown flows only bump a reason counter: the tracer never creates a flow.

use core::{
    intrinsics::{AtomicOrdering, atomic_or},
    mem::{MaybeUninit, size_of},
};

use aya_ebpf::{Global, macros::btf_tracepoint, programs::BtfTracePointContext};
use nodemesh_common::{Counter, FlowKey, SkBuffOffsets, addr};

use crate::{
    counters::count,
    flows::{IPPROTO_TCP, IPPROTO_UDP, add},
    maps::FLOWS,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `skb->transport_header` when unset.
const UNSET: u16 = 0xffff;
/// `SKB_DROP_REASON_NOT_SPECIFIED` (the third entry of `enum skb_drop_reason`, after
/// NOT_DROPPED_YET and CONSUMED; the agent checks this against the kernel's BTF). Callers of
/// plain `kfree_skb()` report it, and not all of them drop anything: the sockmap frees every
/// skb it redirects that way. Real drops on this kernel carry a specific reason.
const NOT_SPECIFIED: u32 = 2;

/// Where `struct sk_buff` keeps the fields read below, from the running kernel's BTF (see
/// ebpf/src/splice.rs for why offsets come in as a frozen global).
#[unsafe(no_mangle)]
static NM_SK_BUFF: Global<SkBuffOffsets> =
    Global::new(SkBuffOffsets { head: 0, network_header: 0, transport_header: 0, protocol: 0 });

/// Called as `trace_kfree_skb(skb, location, reason, rx_sk)`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn nm_kfree_skb(ctx: BtfTracePointContext) -> i32 {
    count(record(&ctx).unwrap_or_else(|reason| reason));
    0
}

#[inline(always)]
fn record(ctx: &BtfTracePointContext) -> Result<Counter, Counter> {
    let offsets = NM_SK_BUFF.load();
    let skb: *const u8 = ctx.arg(0);
    let reason: u32 = ctx.arg(2);
    if reason <= NOT_SPECIFIED {
        return Err(Counter::DropSkipUnspecified);
    }
    let head: *const u8 = read(skb, offsets.head)?;
    let network: u16 = read(skb, offsets.network_header)?;
    let transport: u16 = read(skb, offsets.transport_header)?;
    let protocol = u16::from_be(read::<u16>(skb, offsets.protocol)?);
    let ip = head.wrapping_add(usize::from(network));
    let (src, dst, proto, l4) = match protocol {
        ETH_P_IP => {
            let header: [u8; 20] = read(ip, 0u32)?;
            let ihl = usize::from(header[0] & 0x0f) * 4;
            let word =
                |at: usize| u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
            (addr::from_v4(word(12)), addr::from_v4(word(16)), header[9], ihl)
        }
        ETH_P_IPV6 => {
            let next: u8 = read(ip, 6u32)?;
            let src: [u32; 4] = read(ip, 8u32)?;
            let dst: [u32; 4] = read(ip, 24u32)?;
            (src, dst, next, 40)
        }
        _ => return Err(Counter::DropSkipNotIp),
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Counter::DropSkipNotIp);
    }
    let l4 = if transport == UNSET || transport <= network {
        ip.wrapping_add(l4)
    } else {
        head.wrapping_add(usize::from(transport))
    };
    let ports: [u16; 2] = read(l4, 0u32)?;
    let (sport, dport) = (u16::from_be(ports[0]), u16::from_be(ports[1]));
    // Whichever way the packet went, one of its ends is the pod.
    let from_pod = FlowKey { pod: src, peer: dst, pod_port: sport, peer_port: dport, proto, _pad: [0; 3] };
    let to_pod = FlowKey { pod: dst, peer: src, pod_port: dport, peer_port: sport, proto, _pad: [0; 3] };
    let stats =
        FLOWS.get_ptr_mut(&from_pod).or_else(|| FLOWS.get_ptr_mut(&to_pod)).ok_or(Counter::DropSkipNoFlow)?;
    // SAFETY: a valid map value pointer for this program run; drops are added atomically.
    unsafe {
        add(&raw mut (*stats).drops, 1);
        (*stats).last_drop_reason = reason;
        if reason < 128 {
            let word = &raw mut (*stats).drop_reasons_seen[(reason / 64) as usize];
            // Plain loads and stores here could lose a bit to a drop on another CPU.
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, 1 << (reason % 64));
        }
    }
    Ok(Counter::DropCounted)
}

/// Reads a `T` at `base + offset` of kernel memory (an skb field or packet bytes).
#[inline(always)]
fn read<T: Copy>(base: *const u8, offset: impl Into<u64>) -> Result<T, Counter> {
    let at = base.wrapping_add(offset.into() as usize).cast::<T>();
    let mut out = MaybeUninit::<T>::uninit();
    // SAFETY: the helper checks the source address and fills exactly size_of::<T>() bytes.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            out.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            at.cast(),
        )
    };
    if rc != 0 {
        return Err(Counter::DropSkipUnreadable);
    }
    // SAFETY: fully written by the helper.
    Ok(unsafe { out.assume_init() })
}
