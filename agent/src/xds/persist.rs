//! Writes the accepted state to disk once a burst of responses settles, instead of after
//! each one: a full sync of a large mesh arrives as dozens of chunks, and writing (and
//! fsyncing) the whole state after every chunk would cost far more than the sync itself.
//!
//! The cost is a window of `COALESCE` in which an accepted change is served and ACKed but not
//! yet on disk; a clean shutdown flushes it, so only a crash inside that window loses it, and
//! the control plane then sends it again on reconnect.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use super::{XdsHandle, snapshot, unix_now};

const COALESCE: Duration = Duration::from_millis(200);

/// Saves whenever the state changed, at most every `COALESCE`.
pub async fn run(shared: Arc<XdsHandle>) {
    let mut changed = shared.accepted.subscribe();
    while changed.changed().await.is_ok() {
        tokio::time::sleep(COALESCE).await;
        changed.borrow_and_update();
        let shared = Arc::clone(&shared);
        // Encoding and fsync are blocking work.
        let _ = tokio::task::spawn_blocking(move || save(&shared)).await;
    }
}

/// Writes the state if something was accepted since the last write.
pub fn save(shared: &XdsHandle) {
    let _one_writer = shared.persisting.lock().unwrap_or_else(|p| p.into_inner());
    let generation = *shared.accepted.borrow();
    if shared.saved.load(Ordering::Acquire) == generation {
        return;
    }
    let snapshot = shared.state().to_snapshot(&shared.settings.address, unix_now() as i64);
    match snapshot::save(&shared.settings.snapshot, &snapshot) {
        Ok(()) => shared.saved.store(generation, Ordering::Release),
        // Serving goes on; only a restart without the control plane would miss this state.
        Err(e) => {
            tracing::error!(path = %shared.settings.snapshot.display(), error = %e, "cannot persist the state")
        }
    }
}
