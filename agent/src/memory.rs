//! The agent's own memory: what the kernel charges it (RSS) and what the allocator says is
//! in use, so a growing RSS can be told apart from allocator retention.

pub use crate::report::status::Memory;

pub fn now() -> Memory {
    // jemalloc caches its statistics; advancing the epoch refreshes them.
    let _ = tikv_jemalloc_ctl::epoch::advance();
    Memory {
        rss_bytes: rss_bytes().unwrap_or(0),
        heap_allocated_bytes: tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0) as u64,
        heap_resident_bytes: tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0) as u64,
    }
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
