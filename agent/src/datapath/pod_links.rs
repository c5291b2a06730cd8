//! Per-pod links: attach all hooks, pin them, replace what an earlier agent left, detach.
//!
//! Replacement attaches the new link before removing the old one, so a restart never opens a
//! window without interception; for that moment both programs run, which is harmless because
//! each hook is idempotent (a connect already rewritten to loopback is skipped).

use std::{fs, io, os::fd::BorrowedFd, path::Path};

pub use crate::report::status::LinkStatus;
use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, SkLookup, SockOps, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};

use super::{
    DatapathError, PinDir,
    hooks::{Hook, Target},
};

/// The links of one enrolled pod; dropping this keeps them attached (they are pinned), only
/// [`PodLinks::detach`] removes them.
#[derive(Debug)]
pub struct PodLinks {
    uid: String,
    links: Vec<(LinkStatus, PinnedLink)>,
}

impl PodLinks {
    pub fn status(&self) -> Vec<LinkStatus> {
        self.links.iter().map(|(s, _)| s.clone()).collect()
    }

    /// Unpins and drops every link, which detaches it, then removes the pod's pin directory.
    pub fn detach(self, pins: &PinDir) {
        for (status, link) in self.links {
            match link.unpin() {
                Ok(fd_link) => drop(fd_link),
                Err(e) => {
                    tracing::warn!(uid = %self.uid, hook = ?status.hook, error = %e, "unpinning a link")
                }
            }
        }
        remove_dir(&pins.pod(&self.uid));
    }
}

pub(super) fn attach(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    uid: &str,
    cgroup: BorrowedFd<'_>,
    netns: BorrowedFd<'_>,
    host_veth: Option<&str>,
) -> Result<PodLinks, DatapathError> {
    // Attach everything first: if one hook fails, the new links drop (detach) and whatever
    // was pinned before stays as it was.
    let mut fresh = Vec::with_capacity(Hook::ALL.len());
    for hook in Hook::ALL {
        let target = match hook.target() {
            Target::Cgroup => AttachTo::Fd(cgroup),
            Target::Netns => AttachTo::Fd(netns),
            // No veth (a pod wired some other way): no per-flow packet counts for it, the
            // rest works as ever.
            Target::HostVeth => match host_veth {
                Some(name) => AttachTo::Interface(name),
                None => continue,
            },
        };
        let link = attach_one(ebpf, hook, target).map_err(|source| DatapathError::Attach {
            uid: uid.to_owned(),
            hook,
            source,
        })?;
        fresh.push((hook, link));
    }

    let dir = pins.pod(uid);
    fs::create_dir_all(&dir).map_err(|e| DatapathError::io("creating a pod pin directory", e))?;
    let mut links = Vec::with_capacity(fresh.len());
    for (hook, link) in fresh {
        let info = link.info().map_err(|e| attach_error(uid, hook, e))?;
        let path = pins.link(uid, hook.pin_name());
        replace_pinned(&path);
        let pinned = link.pin(&path).map_err(|e| attach_error(uid, hook, e))?;
        let status = LinkStatus { hook, link_id: info.id(), program_id: info.program_id() };
        links.push((status, pinned));
    }
    Ok(PodLinks { uid: uid.to_owned(), links })
}

fn attach_error(uid: &str, hook: Hook, e: impl std::error::Error + Send + Sync + 'static) -> DatapathError {
    DatapathError::Attach { uid: uid.to_owned(), hook, source: Box::new(e) }
}

/// What one hook attaches to.
#[derive(Clone, Copy)]
enum AttachTo<'a> {
    Fd(BorrowedFd<'a>),
    /// An interface in the agent's (node's) namespace.
    Interface(&'a str),
}

/// Why one hook did not attach: aya's error, with its errno as the source.
type AttachFailure = Box<dyn std::error::Error + Send + Sync>;

fn attach_one(ebpf: &mut Ebpf, hook: Hook, target: AttachTo<'_>) -> Result<FdLink, AttachFailure> {
    let program = ebpf
        .program_mut(hook.program())
        .ok_or_else(|| format!("the eBPF object has no program {}", hook.program()))?;
    let err = AttachFailure::from;
    let target = match (target, hook.target()) {
        (AttachTo::Interface(name), Target::HostVeth) => {
            let p: &mut SchedClassifier = program.try_into().map_err(err)?;
            let direction =
                if hook == Hook::TcFromPod { TcAttachType::Ingress } else { TcAttachType::Egress };
            // tcx (a link, pinnable like the others), appended after programs already there
            // (a CNI's own): ours only count and always pass the packet on.
            let id = p
                .attach_with_options(name, direction, TcAttachOptions::TcxOrder(LinkOrder::last()))
                .map_err(err)?;
            return p.take_link(id).map_err(err)?.try_into().map_err(AttachFailure::from);
        }
        (AttachTo::Fd(fd), _) => fd,
        (AttachTo::Interface(_), _) => return Err(format!("{hook:?} does not attach to an interface").into()),
    };
    match hook {
        Hook::Connect4 | Hook::Connect6 | Hook::GetPeerName4 | Hook::GetPeerName6 => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            // Flags 0: link-based cgroup attachments always coexist with others (a CNI's
            // socket LB, say, or our own previous link while it is replaced); the kernel
            // rejects BPF_F_ALLOW_MULTI on bpf_link_create.
            let id = p.attach(target, CgroupAttachMode::Single).map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(AttachFailure::from)
        }
        Hook::SockOps => {
            let p: &mut SockOps = program.try_into().map_err(err)?;
            let id = p.attach(target, CgroupAttachMode::Single).map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(AttachFailure::from)
        }
        Hook::SkLookup => {
            let p: &mut SkLookup = program.try_into().map_err(err)?;
            let id = p.attach(target).map_err(err)?;
            Ok(p.take_link(id).map_err(err)?.into())
        }
        Hook::TcFromPod | Hook::TcToPod => Err(format!("{hook:?} attaches to an interface").into()),
    }
}

/// Removes a link pinned at `path` by an earlier agent, if any (detaching it once the new
/// one is in place).
fn replace_pinned(path: &Path) {
    if !path.exists() {
        return;
    }
    match PinnedLink::from_pin(path) {
        Ok(old) => {
            if let Err(e) = old.unpin() {
                tracing::warn!(path = %path.display(), error = %e, "unpinning a replaced link");
            }
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "not a link; removing the pin");
            let _ = fs::remove_file(path);
        }
    }
}

/// Removes all links pinned for `uid` (a pod no longer enrolled, found after a restart).
pub(super) fn remove_pinned(pins: &PinDir, uid: &str) {
    let dir = pins.pod(uid);
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            replace_pinned(&entry.path());
        }
    }
    remove_dir(&dir);
}

fn remove_dir(dir: &Path) {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(path = %dir.display(), error = %e, "removing a pod pin directory");
        }
        _ => {}
    }
}
