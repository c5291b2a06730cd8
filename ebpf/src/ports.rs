//! Port exclusion bitmaps (one bit per port, 1,024 u64 words).

use aya_ebpf::maps::Array;

#[inline(always)]
pub fn is_excluded(bitmap: &Array<u64>, port: u16) -> bool {
    match bitmap.get(u32::from(port >> 6)) {
        Some(word) => (*word >> (port & 63)) & 1 == 1,
        None => false,
    }
}
