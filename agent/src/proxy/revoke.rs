//! Live connections checked again when policies change: a connection the proxy authorized
//! (as the destination's side) is closed, with a reset, once the policies in force would
//! deny it, as ztunnel does. Each such connection registers what its check was made of; a
//! new directory (new policies, or new names for the destination) re-runs every check.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use tokio::sync::watch;

use crate::{authz::Caller, directory::Directory, workload::WorkloadRef};

/// What an authorization was decided on.
#[derive(Clone, Debug)]
pub struct Subject {
    /// The destination workload as named when the connection was accepted (used if the new
    /// directory no longer knows the address).
    pub target: Arc<WorkloadRef>,
    pub to: SocketAddr,
    pub caller_ip: IpAddr,
    pub caller_identity: Option<Arc<str>>,
}

struct Live {
    subject: Subject,
    revoked: watch::Sender<Option<String>>,
}

#[derive(Default)]
pub struct Revocations {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
    /// Connections closed because a policy change denied them.
    pub revoked: AtomicU64,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("revoked", &self.revoked).finish_non_exhaustive()
    }
}

/// A registered connection; unregistered when dropped.
pub struct Registration<'a> {
    revocations: &'a Revocations,
    id: u64,
    revoked: watch::Receiver<Option<String>>,
}

impl Registration<'_> {
    /// Resolves with the reason once the connection is denied by a policy change.
    pub async fn revoked(&mut self) -> String {
        let reason = match self.revoked.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            // The registry never drops a sender while its registration lives.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.revocations.lock().remove(&self.id);
    }
}

impl Revocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, subject: Subject) -> Registration<'_> {
        let id = self.next.fetch_add(1, Relaxed);
        let (tx, rx) = watch::channel(None);
        self.lock().insert(id, Live { subject, revoked: tx });
        Registration { revocations: self, id, revoked: rx }
    }

    /// Checks every registered connection against `directory`; returns how many it revoked.
    pub fn recheck(&self, directory: &Directory) -> usize {
        let live = self.lock();
        let mut revoked = 0;
        for entry in live.values() {
            if entry.revoked.borrow().is_some() {
                continue;
            }
            let s = &entry.subject;
            let target = directory.workload(&s.to.ip()).unwrap_or_else(|| Arc::clone(&s.target));
            let caller = Caller { ip: s.caller_ip, identity: s.caller_identity.as_deref() };
            if let Err(reason) = directory.policies.check(&target, s.to, &caller) {
                entry.revoked.send_replace(Some(reason));
                revoked += 1;
            }
        }
        self.revoked.fetch_add(revoked as u64, Relaxed);
        revoked
    }

    pub fn live(&self) -> usize {
        self.lock().len()
    }
}
