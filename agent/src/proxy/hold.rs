//! Holding a connection to a service scaled to zero: the app's bytes wait in the accepted
//! socket (bounded by its receive buffer) while the autoscaler is asked for capacity, until
//! an endpoint appears in the directory or the hold times out. At most `maxHeld`
//! connections per service wait at once; more are refused at once.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use super::{Proxy, balance::ServiceState};
use crate::{directory::Directory, services::ServiceInfo};

/// Waits for the service to have an endpoint; the directory that has one, or the flow's
/// reason.
pub async fn hold(
    proxy: &Proxy,
    state: &Arc<ServiceState>,
    service: &ServiceInfo,
) -> Result<Arc<Directory>, &'static str> {
    let Some(policy) = &service.policy.scale_from_zero else { return Err("no_endpoints") };
    let Some(_held) = Held::new(state, policy.max_held) else {
        state.counters.held_refused.fetch_add(1, Relaxed);
        return Err("hold_full");
    };
    let mut changes = proxy.state.directory_changes.subscribe();
    proxy.ask_autoscaler(&service.name, policy, state.held.load(Relaxed));
    let deadline = Instant::now() + policy.hold_timeout;
    loop {
        let directory = proxy.directory();
        if let Some(now) = directory.service_named(&service.name)
            && now.endpoints.iter().any(|e| e.healthy || now.load_balancing.allow_unhealthy)
        {
            return Ok(directory);
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, changes.changed()).await {
            Ok(Ok(())) => {
                // Still waiting: remind the autoscaler once per hold window.
                proxy.ask_autoscaler(&service.name, policy, state.held.load(Relaxed));
            }
            Ok(Err(_)) | Err(_) => {
                state.counters.held_timed_out.fetch_add(1, Relaxed);
                return Err("hold_timeout");
            }
        }
    }
}

/// A connection counted among its service's held ones.
struct Held<'s>(&'s ServiceState);

impl<'s> Held<'s> {
    fn new(state: &'s ServiceState, max: u32) -> Option<Self> {
        state.held.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok().map(|_| Self(state))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Relaxed);
    }
}
