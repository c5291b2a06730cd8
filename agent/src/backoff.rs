//! Exponential backoff with jitter, so a fleet of agents that lost their control plane at the
//! same moment does not come back at the same moment.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self { base, cap, attempt: 0, rng: seed | 1 }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next wait: uniformly between half and all of `base·2^attempt`, capped.
    pub fn next(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1 << self.attempt.min(16)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let span = (ceiling - half).as_nanos() as u64;
        half + Duration::from_nanos(if span == 0 { 0 } else { self.random() % span })
    }

    /// Uniform in [-1, 1]: for spreading scheduled work (certificate refreshes).
    pub fn jitter(&mut self) -> f64 {
        (self.random() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// xorshift64: plenty for spreading retries.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jitters_and_caps() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(base, cap);
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        for (i, w) in waits.iter().enumerate() {
            let ceiling = base.saturating_mul(1 << i).min(cap);
            assert!(*w >= ceiling / 2 && *w <= ceiling, "attempt {i}: {w:?}");
        }
        let mut other = Backoff::new(base, cap);
        other.rng ^= 0xdead_beef;
        assert_ne!(
            (0..10).map(|_| other.next()).collect::<Vec<_>>(),
            waits,
            "two agents do not retry in lockstep"
        );
        b.reset();
        assert!(b.next() <= base);
    }
}
