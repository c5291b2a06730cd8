//! The maps the proxy reads and writes per connection: the original destinations connect4
//! recorded, and the splice's sockets, state and control.

use std::{io, net::SocketAddr, os::fd::BorrowedFd};

use nodemesh_common::{OrigDstKey, SockAddr, SpliceCtl, SpliceState, addr};

use super::bpf_sys::MapFd;

/// What connect4 recorded when it sent an app's connection to the agent (`nm_orig_dst`).
#[derive(Debug)]
pub struct OriginalDestinations {
    pub(super) map: MapFd,
}

impl OriginalDestinations {
    /// Where the app in the namespace `netns_cookie`, connecting from `client`, asked to go.
    /// The entry is consumed: one connection, one look-up.
    pub fn take(&self, netns_cookie: u64, client: SocketAddr) -> io::Result<Option<SocketAddr>> {
        let key =
            OrigDstKey { netns_cookie, addr: addr::from_ip(client.ip()), port: client.port(), _pad: [0; 6] };
        Ok(self.map.take::<_, SockAddr>(&key)?.map(|a| SocketAddr::new(addr::to_ip(&a.addr), a.port)))
    }
}

/// The keys of a spliced connection's records in the splice maps: the cookie of the socket
/// each direction's bytes arrive on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpliceKeys {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// The splice verdict's maps, keyed by the cookie of the socket bytes arrive on.
#[derive(Debug)]
pub struct SpliceMaps {
    pub(super) socks: MapFd,
    pub(super) state: MapFd,
    pub(super) ctl: MapFd,
}

impl SpliceMaps {
    /// Starts a direction's record: which socket its bytes go to.
    pub fn begin(&self, key: u64, state: &SpliceState, ctl: &SpliceCtl) -> io::Result<()> {
        self.state.update(&key, state)?;
        self.ctl.update(&key, ctl)
    }

    /// Hands a socket to the verdict: from now on its bytes are redirected.
    pub fn insert(&self, key: u64, socket: BorrowedFd<'_>) -> io::Result<()> {
        self.socks.insert_socket(&key, socket)
    }

    /// Publishes the proxy's side of a direction (bytes it forwarded, the in-flight cap).
    pub fn control(&self, key: u64, ctl: &SpliceCtl) -> io::Result<()> {
        self.ctl.update(&key, ctl)
    }

    /// What the verdict recorded for a direction.
    pub fn state(&self, key: u64) -> io::Result<Option<SpliceState>> {
        self.state.lookup(&key)
    }

    /// Removes everything kept for one socket.
    pub fn remove(&self, key: u64) {
        let _ = self.socks.delete(&key);
        let _ = self.state.delete(&key);
        let _ = self.ctl.delete(&key);
    }
}
