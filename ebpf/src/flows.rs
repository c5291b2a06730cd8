//! Per-flow accounting on each enrolled pod's host-side veth (tcx ingress: leaving the pod;
//! tcx egress: entering it). Counts packets, IP bytes and payload bytes per direction into
//! the `nm_flows` LRU, keyed from the pod's side so both directions land in one entry.
//!
//! Read-only: the programs never change, drop or redirect a packet, and always hand it on
//! to whatever runs next (`TCX_NEXT`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::classifier, programs::TcContext};
use nodemesh_common::{Counter, FlowDirection, FlowKey, FlowStats, addr};

use crate::{counters::count, maps::FLOWS};

/// Hand the packet to the next program or the kernel's default (TC_ACT_UNSPEC).
const TCX_NEXT: i32 = -1;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const BPF_NOEXIST: u64 = 1;

#[classifier]
pub fn nm_tc_from_pod(ctx: TcContext) -> i32 {
    count(account(&ctx, true).unwrap_or_else(|reason| reason));
    TCX_NEXT
}

#[classifier]
pub fn nm_tc_to_pod(ctx: TcContext) -> i32 {
    count(account(&ctx, false).unwrap_or_else(|reason| reason));
    TCX_NEXT
}

/// A parsed packet: its addresses as sent, and its sizes.
struct Packet {
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    ip_bytes: u64,
    payload: u64,
}

#[inline(always)]
fn account(ctx: &TcContext, from_pod: bool) -> Result<Counter, Counter> {
    let packet = parse(ctx)?;
    let key = if from_pod {
        FlowKey {
            pod: packet.src,
            peer: packet.dst,
            pod_port: packet.sport,
            peer_port: packet.dport,
            proto: packet.proto,
            _pad: [0; 3],
        }
    } else {
        FlowKey {
            pod: packet.dst,
            peer: packet.src,
            pod_port: packet.dport,
            peer_port: packet.sport,
            proto: packet.proto,
            _pad: [0; 3],
        }
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let stats = match FLOWS.get_ptr_mut(&key) {
        Some(stats) => stats,
        None => {
            let fresh = FlowStats { first_ns: now, ..FlowStats::default() };
            // NOEXIST: another CPU may have created it meanwhile; then use theirs.
            let _ = FLOWS.insert(&key, &fresh, BPF_NOEXIST);
            FLOWS.get_ptr_mut(&key).ok_or(Counter::TcFlowInsertFailed)?
        }
    };
    // SAFETY: a valid map value pointer for this program run; the counters are only ever
    // changed with atomic adds, so both directions (on two CPUs at once) add up.
    unsafe {
        let direction: *mut FlowDirection =
            if from_pod { &raw mut (*stats).from_pod } else { &raw mut (*stats).to_pod };
        add(&raw mut (*direction).packets, 1);
        add(&raw mut (*direction).bytes, packet.ip_bytes);
        add(&raw mut (*direction).payload, packet.payload);
        (*stats).last_ns = now;
        let flags = u32::from(packet.tcp_flags);
        if (*stats).tcp_flags & flags != flags {
            (*stats).tcp_flags |= flags;
        }
    }
    Ok(Counter::TcCounted)
}

/// An atomic add whose result is unused, which is what the BPF instruction set has always
/// offered (`BPF_XADD`). `AtomicU64::fetch_add` is not available for this target: it would
/// need the value back.
#[inline(always)]
pub unsafe fn add(counter: *mut u64, value: u64) {
    // SAFETY: the caller passes an aligned u64 inside a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Packet, Counter> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| Counter::TcSkipTruncated)?);
    let (src, dst, proto, ip_bytes, l4) = match ethertype {
        ETH_P_IP => {
            let first = ctx.load::<u8>(ETH_HLEN).map_err(|_| Counter::TcSkipTruncated)?;
            let ihl = usize::from(first & 0x0f) * 4;
            let total = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).map_err(|_| Counter::TcSkipTruncated)?);
            let fragment = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).map_err(|_| Counter::TcSkipTruncated)?);
            if fragment & 0x1fff != 0 {
                // A later fragment has no ports to key it by.
                return Err(Counter::TcSkipFragment);
            }
            let proto = ctx.load::<u8>(ETH_HLEN + 9).map_err(|_| Counter::TcSkipTruncated)?;
            let saddr = ctx.load::<u32>(ETH_HLEN + 12).map_err(|_| Counter::TcSkipTruncated)?;
            let daddr = ctx.load::<u32>(ETH_HLEN + 16).map_err(|_| Counter::TcSkipTruncated)?;
            if ihl < 20 {
                return Err(Counter::TcSkipTruncated);
            }
            (addr::from_v4(saddr), addr::from_v4(daddr), proto, u64::from(total), ihl)
        }
        ETH_P_IPV6 => {
            let payload_len =
                u16::from_be(ctx.load::<u16>(ETH_HLEN + 4).map_err(|_| Counter::TcSkipTruncated)?);
            // Extension headers are not walked: a packet carrying one is skipped as not TCP/UDP.
            let proto = ctx.load::<u8>(ETH_HLEN + 6).map_err(|_| Counter::TcSkipTruncated)?;
            let src = ctx.load::<[u32; 4]>(ETH_HLEN + 8).map_err(|_| Counter::TcSkipTruncated)?;
            let dst = ctx.load::<[u32; 4]>(ETH_HLEN + 24).map_err(|_| Counter::TcSkipTruncated)?;
            (src, dst, proto, u64::from(payload_len) + 40, 40)
        }
        _ => return Err(Counter::TcSkipNotIp),
    };
    let l4_at = ETH_HLEN + l4;
    let (ports, header, tcp_flags) = match proto {
        IPPROTO_TCP => {
            let ports = ctx.load::<[u16; 2]>(l4_at).map_err(|_| Counter::TcSkipTruncated)?;
            let offset_flags = ctx.load::<[u8; 2]>(l4_at + 12).map_err(|_| Counter::TcSkipTruncated)?;
            (ports, u64::from(offset_flags[0] >> 4) * 4, offset_flags[1])
        }
        IPPROTO_UDP => (ctx.load::<[u16; 2]>(l4_at).map_err(|_| Counter::TcSkipTruncated)?, 8, 0),
        _ => return Err(Counter::TcSkipNotTcpUdp),
    };
    Ok(Packet {
        src,
        dst,
        sport: u16::from_be(ports[0]),
        dport: u16::from_be(ports[1]),
        proto,
        tcp_flags,
        ip_bytes,
        payload: ip_bytes.saturating_sub(l4 as u64 + header),
    })
}
