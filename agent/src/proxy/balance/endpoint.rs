//! One endpoint's balancing state, kept across directory updates: connections outstanding,
//! peak-sensitive EWMAs (Linkerd's peak EWMA) of its connect latency and of its first
//! answer's latency (`relay::first_response`), and outlier ejection.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use crate::services::OutlierDetection;

/// How fast the latency estimate forgets: after this long without a sample it has decayed
/// to 1/e, so an endpoint that was slow once is tried again (Linkerd's default decay).
const DECAY: Duration = Duration::from_secs(10);
/// Latencies below this weigh the same: connects inside a cluster take tens to hundreds of
/// microseconds, and a difference there is scheduling noise, not a slower endpoint. Below
/// it, load alone decides.
const FLOOR_US: f64 = 1000.0;

#[derive(Debug)]
pub struct EndpointState {
    /// Connections picked for it and not yet closed (connecting or open).
    pub outstanding: AtomicU32,
    pub picks: AtomicU64,
    pub connect_failures: AtomicU64,
    pub ejections: AtomicU64,
    /// Connect latency, and first-answer latency.
    latency: Mutex<Ewma>,
    response: Mutex<Ewma>,
    outlier: Mutex<Outlier>,
}

#[derive(Debug)]
struct Ewma {
    /// Microseconds.
    estimate: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Outlier {
    consecutive: u32,
    ejected_until: Option<Instant>,
    /// The next ejection is this many base ejection times long; grows with each ejection,
    /// shrinks by one per interval the endpoint goes without being ejected.
    multiplier: u32,
    /// Since the last ejection ended and until a connect succeeds, one failure ejects it
    /// again: an endpoint that comes back still broken is taken out at once.
    on_probation: bool,
    /// When the multiplier was last lowered (or the last ejection ended).
    calm_since: Option<Instant>,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self {
            outstanding: AtomicU32::new(0),
            picks: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            latency: Mutex::new(Ewma { estimate: 0.0, at: Instant::now() }),
            response: Mutex::new(Ewma { estimate: 0.0, at: Instant::now() }),
            outlier: Mutex::new(Outlier::default()),
        }
    }
}

impl EndpointState {
    /// The latency estimate now, in microseconds (decayed since the last sample): the
    /// slower of the endpoint's connects and its first answers.
    pub fn latency_us(&self, now: Instant) -> f64 {
        let read = |m: &Mutex<Ewma>| m.lock().unwrap_or_else(|p| p.into_inner()).now(now);
        read(&self.latency).max(read(&self.response))
    }

    /// What P2C compares: the latency estimate (at least [`FLOOR_US`]) scaled by the load
    /// (one more than the connections outstanding), so an idle slow endpoint and a busy
    /// fast one are weighed alike.
    pub fn cost(&self, now: Instant) -> f64 {
        self.latency_us(now).max(FLOOR_US) * f64::from(self.outstanding.load(Relaxed) + 1)
    }

    /// A connect succeeded after `latency`.
    pub fn connected(&self, latency: Duration, now: Instant) {
        self.latency.lock().unwrap_or_else(|p| p.into_inner()).sample(latency, now);
        let mut outlier = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        outlier.consecutive = 0;
        outlier.on_probation = false;
    }

    /// A request got an answer that was not a 5xx: the run of failures is over.
    pub fn succeeded(&self) {
        let mut outlier = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        outlier.consecutive = 0;
        outlier.on_probation = false;
    }

    /// The endpoint answered a connection's first bytes after `latency`.
    pub fn responded(&self, latency: Duration, now: Instant) {
        self.response.lock().unwrap_or_else(|p| p.into_inner()).sample(latency, now);
    }

    /// A connect failed. Returns whether that ejected the endpoint; `may_eject` says
    /// whether the service's max ejection percent leaves room for one more.
    pub fn failed(&self, policy: Option<&OutlierDetection>, may_eject: bool, now: Instant) -> bool {
        self.connect_failures.fetch_add(1, Relaxed);
        self.errored(policy, may_eject, now)
    }

    /// A request got a 5xx (or no answer): it counts toward ejection as a failed connect
    /// does (Envoy's consecutive 5xx).
    pub fn errored(&self, policy: Option<&OutlierDetection>, may_eject: bool, now: Instant) -> bool {
        let Some(policy) = policy else { return false };
        let mut o = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        o.consecutive += 1;
        if o.ejected_until.is_some_and(|until| until > now) {
            return false;
        }
        let threshold = if o.on_probation { 1 } else { policy.consecutive_errors };
        if o.consecutive < threshold || !may_eject {
            return false;
        }
        o.calm(policy, now);
        o.multiplier += 1;
        o.ejected_until = Some(now + policy.base_ejection_time * o.multiplier);
        o.on_probation = true;
        o.consecutive = 0;
        self.ejections.fetch_add(1, Relaxed);
        true
    }

    /// Until when it is ejected, if it is now.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let o = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        o.ejected_until.filter(|until| *until > now)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.outlier.lock().unwrap_or_else(|p| p.into_inner()).consecutive
    }
}

impl Ewma {
    fn now(&self, now: Instant) -> f64 {
        self.estimate * decay(now.saturating_duration_since(self.at))
    }

    fn sample(&mut self, latency: Duration, now: Instant) {
        let sample = latency.as_secs_f64() * 1e6;
        let decayed = self.now(now);
        // Peak-sensitive: a slower sample moves the estimate half-way up at once (two in a
        // row nearly all the way), a faster one blends in over several.
        let weight = if sample > decayed { 0.5 } else { 0.25 };
        self.estimate = decayed + (sample - decayed) * weight;
        self.at = now;
    }
}

impl Outlier {
    /// Lowers the multiplier by one for each whole interval since the last ejection ended.
    fn calm(&mut self, policy: &OutlierDetection, now: Instant) {
        let since = self.calm_since.or(self.ejected_until);
        if let Some(since) = since.filter(|s| *s <= now) {
            let intervals = (now - since).as_millis() / policy.interval.as_millis().max(1);
            let intervals = u32::try_from(intervals).unwrap_or(u32::MAX);
            self.multiplier = self.multiplier.saturating_sub(intervals);
            self.calm_since = Some(now);
        }
    }
}

fn decay(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierDetection {
        OutlierDetection {
            consecutive_errors: 3,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
        }
    }

    #[test]
    fn ewma_takes_peaks_at_once_and_forgets_them_over_time() {
        let (e, t0) = (EndpointState::default(), Instant::now());
        e.connected(Duration::from_millis(8), t0);
        assert!((e.latency_us(t0) - 4000.0).abs() < 1.0);
        e.connected(Duration::from_millis(8), t0);
        assert!((e.latency_us(t0) - 6000.0).abs() < 1.0);
        // A fast sample blends in slowly.
        e.connected(Duration::from_millis(2), t0);
        assert!((e.latency_us(t0) - 5000.0).abs() < 1.0);
        // Idle for one decay period: down to 1/e.
        let later = t0 + DECAY;
        assert!((e.latency_us(later) - 5000.0 / std::f64::consts::E).abs() < 1.0);
        // Load scales the cost; below the floor only load counts.
        e.outstanding.store(3, Relaxed);
        assert!((e.cost(t0) - 5000.0 * 4.0).abs() < 1.0);
        let fast = EndpointState::default();
        fast.connected(Duration::from_micros(80), t0);
        assert!((fast.cost(t0) - FLOOR_US).abs() < 1.0);
        // A slow answer counts though the connect was fast.
        fast.responded(Duration::from_millis(6), t0);
        assert!((fast.latency_us(t0) - 3000.0).abs() < 1.0);
    }

    #[test]
    fn consecutive_5xx_answers_eject_and_a_good_answer_ends_the_run() {
        let (e, t0) = (EndpointState::default(), Instant::now());
        let p = policy();
        // Two 5xx, then a 200: the run is over, two more do not eject.
        assert!(!e.errored(Some(&p), true, t0));
        assert!(!e.errored(Some(&p), true, t0));
        e.succeeded();
        assert!(!e.errored(Some(&p), true, t0));
        assert!(!e.errored(Some(&p), true, t0));
        // The third in a row does; an answer is not a failed connect.
        assert!(e.errored(Some(&p), true, t0));
        assert!(e.ejected_until(t0).is_some());
        assert_eq!(e.connect_failures.load(Relaxed), 0);
        // Without outlier detection, answers eject nothing.
        let plain = EndpointState::default();
        assert!((0..10).all(|_| !plain.errored(None, true, t0)));
    }

    #[test]
    fn consecutive_failures_eject_for_growing_times_and_probation_is_one_failure() {
        let (e, t0) = (EndpointState::default(), Instant::now());
        let p = policy();
        assert!(!e.failed(Some(&p), true, t0));
        assert!(!e.failed(Some(&p), true, t0));
        // Not while the service's ejection budget is spent.
        assert!(!e.failed(Some(&p), false, t0));
        assert!(e.failed(Some(&p), true, t0));
        assert_eq!(e.ejected_until(t0), Some(t0 + Duration::from_secs(30)));
        // Back after the ejection time; one failure takes it out again, for twice as long.
        let back = t0 + Duration::from_secs(31);
        assert_eq!(e.ejected_until(back), None);
        assert!(e.failed(Some(&p), true, back));
        assert_eq!(e.ejected_until(back), Some(back + Duration::from_secs(60)));
        // A success ends probation: it takes the full count again.
        let later = back + Duration::from_secs(61);
        e.connected(Duration::from_micros(50), later);
        assert!(!e.failed(Some(&p), true, later));
        assert!(!e.failed(Some(&p), true, later));
        assert!(e.failed(Some(&p), true, later));
        // Without outlier detection nothing is ever ejected.
        let plain = EndpointState::default();
        assert!((0..10).all(|_| !plain.failed(None, true, t0)));
    }

    #[test]
    fn the_multiplier_shrinks_while_the_endpoint_behaves() {
        let (e, t0) = (EndpointState::default(), Instant::now());
        let p = policy();
        for _ in 0..3 {
            e.failed(Some(&p), true, t0);
        }
        // Ejection ended at t0+30 s; six intervals later the multiplier (1) is back to 0.
        let much_later = t0 + Duration::from_secs(30 + 60);
        e.connected(Duration::from_micros(50), much_later);
        for _ in 0..3 {
            e.failed(Some(&p), true, much_later);
        }
        assert_eq!(e.ejected_until(much_later), Some(much_later + Duration::from_secs(30)));
    }
}
