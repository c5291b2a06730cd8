//! Watching the enrollment file: each changed version is read with the bounded reader, checked
//! whole, and put in force only if it is good; the last good version serves meanwhile.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use nodemesh_input_file::{self as input_file, Fingerprint, Limits, Problem};
use tokio::sync::watch;

use super::parse_after;
pub use crate::report::status::SourceStatus;
use crate::spec::NodeSpec;

/// How often the file is checked. Polling a small file is cheap and, unlike inotify, sees
/// every way a file can be replaced (rename, symlink swap as in ConfigMap volumes).
const POLL: Duration = Duration::from_millis(200);

/// How much the enrollment file may hold (one document listing one node's pods).
pub const LIMITS: Limits = Limits {
    // A node's pods take a few hundred bytes each: 4 MiB is thousands of pods.
    max_bytes: 4 << 20,
    // One document (a leading `---` makes an empty first one).
    max_documents: 2,
    max_depth: 16,
    max_scalar_bytes: 64 << 10,
    how_to_empty: "to enroll no pod, write `pods: []`",
};

/// A version younger than this may still be being written: it is looked at again on a later
/// poll (a file written in place can be caught between two writes of its writer).
const SETTLE: Duration = POLL;

/// Watches the enrollment file and publishes every accepted version.
///
/// The file is checked whole before any of it takes effect (bounded, UTF-8, ending with a
/// newline, settled, parsed, validated); any problem is an error naming the file, shown in
/// `/status` and the log, and the last good version keeps serving. An unchanged file is not
/// read again; the same good bytes coming back (after a bad version, or after the file was
/// removed or renamed) clear the error.
pub struct FileSource {
    path: PathBuf,
    status: Arc<Mutex<SourceStatus>>,
    tx: watch::Sender<Arc<NodeSpec>>,
    /// The text of the version in force.
    accepted: Option<String>,
    /// The version last read, accepted or not.
    seen: Option<Fingerprint>,
    /// [`SETTLE`], except in unit tests.
    settle: Duration,
}

impl FileSource {
    pub fn new(path: &Path) -> (Self, watch::Receiver<Arc<NodeSpec>>, Arc<Mutex<SourceStatus>>) {
        let (tx, rx) = watch::channel(Arc::new(NodeSpec::default()));
        let status = Arc::new(Mutex::new(SourceStatus { path: path.to_owned(), ..Default::default() }));
        let source = Self {
            path: path.to_owned(),
            status: Arc::clone(&status),
            tx,
            accepted: None,
            seen: None,
            settle: SETTLE,
        };
        (source, rx, status)
    }

    /// Checks the file once; returns whether a new spec was published.
    pub fn poll(&mut self) -> bool {
        let fingerprint = match Fingerprint::stat(&self.path) {
            Ok((fingerprint, _)) => fingerprint,
            Err(e) => {
                self.seen = None;
                self.reject(&format!("cannot read it: {e}"));
                return false;
            }
        };
        if self.seen == Some(fingerprint) {
            return false;
        }
        let age = SystemTime::now().duration_since(fingerprint.changed_at()).unwrap_or_default();
        if age < self.settle {
            return false;
        }
        let text = match input_file::read(&self.path, &LIMITS) {
            Ok((read, text)) => {
                self.seen = Some(read);
                text
            }
            // Looked at again on the next poll.
            Err(Problem::ChangedWhileReading) => return false,
            Err(problem) => {
                self.seen = Some(fingerprint);
                self.reject(&problem.to_string());
                return false;
            }
        };
        if self.accepted.as_deref() == Some(text.as_str()) {
            self.clear_error();
            return false;
        }
        if let Err(problem) = input_file::precheck(&text, &LIMITS) {
            self.reject(&problem.to_string());
            return false;
        }
        let current = Arc::clone(&self.tx.borrow());
        match parse_after(&text, &current) {
            Ok(spec) => {
                tracing::info!(path = %self.path.display(), pods = spec.pods.len(), "enrollment file accepted");
                let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                status.generation += 1;
                status.last_error = None;
                status.last_accepted_unix_s =
                    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs());
                drop(status);
                self.accepted = Some(text);
                self.tx.send_replace(Arc::new(spec));
                true
            }
            Err(e) => {
                self.reject(&e.to_string());
                false
            }
        }
    }

    fn reject(&self, problem: &str) {
        let message = format!("{}: {problem}", self.path.display());
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.last_error.as_deref() != Some(message.as_str()) {
            tracing::error!(error = %message, "enrollment file rejected; keeping the last good state");
            status.last_error = Some(message);
        }
    }

    fn clear_error(&self) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.last_error.take().is_some() {
            tracing::info!(path = %self.path.display(), "enrollment file is the version in force again");
        }
    }

    /// Polls forever, each poll on a blocking thread: reading and parsing never hold the
    /// control runtime's one thread, which also serves the admin API and readiness.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self = match tokio::task::spawn_blocking(move || {
                self.poll();
                self
            })
            .await
            {
                Ok(source) => source,
                Err(_) => return,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::tests::GOOD, *};

    /// A source that reads a version as soon as it sees it (no settling), and its outputs.
    fn source(path: &Path) -> (FileSource, watch::Receiver<Arc<NodeSpec>>, Arc<Mutex<SourceStatus>>) {
        let (mut source, rx, status) = FileSource::new(path);
        source.settle = Duration::ZERO;
        (source, rx, status)
    }

    fn last_error(status: &Mutex<SourceStatus>) -> Option<String> {
        status.lock().expect("lock").last_error.clone()
    }

    #[test]
    fn a_bad_file_keeps_the_last_good_spec() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("enrollment.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let (mut source, rx, status) = source(&path);
        assert!(source.poll());
        assert_eq!(rx.borrow().pods.len(), 1);

        let bad: [(&str, &[u8], &str); 8] = [
            ("unparsable", b"pods: [ {uid: 12\n", "pods"),
            ("empty", b"", "pods: []"),
            ("comments only", b"# nothing yet\n", "pods: []"),
            ("separators only", b"---\n...\n---\n", "pods: []"),
            ("cut mid-write", &GOOD.as_bytes()[..GOOD.len() - 7], "newline"),
            ("not UTF-8", b"pods: [\xff]\n", "UTF-8"),
            ("no pods key", b"namespaces: []\n", "pods: []"),
            ("an alias", b"pods: &p []\n", "alias"),
        ];
        for (what, bytes, says) in bad {
            std::fs::write(&path, bytes).expect("write");
            assert!(!source.poll(), "{what}");
            assert_eq!(rx.borrow().pods.len(), 1, "{what}: the last good spec stays");
            let error = last_error(&status).unwrap_or_default();
            assert!(error.contains("enrollment.yaml") && error.contains(says), "{what}: {error}");
        }

        std::fs::write(&path, GOOD.replace("cart-0", "cart-1")).expect("write");
        assert!(source.poll());
        assert_eq!(rx.borrow().pods[0].name, "cart-1");
        assert_eq!(last_error(&status), None);

        // Emptying the node is said explicitly.
        std::fs::write(&path, "pods: []\n").expect("write");
        assert!(source.poll());
        assert!(rx.borrow().pods.is_empty());
    }

    #[test]
    fn errors_clear_when_the_good_version_is_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("enrollment.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let (mut source, _rx, status) = source(&path);
        assert!(source.poll());

        // The same bytes after a bad version.
        std::fs::write(&path, "pods: [\n").expect("write");
        source.poll();
        assert!(last_error(&status).is_some());
        std::fs::write(&path, GOOD).expect("write");
        source.poll();
        assert_eq!(last_error(&status), None, "the same good bytes again");

        // Removed, then recreated.
        std::fs::remove_file(&path).expect("rm");
        source.poll();
        assert!(last_error(&status).is_some_and(|e| e.contains("cannot read")));
        std::fs::write(&path, GOOD).expect("write");
        source.poll();
        assert_eq!(last_error(&status), None, "recreated");

        // Renamed away and a good file renamed into place.
        std::fs::rename(&path, dir.path().join("elsewhere.yaml")).expect("mv");
        source.poll();
        assert!(last_error(&status).is_some());
        let tmp = dir.path().join("new.tmp");
        std::fs::write(&tmp, GOOD).expect("write");
        std::fs::rename(&tmp, &path).expect("mv");
        source.poll();
        assert_eq!(last_error(&status), None, "renamed into place");
    }

    #[test]
    fn a_fresh_version_waits_until_it_settles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("enrollment.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let (mut source, rx, _status) = FileSource::new(&path);
        assert!(!source.poll(), "written this instant: maybe still being written");
        assert!(!rx.borrow().authoritative);
        std::thread::sleep(SETTLE + Duration::from_millis(20));
        assert!(source.poll());
    }
}
