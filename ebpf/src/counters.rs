//! Per-CPU reason counters: in-kernel observability without log lines on the hot path.

use nodemesh_common::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU, and programs are not
        // preempted by each other on one CPU for these hook types.
        unsafe { *slot += 1 };
    }
}
