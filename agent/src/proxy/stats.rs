//! Connection counters per pod and direction (lock-free; read by `nodemesh status`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use crate::report::status::{DirectionSnapshot, PodStatsSnapshot};

#[derive(Debug, Default)]
pub struct DirectionStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    /// Accepted but never forwarded (no original destination, upstream connect failed,
    /// denied by an authorization policy).
    pub failed: AtomicU64,
    /// Handed to the kernel splice after set-up.
    pub spliced: AtomicU64,
    /// Bytes from the connecting side to the other side.
    pub bytes_sent: AtomicU64,
    /// Bytes back to the connecting side.
    pub bytes_received: AtomicU64,
}

impl DirectionStats {
    pub fn snapshot(&self) -> DirectionSnapshot {
        DirectionSnapshot {
            accepted: self.accepted.load(Relaxed),
            active: self.active.load(Relaxed),
            failed: self.failed.load(Relaxed),
            spliced: self.spliced.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
        }
    }

    /// Counts a connection as active until the guard drops.
    pub fn open(&self) -> ActiveGuard<'_> {
        self.accepted.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        ActiveGuard(&self.active)
    }
}

pub struct ActiveGuard<'a>(&'a AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct PodStats {
    pub outbound: DirectionStats,
    pub inbound: DirectionStats,
}

impl PodStats {
    /// The counters of connections going `direction`.
    pub fn of(&self, direction: crate::report::flows::Direction) -> &DirectionStats {
        match direction {
            crate::report::flows::Direction::Outbound => &self.outbound,
            crate::report::flows::Direction::Inbound => &self.inbound,
        }
    }

    pub fn snapshot(&self) -> PodStatsSnapshot {
        PodStatsSnapshot { outbound: self.outbound.snapshot(), inbound: self.inbound.snapshot() }
    }
}
