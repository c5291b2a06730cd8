//! A Kubernetes API-server double, speaking the real protocol over plain HTTP/1.1: LIST
//! (`{"kind":"PodList","metadata":{"resourceVersion":"N"},"items":[...]}`), chunked WATCH
//! streams (`?watch=true&resourceVersion=N&allowWatchBookmarks=true`) of
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK","object":{...}}` lines, 410 Gone (an `ERROR`
//! event with a `Status` of code 410) when a watch asks for a version that is compacted away,
//! 404 for a resource whose CRD is not installed, and dropped connections on demand.
//!
//! Beyond reading, what the control plane's CA writes and asks: `POST
//! /apis/authentication.k8s.io/v1/tokenreviews` answered from a table of known tokens (as the
//! real server does: a token is authenticated only for the audiences it was made for, and the
//! answer echoes those), and Secrets read by name and created (`GET
//! /api/v1/namespaces/<ns>/secrets/<name>`: 404 when absent; `POST
//! /api/v1/namespaces/<ns>/secrets`: 409 AlreadyExists when present).
//!
//! Objects are stored as given (the JSON `kubectl get -o json` prints), with
//! `metadata.resourceVersion` set from one counter for the whole server, as etcd does.
//! Deleting an object also deletes, as the controller manager's garbage collector does (in
//! the background, here at once), every object whose `metadata.ownerReferences` names its
//! uid.
//! Threads, no async runtime: one thread per connection, one request per connection.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Duration,
};

use serde_json::{Value, json};

/// A resource the double serves: its collection path and its kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Resource {
    /// `/api/v1/pods`, `/apis/security.istio.io/v1/authorizationpolicies`.
    path: String,
    api_version: String,
    kind: String,
}

/// The kinds the double knows (and their collection paths).
const KNOWN: &[(&str, &str, &str)] = &[
    ("v1", "Namespace", "namespaces"),
    ("v1", "Node", "nodes"),
    ("v1", "Pod", "pods"),
    ("v1", "Service", "services"),
    ("v1", "Secret", "secrets"),
    ("v1", "ServiceAccount", "serviceaccounts"),
    ("security.istio.io/v1", "AuthorizationPolicy", "authorizationpolicies"),
    ("security.istio.io/v1", "PeerAuthentication", "peerauthentications"),
    ("networking.istio.io/v1", "DestinationRule", "destinationrules"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
    ("nodemesh.io/v1alpha1", "TrafficPolicy", "trafficpolicies"),
];

fn resource_of(api_version: &str, kind: &str) -> Resource {
    let (_, _, plural) = KNOWN
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .unwrap_or_else(|| panic!("the API-server double does not know {api_version} {kind}"));
    let path = if api_version == "v1" {
        format!("/api/v1/{plural}")
    } else {
        format!("/apis/{api_version}/{plural}")
    };
    Resource { path, api_version: api_version.into(), kind: kind.into() }
}

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    path: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Collection path → `namespace/name` → object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Collection paths answered with 404 (a CRD not installed).
    absent: BTreeSet<String>,
    events: Vec<Event>,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch: with an `ERROR` 410 event (`gone`) or abruptly.
    epoch: u64,
    gone_epoch: u64,
    /// Every request line (method, path and query), in order.
    requests: Vec<String>,
    /// Watches currently open.
    watching: usize,
    /// The tokens a TokenReview authenticates.
    tokens: BTreeMap<String, KnownToken>,
    /// TokenReviews answered 500 (the API server failing).
    failing_reviews: bool,
    /// Secret creates wait until this many have arrived (to make replicas race).
    secret_create_barrier: usize,
    secret_creates_arrived: usize,
}

/// A service-account token the double authenticates.
#[derive(Clone, Debug)]
pub struct KnownToken {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    /// The audiences it was made for.
    pub audiences: Vec<String>,
    /// The node of the pod it is bound to (`authentication.kubernetes.io/node-name`).
    pub node: Option<String>,
}

/// The audience a token review without audiences is checked against (the API server's own).
const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl State {
    /// Removes and returns every object owned by `uid` (collection path, object).
    fn take_dependents(&mut self, uid: &str) -> Vec<(String, Value)> {
        let owned_by = |object: &Value| {
            object["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|owners| owners.iter().any(|o| o["uid"].as_str() == Some(uid)))
        };
        let mut taken = Vec::new();
        for (path, collection) in &mut self.objects {
            let keys: Vec<String> =
                collection.iter().filter(|(_, o)| owned_by(o)).map(|(k, _)| k.clone()).collect();
            taken.extend(keys.iter().filter_map(|k| collection.remove(k)).map(|o| (path.clone(), o)));
        }
        taken
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running double; it stops accepting when dropped (open streams end on their own).
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ApiServer {
    /// Listens on 127.0.0.1 (a free port).
    pub fn start() -> std::io::Result<Self> {
        Self::serve(TcpListener::bind("127.0.0.1:0")?)
    }

    /// Listens on 127.0.0.1 of the network namespace at `netns` (a control plane's, which
    /// then reaches it as a local API server); the test's threads stay where they are.
    pub fn start_in(netns: &Path) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        let target = std::fs::File::open(netns)?;
        // SAFETY: setns on descriptors this function owns; this thread goes back home below.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let bound = TcpListener::bind("127.0.0.1:0");
        // SAFETY: as above.
        if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("cannot return to the test's network namespace: {}", std::io::Error::last_os_error());
        }
        Self::serve(bound?)
    }

    fn serve(listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { rv: 100, ..State::default() }),
            wake: Condvar::new(),
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (accept_shared, accept_stop) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::Builder::new().name("apiserver".into()).spawn(move || {
            for stream in listener.incoming() {
                if accept_stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accept_shared);
                let stop = Arc::clone(&accept_stop);
                let _ = std::thread::Builder::new().name("apiserver-conn".into()).spawn(move || {
                    let _ = handle(&shared, &stop, stream);
                });
            }
        })?;
        Ok(Self { addr, shared, stop })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at the double (plain HTTP, no credentials), written to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n\
             contexts:\n- name: double\n  context:\n    cluster: double\n    user: nobody\n\
             current-context: double\nusers:\n- name: nobody\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    /// Answers 404 for this kind (its CRD is not installed), until [`ApiServer::install`].
    pub fn uninstall(&self, api_version: &str, kind: &str) {
        self.shared.lock().absent.insert(resource_of(api_version, kind).path);
    }

    pub fn install(&self, api_version: &str, kind: &str) {
        self.shared.lock().absent.remove(&resource_of(api_version, kind).path);
    }

    /// Creates or replaces an object (ADDED or MODIFIED), as `kubectl apply` would.
    pub fn apply(&self, object: Value) -> u64 {
        self.put(object, true)
    }

    /// The same, but the change reaches no watch: only a (re-)list sees it (as after a
    /// compaction the client missed).
    pub fn apply_unseen(&self, object: Value) -> u64 {
        self.put(object, false)
    }

    fn put(&self, mut object: Value, announce: bool) -> u64 {
        let resource = resource_of(
            object["apiVersion"].as_str().expect("apiVersion"),
            object["kind"].as_str().expect("kind"),
        );
        let key = object_key(&object);
        let mut state = self.shared.lock();
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let collection = state.objects.entry(resource.path.clone()).or_default();
        let kind = if collection.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        if announce {
            state.events.push(Event { rv, path: resource.path, kind, object });
        }
        drop(state);
        self.shared.wake.notify_all();
        rv
    }

    /// Deletes an object (DELETED, carrying its last state).
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        self.remove(api_version, kind, namespace, name, true)
    }

    /// The same, but no watch sees it: only a (re-)list does.
    pub fn delete_unseen(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        self.remove(api_version, kind, namespace, name, false)
    }

    fn remove(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        announce: bool,
    ) -> bool {
        let resource = resource_of(api_version, kind);
        let key = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_owned(),
        };
        let mut state = self.shared.lock();
        let Some(object) = state.objects.get_mut(&resource.path).and_then(|c| c.remove(&key)) else {
            return false;
        };
        let mut gone = vec![(resource.path, object)];
        while let Some((path, mut object)) = gone.pop() {
            state.rv += 1;
            let rv = state.rv;
            object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
            if let Some(uid) = object["metadata"]["uid"].as_str() {
                gone.extend(state.take_dependents(uid));
            }
            if announce {
                state.events.push(Event { rv, path, kind: "DELETED", object });
            }
        }
        drop(state);
        self.shared.wake.notify_all();
        true
    }

    /// Compacts history up to now: every open watch gets `ERROR` 410 Gone and ends, and a
    /// watch from any version seen so far is answered 410, so clients must re-list.
    pub fn expire(&self) {
        let mut state = self.shared.lock();
        // As etcd's compaction: history before the current revision is gone, so a watch from
        // any version seen so far is answered 410, while a list returns a version a watch
        // can start from (were the list's version compacted too, clients would re-list for
        // ever, until some write moved the version on).
        state.rv += 1;
        state.compacted = state.rv;
        state.events.clear();
        state.epoch += 1;
        state.gone_epoch = state.epoch;
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Cuts every open watch connection mid-stream (no final chunk).
    pub fn drop_connections(&self) {
        let mut state = self.shared.lock();
        state.epoch += 1;
        drop(state);
        self.shared.wake.notify_all();
    }

    /// The request lines served so far (`GET /api/v1/pods?watch=true&...`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Watches currently open.
    pub fn watching(&self) -> usize {
        self.shared.lock().watching
    }

    /// A token TokenReviews authenticate from now on.
    pub fn add_token(&self, token: &str, known: KnownToken) {
        self.shared.lock().tokens.insert(token.to_owned(), known);
    }

    /// TokenReviews fail with 500 (true) or are answered again (false).
    pub fn fail_token_reviews(&self, failing: bool) {
        self.shared.lock().failing_reviews = failing;
    }

    /// Secret creates are held until `count` of them have arrived (or ten seconds pass), so
    /// replicas that all found the Secret absent race to create it.
    pub fn hold_secret_creates(&self, count: usize) {
        let mut state = self.shared.lock();
        state.secret_create_barrier = count;
        state.secret_creates_arrived = 0;
    }

    /// An object as stored, if present.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let resource = resource_of(api_version, kind);
        let key = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_owned(),
        };
        self.shared.lock().objects.get(&resource.path).and_then(|c| c.get(&key)).cloned()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.drop_connections();
        // Wakes the accept loop so it sees the stop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

mod ca_requests;
mod wire;

use wire::{handle, status};

fn object_key(object: &Value) -> String {
    let meta = &object["metadata"];
    let name = meta["name"].as_str().expect("metadata.name");
    match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}
