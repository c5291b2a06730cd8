//! Where inbound connections and intercepted outbound connections go: the sk_lookup
//! program's listener table (`nm_listeners`, keyed by pod address) and the agent's marks on
//! its own outbound listeners (`nm_listen_mark`, which connect4 checks before rewriting).
//!
//! The reconciler steers and unsteers addresses; the proxy marks the listeners it opens.
//! Neither touches the maps themselves.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use nodemesh_common::{ListenerKey, addr};

use super::bpf_sys::MapFd;

/// The sk_lookup program's table of inbound listeners, by pod address.
#[derive(Debug)]
pub struct Steering {
    pub(super) listeners: MapFd,
}

impl Steering {
    /// New connections to `ip` from the network go to `listener`: the plaintext inbound
    /// listener, or with `hbone` the HBONE listener (connections to the HBONE port).
    pub fn steer(&self, ip: IpAddr, hbone: bool, listener: BorrowedFd<'_>) -> io::Result<()> {
        self.listeners.insert_socket(&key(ip, hbone), listener)
    }

    /// Connections to these addresses go to whatever listens on them in the pod again.
    pub fn unsteer(&self, ips: &[IpAddr]) {
        for ip in ips {
            for hbone in [false, true] {
                if let Err(e) = self.listeners.delete(&key(*ip, hbone)) {
                    tracing::warn!(%ip, hbone, error = %e, "removing an inbound listener entry");
                }
            }
        }
    }
}

fn key(ip: IpAddr, hbone: bool) -> ListenerKey {
    ListenerKey {
        addr: addr::from_ip(ip),
        kind: if hbone { ListenerKey::HBONE } else { ListenerKey::PLAINTEXT },
    }
}

/// The agent's marks on its outbound listeners: connect4 redirects only to a listener that
/// carries its pod's network namespace cookie here, so a squatter on the port gets nothing.
#[derive(Debug)]
pub struct ListenerMarks {
    pub(super) marks: MapFd,
}

impl ListenerMarks {
    /// Marks `listener` as the agent's outbound listener for the namespace `netns_cookie`.
    pub fn mark(&self, listener: BorrowedFd<'_>, netns_cookie: u64) -> io::Result<()> {
        // Socket storage is keyed by the socket's fd in the caller's table.
        self.marks.update(&listener.as_raw_fd(), &netns_cookie)
    }
}
