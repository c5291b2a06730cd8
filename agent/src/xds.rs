//! The control-plane source: a delta ADS client (Envoy's incremental xDS, as ztunnel speaks
//! it to istiod) for Istio's workload API and L4 policy.
//!
//! - Starts from the snapshot on disk, if any, so a restarted agent serves its last good state
//!   while the control plane is away.
//! - Each response is checked whole; a bad one is NACKed with a reason that names the
//!   resource and the field, and the state stays as it was. A good one is applied, published
//!   to the reconciler and ACKed; the state is written to disk atomically once a burst of
//!   responses settles (`persist`), and on shutdown.
//! - Reconnects with exponential backoff and jitter, telling the server what it holds, so only
//!   what changed meanwhile comes back.

mod persist;
pub mod resources;
mod session;
pub mod snapshot;
pub mod state;
pub mod translate;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nodemesh_conventions::text;
use tokio::sync::watch;

pub use crate::report::status::{Nack, SyncStatus};
use crate::spec::NodeSpec;

#[derive(Clone, Debug)]
pub struct XdsSettings {
    /// e.g. `https://istiod.istio-system:15012`, or `http://...:15010` (plaintext).
    pub address: String,
    pub node_name: String,
    pub snapshot: PathBuf,
    /// For an `https://` address: the root the control plane's certificate must chain to.
    pub roots: Option<Arc<crate::identity::MeshRoots>>,
    /// Sent as `authorization: Bearer`, as ztunnel sends its token to istiod (read per
    /// stream, so a rotated token is used at the next reconnect).
    pub token_file: Option<PathBuf>,
    pub cluster_id: String,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Everything the xDS task shares with the rest of the agent.
pub struct XdsHandle {
    pub settings: XdsSettings,
    pub status: Mutex<SyncStatus>,
    pub state: Mutex<state::State>,
    spec: watch::Sender<Arc<NodeSpec>>,
    /// Bumped on every accepted response; `saved` is the value last written to disk.
    accepted: watch::Sender<u64>,
    saved: AtomicU64,
    persisting: Mutex<()>,
}

impl XdsHandle {
    fn status(&self) -> std::sync::MutexGuard<'_, SyncStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, state::State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what was accepted and not yet persisted (for a clean shutdown).
    pub fn flush(&self) {
        persist::save(self);
    }

    /// Publishes the node's spec from the current state, and refreshes the counts.
    fn publish(&self) {
        let (spec, counts) = {
            let state = self.state();
            (state.node_spec(&self.settings.node_name), state.counts(&self.settings.node_name))
        };
        self.status().counts = counts;
        self.spec.send_replace(Arc::new(spec));
    }
}

/// Starts the source: loads the snapshot (if any) now, then syncs in the background.
pub fn start(settings: XdsSettings) -> (Arc<XdsHandle>, watch::Receiver<Arc<NodeSpec>>) {
    let (tx, rx) = watch::channel(Arc::new(NodeSpec::default()));
    let shared = Arc::new(XdsHandle {
        status: Mutex::new(SyncStatus { control_plane: settings.address.clone(), ..Default::default() }),
        state: Mutex::default(),
        spec: tx,
        settings,
        accepted: watch::channel(0).0,
        saved: AtomicU64::new(0),
        persisting: Mutex::new(()),
    });
    load_snapshot(&shared);
    tokio::spawn(run(Arc::clone(&shared)));
    tokio::spawn(persist::run(Arc::clone(&shared)));
    (shared, rx)
}

fn load_snapshot(shared: &XdsHandle) {
    let path = &shared.settings.snapshot;
    let refuse = |why: String| {
        tracing::error!(path = %path.display(), error = %why,
            "not serving the snapshot; holding the hooks earlier agents pinned until the control plane answers");
        shared.status().snapshot_error = Some(why);
    };
    match snapshot::load(path) {
        Ok(None) => {}
        Ok(Some(snap)) => match state::State::from_snapshot(&snap) {
            Ok(state) => {
                tracing::info!(path = %path.display(), age_s = unix_now().saturating_sub(snap.accepted_unix_seconds as u64),
                    "serving the last accepted state from disk until the control plane answers");
                *shared.state() = state;
                let mut status = shared.status();
                status.from_disk = true;
                status.accepted_unix_s = Some(snap.accepted_unix_seconds as u64);
                drop(status);
                shared.publish();
            }
            Err(e) => refuse(format!("{}: a resource does not check: {e}", path.display())),
        },
        Err(e) => refuse(e.to_string()),
    }
}

async fn run(shared: Arc<XdsHandle>) {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(15));
    loop {
        let outcome = session::run(&shared).await;
        {
            let mut status = shared.status();
            status.connected = false;
            status.connected_since_unix_s = None;
            // The control plane's own words (a gRPC status message): bounded.
            status.last_error = outcome.error.as_ref().map(|e| text::peer(&e.to_string()).into_owned());
        }
        if outcome.received {
            backoff.reset();
        }
        let wait = backoff.next();
        match &outcome.error {
            Some(e) => {
                tracing::warn!(error = %text::peer(&e.to_string()), retry_in = ?wait, "control plane stream ended")
            }
            None => tracing::info!(retry_in = ?wait, "control plane closed the stream"),
        }
        tokio::time::sleep(wait).await;
    }
}
