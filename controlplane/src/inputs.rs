//! The input thread: re-reads the directory when inotify says something in it changed (and,
//! as a safety net, every `poll`), rebuilds the world, and publishes it.
//!
//! inotify also says when a file's writer is done (it closed the file after writing, or
//! renamed it into place): such files are read at once. Others are read once they have not
//! changed for `store::SETTLE`, so the loop scans again then even without a new event.
//!
//! Reading YAML and translating it is blocking work, so it runs on its own thread, off the
//! async runtime that serves the streams.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, SystemTime},
};

use notify::{
    EventKind, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
};
use tokio::sync::watch;

use crate::{
    admin::Served,
    store::{Hints, Store},
    world::MeshSettings,
    world::World,
};

/// The directory's inotify watch. Started before the first scan, so that no change made
/// after that scan read the directory goes unnoticed until the poll.
pub struct Watch {
    rx: mpsc::Receiver<Wake>,
    /// None when inotify is unavailable (e.g. out of watches): the poll still picks changes
    /// up, only later. Dropping it ends the events.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Watch {
    pub fn start(dir: &std::path::Path, poll: Duration) -> Self {
        let (tx, rx) = mpsc::channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                for wake in wakes(event) {
                    let _ = tx.send(wake);
                }
            }
        })
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
        if let Err(e) = &watcher {
            tracing::warn!(dir = %dir.display(), error = %e, ?poll,
                "cannot watch the input directory; polling it instead");
        }
        Self { rx, _watcher: watcher.ok() }
    }
}

pub struct InputLoop {
    pub watch: Watch,
    pub store: Store,
    pub dir: PathBuf,
    pub mesh: MeshSettings,
    pub poll: Duration,
    pub served: Arc<Mutex<Served>>,
    pub world: watch::Sender<Arc<World>>,
    pub generation: u64,
    /// Files were left unread because they were still changing: scan again after this.
    pub again_in: Option<Duration>,
}

/// What an event tells the loop.
enum Wake {
    /// Something in the directory changed.
    Changed,
    /// And this file's writer is done with it.
    Complete(PathBuf),
}

/// The events that change the directory's content, and the files they say are complete.
/// Reading does not count: our own scans open the directory and files, and must not wake us.
/// A file's creation does not say it is complete: a writer creates a file before writing it.
fn wakes(event: notify::Event) -> Vec<Wake> {
    let complete = match &event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event.paths.first(),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.get(1),
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => None,
        // Events were lost (the inotify queue overflowed): look at everything.
        EventKind::Other | EventKind::Any => None,
        EventKind::Access(_) => return Vec::new(),
    };
    let mut wakes = vec![Wake::Changed];
    wakes.extend(complete.cloned().map(Wake::Complete));
    wakes
}

impl InputLoop {
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new().name("nm-cp-inputs".into()).spawn(move || self.run()).map(|_| ())
    }

    fn run(mut self) {
        let mut complete = HashSet::new();
        loop {
            let wait = self.again_in.map_or(self.poll, |w| w.min(self.poll));
            match self.watch.rx.recv_timeout(wait) {
                Ok(Wake::Complete(path)) => {
                    complete.insert(path);
                }
                Ok(Wake::Changed) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The watcher is gone (it failed to start): poll only.
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
            // One scan covers every event queued so far.
            while let Ok(wake) = self.watch.rx.try_recv() {
                if let Wake::Complete(path) = wake {
                    complete.insert(path);
                }
            }
            if self.world.is_closed() {
                return;
            }
            let hints = Hints { complete: std::mem::take(&mut complete), now: SystemTime::now() };
            self.rescan(&hints);
        }
    }

    fn rescan(&mut self, hints: &Hints) {
        self.again_in = None;
        match self.store.scan(hints) {
            Ok(scanned) => {
                self.again_in = scanned.again_in;
                if !scanned.changed {
                    return;
                }
            }
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
        service_policies: world.service_policies.len(),
        http_routes: world.http_routes.len(),
        input_errors: errors,
    };
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, RemoveKind};

    use super::*;

    fn complete(kind: EventKind, paths: &[&str]) -> (usize, Vec<PathBuf>) {
        let event = paths.iter().fold(notify::Event::new(kind), |e, p| e.add_path(PathBuf::from(p)));
        let wakes = wakes(event);
        let done = wakes
            .iter()
            .filter_map(|w| match w {
                Wake::Complete(p) => Some(p.clone()),
                Wake::Changed => None,
            })
            .collect();
        (wakes.len(), done)
    }

    #[test]
    fn only_a_close_after_writing_or_a_rename_into_place_says_a_file_is_complete() {
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(complete(close, &["/d/a.yaml"]), (2, vec![PathBuf::from("/d/a.yaml")]));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(complete(to, &["/d/a.yaml"]), (2, vec![PathBuf::from("/d/a.yaml")]));
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(complete(both, &["/d/.a.tmp", "/d/a.yaml"]), (2, vec![PathBuf::from("/d/a.yaml")]));
        // A writer creates a file before writing it, and is still writing while it modifies it.
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert_eq!(complete(kind, &["/d/a.yaml"]), (1, vec![]), "{kind:?}");
        }
        assert_eq!(complete(EventKind::Other, &[]), (1, vec![]), "an overflow wakes a scan");
        // Reading wakes nothing (our own scans read).
        let open = EventKind::Access(AccessKind::Open(notify::event::AccessMode::Read));
        assert_eq!(complete(open, &["/d/a.yaml"]), (0, vec![]));
    }
}
