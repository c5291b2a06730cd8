//! Connection counters per pod and direction (lock-free; read by `nodemesh status`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionSnapshot {
    pub accepted: u64,
    pub active: u64,
    pub failed: u64,
    pub spliced: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatsSnapshot {
    pub outbound: DirectionSnapshot,
    pub inbound: DirectionSnapshot,
}

impl PodStats {
    /// The counters of connections going `direction`.
    pub fn of(&self, direction: crate::flows::record::Direction) -> &DirectionStats {
        match direction {
            crate::flows::record::Direction::Outbound => &self.outbound,
            crate::flows::record::Direction::Inbound => &self.inbound,
        }
    }

    pub fn snapshot(&self) -> PodStatsSnapshot {
        PodStatsSnapshot { outbound: self.outbound.snapshot(), inbound: self.inbound.snapshot() }
    }
}
