//! The input thread: re-reads the directory when inotify says something in it changed (and,
//! as a safety net, every `poll`), rebuilds the world, and publishes it.
//!
//! Reading YAML and translating it is blocking work, so it runs on its own thread, off the
//! async runtime that serves the streams.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use notify::{
    EventKind, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode},
};
use tokio::sync::watch;

use crate::{admin::Served, store::Store, world::MeshSettings, world::World};

pub struct InputLoop {
    pub store: Store,
    pub dir: PathBuf,
    pub mesh: MeshSettings,
    pub poll: Duration,
    pub served: Arc<Mutex<Served>>,
    pub world: watch::Sender<Arc<World>>,
    pub generation: u64,
}

impl InputLoop {
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new().name("nm-cp-inputs".into()).spawn(move || self.run()).map(|_| ())
    }

    fn run(mut self) {
        let (tx, rx) = mpsc::channel();
        // Without inotify (e.g. out of watches) the poll still picks changes up, only later.
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Only what changes the directory's content: reading it (our own scans open the
            // directory and files) must not wake us again.
            if event.is_ok_and(|e| {
                matches!(
                    e.kind,
                    EventKind::Create(_)
                        | EventKind::Modify(_)
                        | EventKind::Remove(_)
                        | EventKind::Access(AccessKind::Close(AccessMode::Write))
                )
            }) {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&self.dir, RecursiveMode::NonRecursive).map(|()| w));
        if let Err(e) = &watcher {
            tracing::warn!(dir = %self.dir.display(), error = %e, poll = ?self.poll,
                "cannot watch the input directory; polling it instead");
        }
        loop {
            match rx.recv_timeout(self.poll) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The watcher is gone (it failed to start): poll only.
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(self.poll),
            }
            // One scan covers every event queued so far.
            while rx.try_recv().is_ok() {}
            if self.world.is_closed() {
                return;
            }
            self.rescan();
        }
    }

    fn rescan(&mut self) {
        match self.store.scan() {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the input directory");
                return;
            }
        }
        self.generation += 1;
        let started = std::time::Instant::now();
        let previous = Arc::clone(&self.world.borrow());
        let world = World::build(&self.store.inputs(), &self.mesh, self.generation, Some(&previous));
        drop(previous);
        record(&self.served, &world, self.store.errors());
        let changed = world.delta.as_ref().map_or(0, |d| d.addresses.len() + d.authorizations.len());
        tracing::info!(
            generation = self.generation,
            changed,
            took_ms = started.elapsed().as_millis() as u64,
            "serving a new state"
        );
        self.world.send_replace(Arc::new(world));
    }
}

pub fn record(served: &Mutex<Served>, world: &World, errors: Vec<crate::store::InputError>) {
    *served.lock().unwrap_or_else(|p| p.into_inner()) = Served {
        generation: world.generation,
        addresses: world.addresses.len(),
        authorizations: world.authorizations.len(),
        input_errors: errors,
    };
}
