//! Nodemesh's kernel programs.
//!
//! Every entry point is thin: it calls a `try_*` function and turns any outcome into the
//! verdict that lets traffic through unchanged. A kernel program of ours must never be the
//! reason a pod's connection fails (fail-open, DESIGN decision 3).
#![no_std]
#![no_main]
// atomic_xadd (any BPF CPU version) and atomic_or (BPF v3 atomics, kernel 5.12+): the
// atomics the programs use without the value back.
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "atomic_xadd and atomic_or are the only ways to atomic add and or on this target"
)]

mod connect;
mod counters;
mod ctx;
mod drops;
mod flows;
mod maps;
mod ports;
mod sk_lookup;
mod sock_ops;
mod splice;
mod tcp_health;

/// GPL-compatible so the verifier grants every helper we call; the user-space crates are
/// Apache-2.0.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path here can panic (no indexing, no unwraps); the verifier would reject a
    // reachable infinite loop, so tell the compiler this is unreachable.
    unsafe { core::hint::unreachable_unchecked() }
}
