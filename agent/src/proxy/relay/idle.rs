//! The idle timeout of proxied connections (`idle_timeout`, off by default as in Istio): a
//! connection that moves no byte either way for that long is reset on both sides.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Watches a connection's byte total; call [`IdleWatch::tick`] from a `select!`.
pub struct IdleWatch {
    timeout: Duration,
    interval: Option<Interval>,
    last_total: u64,
    last_change: Instant,
}

impl IdleWatch {
    /// `timeout` zero: never idle ([`IdleWatch::tick`] never completes).
    pub fn new(timeout: Duration) -> Self {
        let interval = (!timeout.is_zero()).then(|| {
            // Checked twice per period: a connection is reset between 1× and 1.5× the timeout.
            let mut i = tokio::time::interval_at(Instant::now() + timeout / 2, timeout / 2);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        Self { timeout, interval, last_total: 0, last_change: Instant::now() }
    }

    /// Completes at the next check; then [`IdleWatch::expired`] says whether to give up.
    pub async fn tick(&mut self) {
        match &mut self.interval {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Whether `total` (bytes moved both ways so far) has stood still for the timeout.
    pub fn expired(&mut self, total: u64) -> bool {
        let now = Instant::now();
        if total != self.last_total {
            self.last_total = total;
            self.last_change = now;
            return false;
        }
        now.duration_since(self.last_change) >= self.timeout
    }

    pub fn error(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no byte moved either way for {:?} (idle_timeout)", self.timeout),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_only_without_progress() {
        let mut w = IdleWatch::new(Duration::from_secs(10));
        w.tick().await;
        assert!(!w.expired(0), "5 s in");
        w.tick().await;
        assert!(w.expired(0), "10 s without a byte");
        assert!(!w.expired(7), "progress resets it");
        w.tick().await;
        assert!(!w.expired(7));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_never_ticks() {
        let mut w = IdleWatch::new(Duration::ZERO);
        let ticked = tokio::time::timeout(Duration::from_secs(3600), w.tick()).await;
        assert!(ticked.is_err());
    }
}
