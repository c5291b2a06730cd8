//! The node's workload certificates: one per identity of the node's enrolled pods, shared by
//! every pod of that identity, fetched when the identity first appears and refreshed at about
//! half its life, with backoff while the CA is away.
//!
//! With the CA away, a certificate keeps serving until it expires. An expired certificate is
//! never presented: new HBONE connections from or to its pods fail with
//! `certificate_expired` (counted in `nodemesh_certificate_refusals_total`) until the CA is
//! back; established connections carry on, as TLS checks certificates only at the handshake.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::AbortHandle};

use super::{
    ca_client::CaClient,
    certificate::{Request, WorkloadCertificate},
    roots::MeshRoots,
};
use crate::{backoff::Backoff, report::status::CertificateReport};

/// ztunnel's retry bounds for certificate requests.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(150);

/// One identity's certificate, as the TLS handshakes read it.
pub struct Slot {
    pub identity: Arc<str>,
    current: watch::Sender<Option<Arc<WorkloadCertificate>>>,
    status: Mutex<SlotStatus>,
    task: Mutex<Option<AbortHandle>>,
}

#[derive(Debug, Default)]
struct SlotStatus {
    issued: u64,
    failures: u64,
    last_error: Option<String>,
    next_refresh: Option<SystemTime>,
}

/// Why no certificate can be used for an identity now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The node does not hold this identity (no enrolled pod has it).
    NotHeld,
    /// Not issued yet (the CA has not answered within the wait).
    Pending,
    /// Issued, expired, and not refreshed since.
    Expired,
}

impl Unavailable {
    /// The flow's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Unavailable::NotHeld => "no_identity",
            Unavailable::Pending => "certificate_pending",
            Unavailable::Expired => "certificate_expired",
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl Slot {
    /// The current certificate, unless it has expired.
    pub fn usable(&self) -> Option<Arc<WorkloadCertificate>> {
        self.current.borrow().clone().filter(|c| !c.expired(SystemTime::now()))
    }

    /// The current certificate, waiting up to `wait` for the first one.
    pub async fn get(&self, wait: Duration) -> Result<Arc<WorkloadCertificate>, Unavailable> {
        let mut rx = self.current.subscribe();
        let first = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        let cert = match first {
            Ok(Ok(cert)) => cert.clone(),
            _ => None,
        };
        match cert {
            None => Err(Unavailable::Pending),
            Some(cert) if cert.expired(SystemTime::now()) => Err(Unavailable::Expired),
            Some(cert) => Ok(cert),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, SlotStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, pods: usize) -> CertificateReport {
        let cert = self.current.borrow().clone();
        let status = self.status();
        let now = SystemTime::now();
        let unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let state = match &cert {
            None => "pending",
            Some(c) if c.expired(now) => "expired",
            Some(_) if status.last_error.is_some() => "refresh_failing",
            Some(_) => "valid",
        };
        CertificateReport {
            identity: self.identity.to_string(),
            state: state.into(),
            serial: cert.as_ref().map(|c| c.serial.clone()),
            not_before_unix_s: cert.as_ref().map(|c| unix(c.not_before)),
            not_after_unix_s: cert.as_ref().map(|c| unix(c.not_after)),
            next_refresh_unix_s: status.next_refresh.map(unix),
            issued: status.issued,
            failures: status.failures,
            last_error: status.last_error.clone(),
            pods,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Node-wide counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct CertificateCounters {
    pub issued: AtomicU64,
    /// Failed requests, by `CaClientError::kind` or `invalid` (a chain that did not check).
    pub failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections refused because an identity had no usable certificate, by reason.
    pub refusals: Mutex<BTreeMap<&'static str, u64>>,
}

impl CertificateCounters {
    pub fn refused(&self, why: Unavailable) {
        *self.refusals.lock().unwrap_or_else(|p| p.into_inner()).entry(why.reason()).or_default() += 1;
    }

    fn failed(&self, kind: &'static str) {
        *self.failures.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default() += 1;
    }
}

/// Identity → (slot, how many enrolled pods have it).
type Slots = BTreeMap<Arc<str>, (Arc<Slot>, usize)>;

pub struct IdentityManager {
    client: CaClient,
    pub roots: Arc<MeshRoots>,
    slots: Mutex<Slots>,
    pub counters: Arc<CertificateCounters>,
}

impl IdentityManager {
    pub fn new(client: CaClient, roots: Arc<MeshRoots>) -> Arc<Self> {
        Arc::new(Self { client, roots, slots: Mutex::default(), counters: Arc::default() })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The identities the node's enrolled pods have, with how many pods each: new ones start
    /// fetching (on the calling runtime), gone ones stop refreshing and are forgotten.
    pub fn sync(self: &Arc<Self>, wanted: &BTreeMap<String, usize>) {
        let mut slots = self.slots();
        slots.retain(|id, _| wanted.contains_key(&**id));
        for (id, pods) in wanted {
            if let Some((_, count)) = slots.get_mut(id.as_str()) {
                *count = *pods;
                continue;
            }
            let identity: Arc<str> = id.as_str().into();
            let slot = Arc::new(Slot {
                identity: Arc::clone(&identity),
                current: watch::channel(None).0,
                status: Mutex::default(),
                task: Mutex::new(None),
            });
            let task = tokio::spawn(refresh(Arc::clone(self), Arc::downgrade(&slot)));
            *slot.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
            tracing::info!(%identity, "fetching a workload certificate");
            slots.insert(identity, (slot, *pods));
        }
    }

    pub fn slot(&self, identity: &str) -> Option<Arc<Slot>> {
        self.slots().get(identity).map(|(slot, _)| Arc::clone(slot))
    }

    /// Each held identity's certificate (never a key).
    pub fn report(&self) -> Vec<CertificateReport> {
        self.slots().values().map(|(slot, pods)| slot.report(*pods)).collect()
    }

    /// The identities held (for tests and the status).
    pub fn identities(&self) -> BTreeSet<String> {
        self.slots().keys().map(|id| id.to_string()).collect()
    }

    async fn fetch(&self, identity: &str) -> Result<WorkloadCertificate, String> {
        let request = Request::new(identity).map_err(|e| e.to_string())?;
        let chain = self.client.create(identity, request.csr_pem.clone()).await.map_err(|e| {
            self.counters.failed(e.kind());
            e.to_string()
        })?;
        WorkloadCertificate::from_chain(identity, request, &chain, &self.roots).map_err(|e| {
            self.counters.failed("invalid");
            e.to_string()
        })
    }
}

/// One identity's life: fetch, wait until about half its life, fetch again; on failure keep
/// the old one and retry with backoff. Ends when the slot is dropped.
async fn refresh(manager: Arc<IdentityManager>, slot: std::sync::Weak<Slot>) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        let Some(identity) = slot.upgrade().map(|s| Arc::clone(&s.identity)) else { return };
        let result = manager.fetch(&identity).await;
        let Some(held) = slot.upgrade() else { return };
        let wait = match result {
            Ok(cert) => {
                backoff.reset();
                manager.counters.issued.fetch_add(1, Relaxed);
                let now = SystemTime::now();
                let next = cert.refresh_at(now, backoff.jitter());
                tracing::info!(%identity, serial = %cert.serial, valid_for = ?cert.not_after.duration_since(now).unwrap_or_default(),
                    "workload certificate issued");
                held.current.send_replace(Some(Arc::new(cert)));
                let mut status = held.status();
                status.issued += 1;
                status.last_error = None;
                status.next_refresh = Some(next);
                next.duration_since(now).unwrap_or_default()
            }
            Err(error) => {
                let wait = backoff.next();
                tracing::warn!(%identity, %error, retry_in = ?wait, "no workload certificate; keeping the current one, if any");
                let mut status = held.status();
                status.failures += 1;
                status.last_error = Some(error);
                status.next_refresh = Some(SystemTime::now() + wait);
                wait
            }
        };
        drop(held);
        tokio::time::sleep(wait).await;
    }
}
