//! Timing an endpoint's first answer on a connection: from the first bytes the proxy passed
//! to it (or from the connect, for a server that speaks first) to the first bytes back. At
//! L4 this is the nearest thing to a request's latency, and what tells the balancer that a
//! server is slow to answer although it accepts at once.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

/// A first answer slower than this says more about the protocol (a long poll, a client that
/// waits) than about the endpoint: it counts as this long.
const LONGEST: Duration = Duration::from_secs(2);

pub struct FirstResponse {
    connected: Instant,
    asked: OnceLock<Instant>,
    answered: AtomicBool,
    on_answer: Box<dyn Fn(Duration) + Send + Sync>,
}

impl FirstResponse {
    /// Starts timing at the connect; `on_answer` gets the time to the first answer, once.
    pub fn new(on_answer: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        Self {
            connected: Instant::now(),
            asked: OnceLock::new(),
            answered: AtomicBool::new(false),
            on_answer: Box::new(on_answer),
        }
    }

    /// Bytes went to the endpoint.
    pub fn forwarded(&self) {
        if self.asked.get().is_none() {
            let _ = self.asked.set(Instant::now());
        }
    }

    /// Bytes came back from the endpoint.
    pub fn answered(&self) {
        if !self.answered.load(Relaxed) && !self.answered.swap(true, Relaxed) {
            let from = self.asked.get().copied().unwrap_or(self.connected);
            (self.on_answer)(from.elapsed().min(LONGEST));
        }
    }
}

/// Which way a copy loop moves bytes, for the timer.
#[derive(Clone, Copy)]
pub enum Way {
    ToEndpoint,
    FromEndpoint,
}

/// Tells `timer` (if any) that bytes moved `way`.
pub fn moved(timer: Option<&FirstResponse>, way: Way) {
    if let Some(timer) = timer {
        match way {
            Way::ToEndpoint => timer.forwarded(),
            Way::FromEndpoint => timer.answered(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn times_from_the_first_request_bytes_to_the_first_answer_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let timer = FirstResponse::new(move |d| log.lock().expect("lock").push(d));
        std::thread::sleep(Duration::from_millis(20));
        timer.forwarded();
        std::thread::sleep(Duration::from_millis(5));
        timer.forwarded();
        timer.answered();
        timer.answered();
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        // From the first bytes forwarded, not from the connect 20 ms earlier.
        assert!(seen[0] >= Duration::from_millis(5) && seen[0] < Duration::from_millis(20), "{seen:?}");
    }

    #[test]
    fn a_server_that_speaks_first_is_timed_from_the_connect() {
        let seen = Arc::new(Mutex::new(None));
        let log = Arc::clone(&seen);
        let timer = FirstResponse::new(move |d| *log.lock().expect("lock") = Some(d));
        std::thread::sleep(Duration::from_millis(5));
        timer.answered();
        assert!(seen.lock().expect("lock").is_some_and(|d| d >= Duration::from_millis(5)));
    }
}
