//! The retry budget of one service (Finagle's, as Linkerd keeps it): retries may add at most
//! a share of the requests of the last ten seconds, plus a small floor per second so that a
//! service with little traffic can still retry. In an outage every request fails, and the
//! budget, not each request's attempts, bounds what retries add to the load.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Retries allowed per request made (Linkerd's default).
pub const RATIO: f64 = 0.2;
/// Retries allowed per second however few requests there were.
pub const MIN_PER_SECOND: u32 = 10;
/// The window requests and retries are counted over.
pub const WINDOW: Duration = Duration::from_secs(10);
const SLOTS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Requests and retries per one-second slot; `slot` is the current one.
    requests: [u64; SLOTS],
    retries: [u64; SLOTS],
    slot: usize,
    slot_started: Instant,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl RetryBudget {
    pub fn new(now: Instant) -> Self {
        Self {
            window: Mutex::new(Window {
                requests: [0; SLOTS],
                retries: [0; SLOTS],
                slot: 0,
                slot_started: now,
            }),
        }
    }

    /// Counts a request (its first attempt).
    pub fn deposit(&self, now: Instant) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.advance(now);
        let slot = w.slot;
        w.requests[slot] += 1;
    }

    /// Takes one retry from the budget; false when it has none left.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.advance(now);
        let requests: u64 = w.requests.iter().sum();
        let retries: u64 = w.retries.iter().sum();
        let allowed = f64::from(MIN_PER_SECOND) * WINDOW.as_secs_f64() + RATIO * requests as f64;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        let slot = w.slot;
        w.retries[slot] += 1;
        true
    }
}

impl Window {
    /// Moves to the slot of `now`, clearing the ones it passes.
    fn advance(&mut self, now: Instant) {
        let slot_len = WINDOW / SLOTS as u32;
        let elapsed = now.saturating_duration_since(self.slot_started);
        let steps = (elapsed.as_nanos() / slot_len.as_nanos()) as usize;
        for _ in 0..steps.min(SLOTS) {
            self.slot = (self.slot + 1) % SLOTS;
            self.requests[self.slot] = 0;
            self.retries[self.slot] = 0;
        }
        if steps > 0 {
            self.slot_started += slot_len * steps as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_floor_and_a_share_of_requests() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(t0);
        for _ in 0..1000 {
            budget.deposit(t0);
        }
        let granted = (0..10_000).filter(|_| budget.withdraw(t0)).count();
        // 10/s over 10 s, plus a fifth of the 1,000 requests.
        assert_eq!(granted, 100 + 200);
    }

    #[test]
    fn the_budget_refills_as_the_window_moves_on() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(t0);
        let first = (0..1000).filter(|_| budget.withdraw(t0)).count();
        assert_eq!(first, 100, "the floor alone");
        assert!(!budget.withdraw(t0 + Duration::from_secs(5)), "still inside the window");
        // Ten seconds later the retries counted then have left the window.
        assert!(budget.withdraw(t0 + Duration::from_secs(11)));
    }
}
