//! Context field reads the verifier accepts.
//!
//! The verifier only allows context loads at constant offsets. When two branches read
//! different fields (local_ip4 vs local_ip6[3]), LLVM may merge them into one load through a
//! computed pointer, which the verifier rejects ("dereference of modified ctx ptr"). So read
//! every field a decision needs unconditionally, with volatile loads that LLVM cannot move
//! or merge, and branch on the values afterwards.

use core::ptr;

/// Reads one context field.
#[inline(always)]
pub fn read<T: Copy>(field: &T) -> T {
    // SAFETY: `field` is a reference into the program's context, valid for the call.
    unsafe { ptr::read_volatile(field) }
}

/// Reads a four-word address field one word at a time.
#[inline(always)]
pub fn read_words(field: &[u32; 4]) -> [u32; 4] {
    [read(&field[0]), read(&field[1]), read(&field[2]), read(&field[3])]
}
