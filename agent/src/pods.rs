//! Where an enrolled pod lives on this node: its cgroup (found from its UID) and its network
//! namespace (found from a process in that cgroup).

pub mod addresses;
pub mod cgroup;
pub mod netns;
pub mod reserved_ports;
mod rtnetlink;
pub mod transparent;
pub mod veth;

use std::path::{Path, PathBuf};

pub use netns::Netns;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("no cgroup for pod uid {uid} under {root} (looked for the kubelet cgroupfs and systemd layouts)")]
    NoCgroup { uid: String, root: PathBuf },
    #[error("the pod's cgroup {0} has no process yet")]
    NoProcess(PathBuf),
    #[error("the pod shares the node's network namespace (hostNetwork); it cannot be enrolled")]
    HostNetwork,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A pod's place on the node.
#[derive(Debug)]
pub struct PodPlace {
    pub cgroup: PathBuf,
    pub netns: Netns,
}

/// Finds the pod with `uid` under the cgroup root.
pub fn locate(cgroup_root: &Path, uid: &str) -> Result<PodPlace, PodError> {
    let cgroup = cgroup::find_pod_cgroup(cgroup_root, uid)
        .ok_or_else(|| PodError::NoCgroup { uid: uid.to_owned(), root: cgroup_root.to_owned() })?;
    let pids = cgroup::processes(&cgroup)
        .map_err(|source| PodError::Io { what: format!("reading {}", cgroup.display()), source })?;
    // Processes can exit between listing and opening; any one of the pod's will do.
    let mut refused = None;
    let mut found = None;
    for &pid in &pids {
        match Netns::of_process(pid) {
            Ok(netns) => {
                found = Some(netns);
                break;
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => refused = Some((pid, e)),
            Err(_) => {}
        }
    }
    let netns = match (found, refused) {
        (Some(netns), _) => netns,
        // Not a race: the agent may not look into this process (another user's process
        // needs CAP_SYS_PTRACE), and saying "no process" would send the reader elsewhere.
        (None, Some((pid, source))) => {
            return Err(PodError::Io {
                what: format!(
                    "opening the network namespace of process {pid} in {} (another user's process needs CAP_SYS_PTRACE)",
                    cgroup.display()
                ),
                source,
            });
        }
        (None, None) => return Err(PodError::NoProcess(cgroup.clone())),
    };
    if netns.inode() == netns::home().inode() {
        return Err(PodError::HostNetwork);
    }
    Ok(PodPlace { cgroup, netns })
}
