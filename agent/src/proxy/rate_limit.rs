//! Rate limits per source identity, enforced where the proxy is the destination's side (a
//! pod of this node): new connections per second as a token bucket and connections open at
//! once, each source identity with its own, per service. The limits are the service's
//! TrafficPolicy's (the first whose principals match the source applies).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    time::Instant,
};

use super::{context::Classified, revoke::Subject};
use crate::{directory::Directory, services::RateLimit};

/// The destination service's limits on a connection authorized here (`subject`: this proxy
/// is the destination's side); `Err` is the flow's reason.
pub fn check(
    limits: &RateLimits,
    subject: Option<&Subject>,
    classified: &Classified,
    directory: &Directory,
) -> Result<Option<Open>, String> {
    let Some(subject) = subject else { return Ok(None) };
    limits
        .admit(directory, classified.service.as_deref(), subject.caller_identity.as_ref())
        .map_err(|which| format!("{which}_limited"))
}

/// Buckets kept at most; past it, idle ones (full, nothing open) are dropped first.
const MAX_BUCKETS: usize = 65_536;
/// The identity a source the proxy cannot vouch for is limited as.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// (service, source identity).
type Key = (Arc<str>, Arc<str>);
/// (service, source identity, which limit: `rate` or `concurrency`).
type RefusalKey = (Arc<str>, Arc<str>, &'static str);

#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<Key, Arc<Bucket>>>,
    /// Refusals by (service, source identity, which limit), for metrics.
    refused: Mutex<HashMap<RefusalKey, u64>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: Mutex<(f64, Instant)>,
    open: AtomicU32,
}

/// A connection counted among its source's open ones until dropped.
pub struct Open(Arc<Bucket>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

impl RateLimits {
    /// Checks a new connection from `identity` (None: not authenticated) to `service`.
    /// `Ok(None)`: no limit applies.
    pub fn admit(
        &self,
        directory: &Directory,
        service: Option<&str>,
        identity: Option<&Arc<str>>,
    ) -> Result<Option<Open>, &'static str> {
        let Some(info) = service.and_then(|s| directory.service_named(s)) else { return Ok(None) };
        let Some(limit) = info.policy.rate_limits.iter().find(|l| l.applies_to(identity.map(|i| &**i)))
        else {
            return Ok(None);
        };
        let who: Arc<str> = identity.cloned().unwrap_or_else(|| UNAUTHENTICATED.into());
        let bucket = self.bucket((Arc::clone(&info.name), Arc::clone(&who)), limit);
        let result = bucket.take(limit, Instant::now());
        if let Err(which) = result {
            let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            if refused.len() < MAX_BUCKETS
                || refused.contains_key(&(Arc::clone(&info.name), Arc::clone(&who), which))
            {
                *refused.entry((Arc::clone(&info.name), who, which)).or_default() += 1;
            }
        }
        result.map(|()| Some(Open(bucket)))
    }

    fn bucket(&self, key: Key, limit: &RateLimit) -> Arc<Bucket> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|_, b| Arc::strong_count(b) > 1 || b.open.load(Relaxed) > 0);
        }
        let full = f64::from(limit.burst);
        Arc::clone(buckets.entry(key).or_insert_with(|| {
            Arc::new(Bucket { tokens: Mutex::new((full, Instant::now())), open: AtomicU32::new(0) })
        }))
    }

    /// Refusals so far: (service, source identity, `rate` or `concurrency`) → count.
    pub fn refusals(&self) -> Vec<((String, String, &'static str), u64)> {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> =
            refused.iter().map(|((s, i, w), n)| ((s.to_string(), i.to_string(), *w), *n)).collect();
        list.sort();
        list
    }
}

impl Bucket {
    fn take(&self, limit: &RateLimit, now: Instant) -> Result<(), &'static str> {
        if limit.max_concurrent > 0
            && self
                .open
                .fetch_update(Relaxed, Relaxed, |n| (n < limit.max_concurrent).then_some(n + 1))
                .is_err()
        {
            return Err("concurrency");
        }
        if limit.max_concurrent == 0 {
            self.open.fetch_add(1, Relaxed);
        }
        if limit.connections_per_second > 0 {
            let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            let refill = now.saturating_duration_since(tokens.1).as_secs_f64()
                * f64::from(limit.connections_per_second);
            tokens.0 = (tokens.0 + refill).min(f64::from(limit.burst));
            tokens.1 = now;
            if tokens.0 < 1.0 {
                self.open.fetch_sub(1, Relaxed);
                return Err("rate");
            }
            tokens.0 -= 1.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(per_second: u32, burst: u32, concurrent: u32) -> RateLimit {
        RateLimit {
            principals: Vec::new(),
            connections_per_second: per_second,
            burst,
            max_concurrent: concurrent,
        }
    }

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let b = Bucket { tokens: Mutex::new((2.0, Instant::now())), open: AtomicU32::new(0) };
        let (l, t0) = (limit(10, 2, 0), Instant::now());
        assert_eq!((b.take(&l, t0), b.take(&l, t0), b.take(&l, t0)), (Ok(()), Ok(()), Err("rate")));
        // 100 ms: one token back.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((b.take(&l, t1), b.take(&l, t1)), (Ok(()), Err("rate")));
        // Long idle: never more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((b.take(&l, t2), b.take(&l, t2), b.take(&l, t2)), (Ok(()), Ok(()), Err("rate")));
    }

    #[test]
    fn concurrency_counts_open_connections() {
        let b = Arc::new(Bucket { tokens: Mutex::new((0.0, Instant::now())), open: AtomicU32::new(0) });
        let l = limit(0, 0, 2);
        let now = Instant::now();
        b.take(&l, now).expect("first");
        let first = Open(Arc::clone(&b));
        b.take(&l, now).expect("second");
        let _second = Open(Arc::clone(&b));
        assert_eq!(b.take(&l, now), Err("concurrency"));
        drop(first);
        assert_eq!(b.take(&l, now), Ok(()));
    }
}
