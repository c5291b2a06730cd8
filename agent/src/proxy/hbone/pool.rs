//! The HBONE client's connection pool, as ztunnel keeps it: one HTTP/2-over-mTLS connection
//! carries many app connections (streams) for the same (source identity, destination
//! identity, source pod, destination `ip:15008`); a new one opens when none has room (100
//! streams, or fewer if the peer says so), or the pooled one is gone (GOAWAY, error). One
//! dial at a time per key, so a burst of app connections shares the first handshake instead
//! of each making its own. Connections unused for a while are released, and so are those
//! whose certificate has expired.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use h2::client::SendRequest;

/// ztunnel's `POOL_MAX_STREAMS_PER_CONNECTION`.
pub const MAX_STREAMS: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Arc<str>,
    pub destination: Arc<str>,
    /// The source pod's network namespace (its connections leave from its address).
    pub netns: u64,
    pub peer: SocketAddr,
}

/// One pooled HTTP/2 connection.
pub struct Pooled {
    pub sender: SendRequest<Bytes>,
    streams: AtomicUsize,
    /// Set when its connection task ends (GOAWAY, error, or released).
    pub closed: Arc<AtomicBool>,
    last_used: Mutex<Instant>,
    /// When the certificate it was opened with expires: after that it takes no new streams,
    /// so an identity whose certificate expired (the CA away) opens nothing new.
    expires: SystemTime,
}

impl Pooled {
    pub fn new(sender: SendRequest<Bytes>, closed: Arc<AtomicBool>, expires: SystemTime) -> Arc<Self> {
        let last_used = Mutex::new(Instant::now());
        Arc::new(Self { sender, streams: AtomicUsize::new(0), closed, last_used, expires })
    }

    fn usable(&self, now: SystemTime) -> bool {
        !self.closed.load(Relaxed) && now < self.expires
    }

    fn idle_since(&self) -> Option<Instant> {
        (self.streams.load(Relaxed) == 0).then(|| *self.last_used.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A stream's claim on its connection: released when dropped.
pub struct StreamClaim {
    pub conn: Arc<Pooled>,
}

impl Drop for StreamClaim {
    fn drop(&mut self) {
        *self.conn.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.conn.streams.fetch_sub(1, Relaxed);
    }
}

#[derive(Default)]
struct Entry {
    conns: Mutex<Vec<Arc<Pooled>>>,
    /// Held while dialing, so that one dial per key is in flight.
    dialing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
pub struct Pool {
    entries: Mutex<HashMap<PoolKey, Arc<Entry>>>,
    /// Streams ever claimed (for the metrics).
    pub streams: AtomicU64,
}

impl Pool {
    fn entry(&self, key: &PoolKey) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(entries.entry(key.clone()).or_default())
    }

    /// A stream on a pooled connection for `key`, dialing one with `dial` when none has room.
    pub async fn claim<F, E>(&self, key: &PoolKey, dial: F) -> Result<StreamClaim, E>
    where
        F: AsyncFnOnce() -> Result<Arc<Pooled>, E>,
    {
        let entry = self.entry(key);
        if let Some(claim) = Self::claim_existing(&entry) {
            self.streams.fetch_add(1, Relaxed);
            return Ok(claim);
        }
        let _dialing = entry.dialing.lock().await;
        // Another task may have dialed while this one waited.
        if let Some(claim) = Self::claim_existing(&entry) {
            self.streams.fetch_add(1, Relaxed);
            return Ok(claim);
        }
        let conn = dial().await?;
        conn.streams.fetch_add(1, Relaxed);
        entry.conns.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(&conn));
        self.streams.fetch_add(1, Relaxed);
        Ok(StreamClaim { conn })
    }

    fn claim_existing(entry: &Entry) -> Option<StreamClaim> {
        let mut conns = entry.conns.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        conns.retain(|c| c.usable(now));
        for conn in conns.iter() {
            let claimed =
                conn.streams.fetch_update(Relaxed, Relaxed, |n| (n < MAX_STREAMS).then_some(n + 1)).is_ok();
            if claimed {
                return Some(StreamClaim { conn: Arc::clone(conn) });
            }
        }
        None
    }

    /// Drops connections closed or unused for `idle` (dropping the last sender lets h2 end
    /// the connection with a GOAWAY), and keys left with none.
    pub fn sweep(&self, idle: Duration) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, entry| {
            let mut conns = entry.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.retain(|c| {
                c.usable(wall) && c.idle_since().is_none_or(|since| now.duration_since(since) < idle)
            });
            !conns.is_empty() || entry.dialing.try_lock().is_err()
        });
    }

    /// Pooled connections now (open or not yet noticed closed).
    pub fn connections(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.values().map(|e| e.conns.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}
