//! The input directory: YAML files (several documents each), re-read when they change.
//!
//! Each file goes through [`nodemesh_input_file`] (bounded read, lexical precheck) and then the parser.
//! A file that fails anywhere is rejected whole and reported with its file, document, object
//! and field; the objects it last held keep serving, and the other files are read as usual,
//! so one bad edit never takes anything away. Deleting a file is how its objects are removed.
//! Identity clashes between objects are refused in favour of the one that arrived first
//! ([`clashes`]).
//!
//! A file is read only once its writer is done: when inotify said so (closed after writing,
//! or renamed into place, which is how controllers write), or when it has not changed for
//! [`SETTLE`]. Until then the scan leaves it alone and asks to be run again.

pub(crate) mod clashes;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use nodemesh_input_file::{self as input_file, Fingerprint, Limits, Problem};
use serde::{Deserialize, Serialize};

use crate::model::{
    AuthorizationPolicy, DestinationRule, FieldError, HttpRoute, Namespace, Node, Object, ObjectKey,
    PeerAuthentication, Pod, Service, TrafficPolicy, parse_document,
};
use clashes::Held;

/// How long a file must stay unchanged before it is read without word that its writer is
/// done. A writer caught mid-write almost always writes again within this; waiting longer
/// only delays files written in place by tools that do not close them promptly.
pub const SETTLE: Duration = Duration::from_millis(100);

/// A rejected file or object: why, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputError {
    pub file: String,
    /// 1-based; 0 for a problem with the file as a whole.
    pub document: usize,
    pub object: Option<String>,
    /// The field at fault (`(file)` and `(document)` for the file or document as a whole).
    #[serde(flatten)]
    pub error: FieldError,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": {}", self.error)
    }
}

impl std::error::Error for InputError {}

/// Everything the store serves, merged across files.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    pub nodes: BTreeMap<String, Arc<Node>>,
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub policies: Vec<Arc<AuthorizationPolicy>>,
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    /// At most one per service hostname (a second is a clash).
    pub destination_rules: Vec<Arc<DestinationRule>>,
    pub traffic_policies: Vec<Arc<TrafficPolicy>>,
    /// Any number per service: they are merged in Gateway API's precedence.
    pub http_routes: Vec<Arc<HttpRoute>>,
}

/// What the caller knows that the files cannot tell: which writers are done, and the time.
#[derive(Clone, Debug)]
pub struct Hints {
    /// Files closed after writing or renamed into place since the last scan.
    pub complete: HashSet<PathBuf>,
    pub now: SystemTime,
}

impl Hints {
    /// No word from inotify; the time is now.
    pub fn none() -> Self {
        Self { complete: HashSet::new(), now: SystemTime::now() }
    }
}

/// What a scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// The served objects or errors may have changed.
    pub changed: bool,
    /// Some files changed too recently to read: scan again after this long.
    pub again_in: Option<Duration>,
}

struct FileState {
    /// Of the version last read; None when even its metadata could not be read.
    fingerprint: Option<Fingerprint>,
    /// The last version of the file that was accepted.
    objects: Vec<Held>,
    error: Option<InputError>,
}

pub struct Store {
    dir: PathBuf,
    settle: Duration,
    files: BTreeMap<PathBuf, FileState>,
    /// Scans so far: objects are dated by the scan that first read them.
    generation: u64,
    /// Files seen changed but not read yet, with when this store first saw that version.
    unsettled: HashMap<PathBuf, (Fingerprint, Instant)>,
    clashes: Vec<InputError>,
    /// Resolves the Service a DestinationRule names, to find two rules for one service.
    domain_suffix: String,
}

/// How one changed file turned out.
type Outcome = Result<Vec<(usize, Object)>, InputError>;

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self::with_settle(dir, SETTLE)
    }

    pub fn with_settle(dir: &Path, settle: Duration) -> Self {
        Self {
            dir: dir.to_owned(),
            settle,
            files: BTreeMap::new(),
            generation: 0,
            unsettled: HashMap::new(),
            clashes: Vec::new(),
            domain_suffix: nodemesh_conventions::DEFAULT_DOMAIN_SUFFIX.into(),
        }
    }

    /// The mesh's DNS domain (`cluster.local` unless set), which a DestinationRule's host
    /// may be written in.
    #[must_use]
    pub fn with_domain_suffix(mut self, domain_suffix: &str) -> Self {
        domain_suffix.clone_into(&mut self.domain_suffix);
        self
    }

    /// Re-reads the files that changed and are complete. Fails only when the directory
    /// itself cannot be listed; a file's problem is that file's error.
    pub fn scan(&mut self, hints: &Hints) -> io::Result<Scanned> {
        self.generation += 1;
        let mut present = BTreeSet::new();
        let mut read: Vec<(PathBuf, Option<Fingerprint>, Outcome)> = Vec::new();
        let mut again_in: Option<Duration> = None;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                continue;
            }
            let fingerprint = match Fingerprint::stat(&path) {
                Ok((_, meta)) if meta.is_dir() => continue,
                Ok((fingerprint, _)) => fingerprint,
                // Removed meanwhile, or a dangling symlink: not an input.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    present.insert(path.clone());
                    let error = file_error(&path, &Problem::from(e));
                    if self.files.get(&path).is_none_or(|f| f.error.as_ref() != Some(&error)) {
                        read.push((path, None, Err(error)));
                    }
                    continue;
                }
            };
            present.insert(path.clone());
            if self.files.get(&path).is_some_and(|f| f.fingerprint == Some(fingerprint)) {
                self.unsettled.remove(&path);
                continue;
            }
            if !hints.complete.contains(&path)
                && let Some(wait) = self.unsettled_for(&path, fingerprint, hints.now)
            {
                again_in = Some(again_in.map_or(wait, |w| w.min(wait)));
                continue;
            }
            let limits = &Limits::CONTROL_PLANE;
            let outcome = match input_file::read(&path, limits)
                .and_then(|(_, text)| input_file::precheck(&text, limits).map(|()| text))
            {
                // Not done after all: look again once it settles.
                Err(Problem::ChangedWhileReading) => {
                    again_in = Some(again_in.map_or(self.settle, |w| w.min(self.settle)));
                    continue;
                }
                Err(problem) => Err(file_error(&path, &problem)),
                Ok(text) => parse_file(&path, &text),
            };
            self.unsettled.remove(&path);
            read.push((path, Some(fingerprint), outcome));
        }
        self.unsettled.retain(|p, _| present.contains(p));
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(*p)).cloned().collect();
        let changed = !gone.is_empty() || !read.is_empty();

        // Objects leaving a file in this scan keep their place if they turn up in another one
        // (a file renamed, an object moved): otherwise a newcomer refused for clashing with
        // them would win once they moved.
        let mut leaving: HashMap<ObjectKey, Held> = HashMap::new();
        for path in gone {
            tracing::info!(file = %path.display(), "input removed");
            if let Some(state) = self.files.remove(&path) {
                state.objects.into_iter().for_each(|h| keep_earliest(&mut leaving, h));
            }
        }
        for (path, _, outcome) in &read {
            if let (Ok(objects), Some(state)) = (outcome, self.files.get(path)) {
                let staying: HashSet<ObjectKey> = objects.iter().map(|(_, o)| o.key()).collect();
                for held in state.objects.iter().filter(|h| !staying.contains(&h.object.key())) {
                    keep_earliest(&mut leaving, held.clone());
                }
            }
        }
        for (path, fingerprint, outcome) in read {
            let previous = self.files.remove(&path);
            let state = match outcome {
                Ok(objects) => {
                    tracing::info!(file = %path.display(), objects = objects.len(), "input accepted");
                    let before: HashMap<ObjectKey, &Held> = previous
                        .iter()
                        .flat_map(|p| &p.objects)
                        .rev() // the first of duplicates wins
                        .map(|h| (h.object.key(), h))
                        .collect();
                    let objects = objects
                        .into_iter()
                        .map(|(document, object)| {
                            let key = object.key();
                            let earlier = before.get(&key).copied().or_else(|| leaving.get(&key));
                            Held::new(object, document, earlier, &self.domain_suffix, self.generation)
                        })
                        .collect();
                    FileState { fingerprint, objects, error: None }
                }
                Err(error) => {
                    tracing::error!(%error, "input rejected; its last good objects keep serving");
                    FileState {
                        fingerprint,
                        objects: previous.map(|p| p.objects).unwrap_or_default(),
                        error: Some(error),
                    }
                }
            };
            self.files.insert(path, state);
        }
        Ok(Scanned { changed, again_in })
    }

    /// None when the version `fingerprint` of `path` may be read now; else how much longer
    /// it must stay unchanged.
    fn unsettled_for(&mut self, path: &Path, fingerprint: Fingerprint, now: SystemTime) -> Option<Duration> {
        let age = now.duration_since(fingerprint.changed_at()).ok();
        if age.is_some_and(|a| a >= self.settle) {
            return None;
        }
        // Changed just now, or dated in the future (the clock went back): settled once this
        // store has seen it unchanged for as long.
        let seen = self.unsettled.entry(path.to_owned()).or_insert((fingerprint, Instant::now()));
        if seen.0 != fingerprint {
            *seen = (fingerprint, Instant::now());
        }
        let waited = age.into_iter().chain([seen.1.elapsed()]).max().unwrap_or_default();
        // At least a millisecond: the change time is coarser than the clock.
        self.settle.checked_sub(waited).map(|w| w.max(Duration::from_millis(1)))
    }

    /// The objects served: every file's accepted objects, clashes refused.
    pub fn inputs(&mut self) -> Inputs {
        let (inputs, clashes) =
            clashes::resolve(self.files.iter().map(|(path, f)| (path.as_path(), f.objects.as_slice())));
        for clash in &clashes {
            if !self.clashes.contains(clash) {
                tracing::error!(error = %clash, "object refused");
            }
        }
        self.clashes = clashes;
        inputs
    }

    /// Every current problem with the input (clashes as of the last [`Store::inputs`]).
    pub fn errors(&self) -> Vec<InputError> {
        self.files.values().filter_map(|f| f.error.clone()).chain(self.clashes.iter().cloned()).collect()
    }
}

/// Of two leaving definitions of one object, the one that arrived first.
fn keep_earliest(leaving: &mut HashMap<ObjectKey, Held>, held: Held) {
    let key = held.object.key();
    match leaving.get(&key) {
        Some(other) if other.key_since() <= held.key_since() => {}
        _ => {
            leaving.insert(key, held);
        }
    }
}

fn file_error(path: &Path, problem: &Problem) -> InputError {
    InputError {
        file: path.display().to_string(),
        document: 0,
        object: None,
        error: FieldError::new("(file)", problem.to_string()),
    }
}

/// The objects of a file, with their (1-based) document numbers.
fn parse_file(path: &Path, text: &str) -> Outcome {
    let file = path.display().to_string();
    let mut objects = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = |object: Option<String>, error: FieldError| InputError {
            file: file.clone(),
            document: i + 1,
            object,
            error,
        };
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| at(None, FieldError::new("(document)", e.to_string())))?;
        let name = describe(&value);
        if let Some(object) = parse_document(value).map_err(|e| at(name, e))? {
            objects.push((i + 1, object));
        }
    }
    Ok(objects)
}

/// "Pod shop/cart-0", from whatever parses, to say which object a failed document is.
fn describe(doc: &serde_yaml::Value) -> Option<String> {
    let kind = doc.get("kind")?.as_str()?;
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    Some(match meta.get("namespace").and_then(serde_yaml::Value::as_str) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    })
}

#[cfg(test)]
mod tests;
